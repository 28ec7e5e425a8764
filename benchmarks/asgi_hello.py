"""The uvicorn peer of ``bench_http.py``: a minimal raw ASGI app (no framework).

``GET /hello`` (any path, in fact) answers ``200``, ``content-type: application/json``,
body ``{"hello":"world"}``: the same bytes as the supervisor's ``GET /hello``.
Run by the benchmark as ``uvicorn asgi_hello:app --app-dir benchmarks ...``.
"""

BODY = b'{"hello":"world"}'
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
}
END = {"type": "http.response.body", "body": BODY}


async def app(scope, receive, send):
    if scope["type"] != "http":  # lifespan: nothing to set up
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        return
    await send(START)
    await send(END)
