"""Benchmark subscriber: counts the messages of topic ``bench`` (async handler: no thread hop)."""

import trio

from iii_supervisor import register_worker

iii = register_worker()
state = {"count": 0, "target": None}
done = trio.Event()


async def handle(_data):
    state["count"] += 1
    if state["target"] is not None and state["count"] >= state["target"]:
        done.set()
    return None


async def wait(data):
    """Resolve once ``data["n"]`` messages were handled since the last reset."""
    global done
    state["target"] = data["n"]
    if state["count"] < data["n"]:
        await done.wait()
    return {"count": state["count"]}


async def reset(_data):
    global done
    state["count"], state["target"] = 0, None
    done = trio.Event()
    return None


fn = iii.register_function({"id": "bench.handle"}, handle)
iii.register_function({"id": "bench.wait"}, wait)
iii.register_function({"id": "bench.reset"}, reset)
iii.register_trigger({"type": "queue", "function_id": fn.id,
                      "config": {"topic": "bench", "queue_config": {"concurrency": 64}}})
