"""Example worker: cron triggers (the iii documentation's "Cron Trigger" and "Scheduled Cleanup").

`iii-supervisor cron ls` shows these jobs with their next and last runs.
"""

from iii_supervisor import logger, register_worker

iii = register_worker()


def daily_report(data):
    # data = {"trigger": "cron", "job_id": ..., "scheduled_time": "...Z", "actual_time": "...Z"}
    logger.info(f"daily report for {data['scheduled_time']}")


def delete_old_records():
    return 0


def cleanup():  # a handler without a parameter is called without the payload
    deleted = delete_old_records()
    logger.info(f"Deleted {deleted} old records")


def heartbeat(data):
    logger.info(f"heartbeat {data['scheduled_time']} (ran at {data['actual_time']})")


def backup(data):
    # persistent: a 01:30 (Berlin time) missed while the supervisor was down runs once at start
    logger.info(f"backup, catch-up: {data.get('catch_up', False)}")


fn = iii.register_function({"id": "reports.daily"}, daily_report)
iii.register_trigger({
    "type": "cron",
    "function_id": fn.id,
    "config": {"expression": "0 2 * * *"},                 # 5 fields: every day at 02:00 UTC
})

# the docs name it "maintenance.cleanup"; workers/alerts.py already owns that id
fn = iii.register_function({"id": "reports.cleanup"}, cleanup)
iii.register_trigger({
    'type': 'cron',
    'function_id': fn.id,
    'config': {
        'expression': '0 3 * * *',
    },
})

iii.register_function("reports.heartbeat", heartbeat)
iii.register_trigger({
    "type": "cron",
    "function_id": "reports.heartbeat",
    "config": {"expression": "0 * * * * *"},               # 6 fields, seconds first: every minute at :00
})

iii.register_function("reports.backup", backup)
iii.register_trigger({
    "type": "cron",
    "function_id": "reports.backup",
    "config": {"expression": "30 1 * * *", "timezone": "Europe/Berlin", "persistent": True,
               "timeout_ms": 600_000},
})
