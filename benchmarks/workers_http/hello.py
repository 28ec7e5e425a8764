"""HTTP benchmark worker: the tiny JSON endpoint, as an async and as a sync handler.

- ``bench.hello_async`` (coroutine: runs as a task on this worker's trio loop) on ``GET /hello``;
- ``bench.hello_sync`` (plain function: the SDK runs it in a thread) on ``GET /hello-sync``;
- ``bench.hello_async`` again on ``GET /hello-mw``, behind one middleware (``bench.continue``,
  async, answers ``{"action": "continue"}``): the cost of a middleware call.

Both return ``{"status_code": 200, "body": {"hello": "world"}}``, which the supervisor's HTTP
front renders as ``200``, ``content-type: application/json``, body ``{"hello":"world"}``: the
same response as the uvicorn peer app (``benchmarks/asgi_hello.py``).
"""

from iii_supervisor import register_worker

iii = register_worker()

RESPONSE = {"status_code": 200, "body": {"hello": "world"}}
CONTINUE = {"action": "continue"}


async def hello_async(req):
    return RESPONSE


def hello_sync(req):
    return RESPONSE


async def let_through(req):
    return CONTINUE


iii.register_function({"id": "bench.hello_async", "description": "benchmark: GET /hello (async)"}, hello_async)
iii.register_function({"id": "bench.hello_sync", "description": "benchmark: GET /hello-sync (sync)"}, hello_sync)
iii.register_trigger({"type": "http", "function_id": "bench.hello_async",
                      "config": {"api_path": "/hello", "http_method": "GET"}})
iii.register_trigger({"type": "http", "function_id": "bench.hello_sync",
                      "config": {"api_path": "/hello-sync", "http_method": "GET"}})
iii.register_function({"id": "bench.continue", "description": "benchmark: a middleware that lets requests through"},
                      let_through)
iii.register_trigger({"type": "http", "function_id": "bench.hello_async",
                      "config": {"api_path": "/hello-mw", "http_method": "GET",
                                 "middleware_function_ids": ["bench.continue"]}})
