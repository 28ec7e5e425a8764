"""An official-SDK worker the supervisor did not spawn (an *attached* worker): started by the test
with the door's address on the command line."""

import asyncio
import sys
import time

from iii import InitOptions, register_worker

iii = register_worker(sys.argv[1], InitOptions(worker_name=sys.argv[2], otel={"enabled": False}))


def size(data):
    return {"size": len(data["blob"])}


def slow(data):
    time.sleep(60)


def break_connection(data):
    # a garbage frame on the worker's own socket: the door closes it (1002) and the SDK reconnects
    asyncio.run_coroutine_threadsafe(iii._ws.send("{not json"), iii._loop)


iii.register_function("x::size", size)
iii.register_function("x::slow", slow)
iii.register_function("x::break", break_connection)
print("x ready", flush=True)
