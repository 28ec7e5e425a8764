"""Example worker: a `log` trigger (warn and above), and the SDK logger.

Try it: `iii-supervisor invoke engine::log::error '{"message": "disk almost full"}'`, then
`iii-supervisor logs`. Anything logged at warn or error (or printed to stderr by a worker)
reaches `alerts.on_problem`; what the handler itself logs is kept (`iii-supervisor logs alerts`)
but never fed back to it.
"""

from iii_supervisor import logger, register_worker

iii = register_worker()
seen = 0


def on_problem(entry):
    global seen
    seen += 1
    # the seed's log trigger input: trace_id, message, level, function_name, date (and more)
    logger.warn(f"alert #{seen}: {entry['level']} from {entry['worker_name']}: {entry['message']}",
                {"trace_id": entry["trace_id"], "function": entry["function_name"], "date": entry["date"]})


def cleanup():
    # the seed's "Scheduled Cleanup" handler, as written: logger.info inside a handler names the function
    deleted = 0
    logger.info(f"Deleted {deleted} old records")


iii.register_function({"id": "alerts.on_problem"}, on_problem)
iii.register_function({"id": "maintenance.cleanup"}, cleanup)
iii.register_trigger({"type": "log", "function_id": "alerts.on_problem", "config": {"level": "warn"}})
