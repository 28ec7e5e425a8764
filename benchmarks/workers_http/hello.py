"""HTTP benchmark worker: the tiny JSON endpoint, as an async and as a sync handler.

- ``bench.hello_async`` (coroutine: runs as a task on this worker's trio loop) on ``GET /hello``;
- ``bench.hello_sync`` (plain function: the SDK runs it in a thread) on ``GET /hello-sync``.

Both return ``{"status_code": 200, "body": {"hello": "world"}}``, which the supervisor's HTTP
front renders as ``200``, ``content-type: application/json``, body ``{"hello":"world"}``: the
same response as the uvicorn peer app (``benchmarks/asgi_hello.py``).
"""

from iii_supervisor import register_worker

iii = register_worker()

RESPONSE = {"status_code": 200, "body": {"hello": "world"}}


async def hello_async(req):
    return RESPONSE


def hello_sync(req):
    return RESPONSE


iii.register_function({"id": "bench.hello_async", "description": "benchmark: GET /hello (async)"}, hello_async)
iii.register_function({"id": "bench.hello_sync", "description": "benchmark: GET /hello-sync (sync)"}, hello_sync)
iii.register_trigger({"type": "http", "function_id": "bench.hello_async",
                      "config": {"api_path": "/hello", "http_method": "GET"}})
iii.register_trigger({"type": "http", "function_id": "bench.hello_sync",
                      "config": {"api_path": "/hello-sync", "http_method": "GET"}})
