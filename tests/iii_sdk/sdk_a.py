"""An official-SDK (iii-sdk 0.25) worker, spawned by the supervisor in the iii door tests: it finds
the door through III_URL and proves who it is with III_TOKEN, both set by the supervisor."""

import json
import os
import threading

from iii import TriggerAction, register_worker
from iii.triggers import TriggerHandler

iii = register_worker()
OUT = os.environ["DOOR_OUT"]
_lock = threading.Lock()


def note(kind, data):
    with _lock, open(OUT, "a") as f:
        f.write(json.dumps({"kind": kind, "data": data}) + "\n")


def sink(kind):
    def handler(data):
        note(kind, data)
    return handler


iii.register_function("a::hello", lambda req: {"status_code": 201, "body": {"hi": req["path_params"]["name"]}})
iii.register_trigger({"type": "http", "function_id": "a::hello",
                      "config": {"api_path": "/sdk/hello/:name", "http_method": "GET"}})
iii.register_function("a::leaf", lambda data: {"leaf": data["n"] + 1})
iii.register_function("a::start", lambda data: iii.trigger({"function_id": "ours::mid", "payload": data}))
iii.register_function("a::big", lambda data: iii.trigger(
    {"function_id": "x::size", "payload": {"blob": "x" * data["mib"] * 1024 * 1024}, "timeout_ms": 60_000}))
for kind in ("sink", "topic", "cron", "state", "stream", "log", "custom"):
    iii.register_function(f"a::on_{kind}", sink(kind))
iii.register_trigger({"type": "durable:subscriber", "function_id": "a::on_topic", "config": {"topic": "door-topic"}})
iii.register_trigger({"type": "cron", "function_id": "a::on_cron", "config": {"expression": "* * * * * *"}})
iii.register_trigger({"type": "state", "function_id": "a::on_state", "config": {"scope": "door"}})
iii.register_trigger({"type": "stream", "function_id": "a::on_stream", "config": {"stream_name": "doorstream"}})
iii.register_trigger({"type": "log", "function_id": "a::on_log", "config": {"level": "error"}})


class Custom(TriggerHandler):
    async def register_trigger(self, config):
        note("custom-bound", config.config)
        await iii.trigger_async({"function_id": config.function_id, "payload": {"fired": config.config},
                                 "action": TriggerAction.Void()})

    async def unregister_trigger(self, config):
        note("custom-unbound", config.id)


iii.register_trigger_type({"id": "door:custom", "description": "a trigger type of an SDK worker"}, Custom())
iii.register_trigger({"type": "door:custom", "function_id": "a::on_custom", "config": {"x": 1}})


def fire(data):
    void = iii.trigger({"function_id": "a::on_sink", "payload": {"via": "void"}, "action": TriggerAction.Void()})
    receipt = iii.trigger({"function_id": "a::on_sink", "payload": {"via": "enqueue"},
                           "action": TriggerAction.Enqueue(queue="default")})
    iii.trigger({"function_id": "iii::durable::publish", "payload": {"topic": "door-topic", "data": {"via": "topic"}}})
    iii.trigger({"function_id": "state::set", "payload": {"scope": "door", "key": "k", "value": 1}})
    iii.trigger({"function_id": "stream::set",
                 "payload": {"stream_name": "doorstream", "group_id": "g", "item_id": "i", "data": 1}})
    iii.trigger({"function_id": "engine::log::error", "payload": {"message": "door-log"}})
    return {"void": void, "receipt": receipt}


iii.register_function("a::fire", fire)
