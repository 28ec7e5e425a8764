"""Example worker: pub/sub (a `subscribe` trigger and the `publish` function: fire-and-forget
fan-out, not durable — the durable kind is a `queue` trigger) behind an HTTP route guarded by a
middleware (`middleware_function_ids`).

Try it (with the supervisor from the README's first command running):

    curl -s localhost:3111/notify -H 'content-type: application/json' -d '{"text": "hi"}'
      → 401 {"error": "send x-api-key: demo"}   (the middleware answered)
    curl -s localhost:3111/notify -H 'x-api-key: demo' -H 'content-type: application/json' -d '{"text": "hi"}'
      → 202 {"published": "notes"}; both subscribers print the note
"""

from iii_supervisor import TriggerAction, register_worker

iii = register_worker()


def require_key(data):
    # A middleware gets {phase, request: {headers, path_params, query_params, method, ...}, context}.
    if data["request"]["headers"].get("x-api-key") == "demo":
        return {"action": "continue"}
    return {"action": "respond", "response": {"status_code": 401, "body": {"error": "send x-api-key: demo"}}}


def notify(req):
    # every `subscribe` binding of the topic gets its own copy; nobody waits for them
    iii.trigger({"function_id": "publish", "payload": {"topic": "notes", "data": req["body"]},
                 "action": TriggerAction.Void()})
    return {"status_code": 202, "body": {"published": "notes"}}


def to_console(note):
    print(f"console: {note}", flush=True)


def to_audit(note):
    print(f"audit: {note}", flush=True)


iii.register_function({"id": "notify.require_key"}, require_key)
iii.register_function({"id": "notify.send"}, notify)
iii.register_function({"id": "notify.to_console"}, to_console)
iii.register_function({"id": "notify.to_audit"}, to_audit)
iii.register_trigger({"type": "http", "function_id": "notify.send",
                      "config": {"api_path": "/notify", "http_method": "POST",
                                 "middleware_function_ids": ["notify.require_key"]}})
iii.register_trigger({"type": "subscribe", "function_id": "notify.to_console", "config": {"topic": "notes"}})
iii.register_trigger({"type": "subscribe", "function_id": "notify.to_audit", "config": {"topic": "notes"}})
