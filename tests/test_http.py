"""The HTTP front end to end: real HTTP over loopback, a real supervisor, real worker processes.

Normal requests go through httpx (on trio); malformed, slow, pipelined and half-closed clients
use raw trio sockets, parsed with a client-side h11 connection. Every supervisor here is started
by :func:`http_supervisor`, which writes the workers, waits until each has registered everything
(each worker ends by registering ``<name>.ready``) and gives an httpx client bound to the port.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import h11
import httpx
import orjson
import psutil
import trio

from supervisor_harness import Supervisor, write_worker

MiB = 1 << 20
MAX_BODY = 3 * MiB
REQUEST_TIMEOUT_MS = 1500

#: The main worker: one route per feature under test.
API = """
import hashlib, json, os, random, threading
import trio
from iii_supervisor import http
from iii_supervisor.types import HttpRequest, HttpResponse

FIELDS = ("method", "path", "request_path", "path_params", "query_params", "headers", "body")


def echo(req):
    return {"status_code": 200, "headers": {"x-handler": "echo", "x-method": req["method"]},
            "body": {k: req.get(k) for k in FIELDS}}


def plain_text(req):
    return {"status_code": 201, "headers": ["Content-Type: text/plain; charset=utf-8", "X-Extra: 1"],
            "body": "plain text, sent as is"}


def boom(req):
    raise ValueError("kaboom from the handler")


@http
async def boom_http(req: HttpRequest, response: HttpResponse):
    raise RuntimeError("kaboom from an @http handler")


async def slow(req):
    await trio.sleep(10)
    return {"status_code": 200, "body": "too late"}


_late = {}


@http
async def slow_stream(req: HttpRequest, response: HttpResponse):
    await trio.sleep(float(req.query_params["sleep"]))  # past request_timeout_ms: the client got 504
    try:
        await response.writer.write(b"x" * (1024 * 1024))  # more than one window
        _late["outcome"] = "written"
    except Exception as exc:
        _late["outcome"] = {"type": type(exc).__name__, "code": getattr(exc, "code", None)}


_lock = threading.Lock()
_guarded = []


def allow(req):
    return req["headers"].get("x-allow") == "yes" and req["path"] == "/guarded/:id"


def guarded(req):
    with _lock:
        _guarded.append(req["path_params"]["id"])
    return {"status_code": 200, "body": {"guarded": req["path_params"]["id"]}}


def _digest(data_len, h, chunks, req):
    return {"length": data_len, "sha256": h, "chunks": chunks, "inline_body": req.body,
            "content_length": req.headers.get("content-length"),
            "transfer_encoding": req.headers.get("transfer-encoding")}


@http
async def upload_all(req: HttpRequest, response: HttpResponse):
    data = await req.request_body.read_all()
    return {"status_code": 200, "body": _digest(len(data), hashlib.sha256(data).hexdigest(), None, req)}


@http
async def upload_iter(req: HttpRequest, response: HttpResponse):
    h = hashlib.sha256()
    size = chunks = 0
    async for chunk in req.request_body:
        h.update(chunk)
        size += len(chunk)
        chunks += 1
    await response.status(200)
    await response.headers({"content-type": "application/json"})
    await response.writer.write(json.dumps(_digest(size, h.hexdigest(), chunks, req)).encode())
    await response.writer.close_async()


@http
async def stream_writer(req: HttpRequest, response: HttpResponse):
    await response.status(201)
    await response.headers({"content-type": "text/plain", "x-form": "writer"})
    for i in range(5):
        await response.writer.write(f"line {i}\\n".encode())
    await response.writer.close_async()


@http
async def stream_stream(req: HttpRequest, response: HttpResponse):
    await response.status(200)
    await response.headers({"content-type": "text/plain", "x-form": "stream"})
    for i in range(5):
        response.stream.write(f"line {i}\\n")
    response.stream.end("end\\n")


@http
async def stream_close(req: HttpRequest, response: HttpResponse):
    await response.status(202)
    await response.headers({"content-type": "text/plain", "x-form": "close"})
    await response.writer.write(b"written, then close()\\n")
    response.close()


@http
async def sse(req: HttpRequest, response: HttpResponse):
    await response.status(200)
    await response.headers({"content-type": "text/event-stream", "cache-control": "no-cache"})
    await response.writer.write(b"id: 1\\nevent: tick\\ndata: first\\n\\n")
    flag = req.query_params["flag"]
    with trio.move_on_after(20):  # the test creates the flag once it has seen the first event
        while not os.path.exists(flag):
            await trio.sleep(0.02)
    await response.writer.write(b"id: 2\\nevent: tick\\ndata: last\\n\\n")
    await response.writer.close_async()


BLOCK = random.Random(1234).randbytes(1 << 20)


@http
async def download(req: HttpRequest, response: HttpResponse):
    mib = int(req.query_params["mib"])
    headers = {"content-type": "application/octet-stream"}
    if req.query_params.get("length"):
        headers["content-length"] = str(mib << 20)
    await response.status(200)
    await response.headers(headers)
    for i in range(mib):
        await response.writer.write(i.to_bytes(8, "big") + BLOCK[8:])
    await response.writer.close_async()


@http
async def declared(req: HttpRequest, response: HttpResponse):
    # declares content-length 10 but writes the "wrote" query parameter's number of bytes
    await response.status(200)
    await response.headers({"content-type": "text/plain", "content-length": "10"})
    await response.writer.write(b"x" * int(req.query_params["wrote"]))
    await response.writer.close_async()


_forever = {}


@http
async def forever(req: HttpRequest, response: HttpResponse):
    await response.status(200)
    await response.headers({"content-type": "text/plain"})
    try:
        for i in range(400):  # 20 s at most
            await response.writer.write(f"tick {i}\\n".encode())
            await trio.sleep(0.05)
        _forever["outcome"] = "finished"
    except Exception as exc:
        _forever["outcome"] = {"type": type(exc).__name__, "code": getattr(exc, "code", None)}


iii.register_function("api.echo", echo)
iii.register_function("api.plain_text", plain_text)
iii.register_function("api.boom", boom)
iii.register_function("api.boom_http", boom_http)
iii.register_function("api.slow", slow)
iii.register_function("api.allow", allow)
iii.register_function("api.guarded", guarded)
iii.register_function("api.guarded_calls", lambda _d: list(_guarded))
iii.register_function("api.upload_all", upload_all)
iii.register_function("api.upload_iter", upload_iter)
iii.register_function("api.stream_writer", stream_writer)
iii.register_function("api.stream_stream", stream_stream)
iii.register_function("api.stream_close", stream_close)
iii.register_function("api.sse", sse)
iii.register_function("api.download", download)
iii.register_function("api.forever", forever)
iii.register_function("api.declared", declared)
iii.register_function("api.forever_outcome", lambda _d: _forever.get("outcome"))
iii.register_function("api.slow_stream", slow_stream)
iii.register_function("api.respond_as_told", lambda req: req["body"])
iii.register_function("api.late_outcome", lambda _d: _late.get("outcome"))


def route(function_id, api_path, method="GET", **extra):
    return iii.register_trigger({"type": "http", "function_id": function_id,
                                 "config": {"api_path": api_path, "http_method": method, **extra}})


route("api.echo", "/users/:id")
route("api.slow_stream", "/slow-stream")
for m in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"):
    route("api.echo", "/items/:id", m)
route("api.plain_text", "plain/text")  # no leading "/"
route("api.boom", "/boom")
route("api.boom_http", "/boom-http")
route("api.slow", "/slow")
route("api.guarded", "/guarded/:id", condition_function_id="api.allow")
route("api.upload_all", "/upload/all", "POST")
route("api.upload_iter", "/upload/iter", "POST")
route("api.echo", "/json", "POST")
route("api.stream_writer", "/stream/writer")
route("api.stream_stream", "/stream/stream")
route("api.stream_close", "/stream/close")
route("api.sse", "/sse")
route("api.download", "/download")
route("api.forever", "/stream/forever")
route("api.declared", "/stream/declared")
route("api.respond_as_told", "/as-told", "POST")
temporary = route("api.echo", "/temporary")


def drop_temporary(_data):
    temporary.unregister()
    return True


iii.register_function("api.drop_temporary", drop_temporary)
"""


def _toml(sections: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else repr(value)}")
    return "\n".join(lines) + "\n"


@asynccontextmanager
async def http_supervisor(tmp_path: Path, workers: dict[str, str] | None = None, *,
                          supervisor: dict[str, Any] | None = None,
                          **http_config: Any) -> AsyncIterator[tuple[Supervisor, httpx.AsyncClient]]:
    """A supervisor running ``workers`` (default: just ``api``) and an httpx client for it;
    ``supervisor`` and the keyword arguments go to the config's ``[supervisor]`` and ``[http]``."""
    workers = {"api": API} if workers is None else workers
    wdir = tmp_path / "workers"
    wdir.mkdir()
    for name, body in workers.items():
        ready = f"\niii.register_function({name + '.ready'!r}, lambda d: True)\n"  # registered last
        write_worker(wdir, name, textwrap.dedent(body) + ready)
    config = tmp_path / "config.toml"
    config.write_text(_toml({
        "supervisor": supervisor or {},
        "http": {"max_body_size": MAX_BODY, "request_timeout_ms": REQUEST_TIMEOUT_MS, **http_config},
        "restart": {"initial_delay": 5.0},  # a killed worker stays away long enough to observe it
    }))
    async with Supervisor(wdir, "--config", str(config)) as sup:
        await sup.start()
        with trio.fail_after(15):
            while not {f"{n}.ready" for n in workers} <= await sup.function_ids():
                await trio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sup.http_port}", trust_env=False,
                                     timeout=10) as client:
            yield sup, client


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]


# --- raw sockets ------------------------------------------------------------------------------


class Raw:
    """A raw client connection; responses are parsed with a client-side h11 connection each."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    @asynccontextmanager
    async def connect(cls, port: int) -> AsyncIterator[Raw]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            yield cls(stream)
        finally:
            await trio.aclose_forcefully(stream)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _receive(self) -> bytes:
        try:
            return await self.stream.receive_some(65536)
        except trio.BrokenResourceError:  # connection reset
            return b""

    async def response(self, method: str = "GET", *, head_only: bool = False) -> tuple[h11.Response, bytes]:
        """The next response (to a request with ``method``); with ``head_only``, stop after the head."""
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        if self.buffer:  # (receive_data(b"") would mean EOF)
            conn.receive_data(self.buffer)
        self.buffer = b""
        head: h11.Response | None = None
        body = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await self._receive())
            elif isinstance(event, h11.Response):
                head = event
                if head_only:
                    return head, b""
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                self.buffer = conn.trailing_data[0]
                return head, b"".join(body)
            elif isinstance(event, h11.ConnectionClosed):
                raise EOFError("closed before a complete response")

    async def read_until_closed(self) -> bytes:
        data = self.buffer
        while chunk := await self._receive():
            data += chunk
        self.buffer = b""
        return data


def request(method: str, target: str, body: bytes = b"", headers: str = "") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    return f"{method} {target} HTTP/1.1\r\nHost: x\r\n{headers}{length}\r\n".encode() + body


def header(response: h11.Response, name: str) -> str | None:
    for key, value in response.headers:
        if key.decode() == name:
            return value.decode()
    return None


def parse_raw_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


# --- 1. routing, request payload, buffered responses ------------------------------------------


async def test_request_payload_methods_and_buffered_responses(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with http_supervisor(tmp_path) as (_sup, client):
            r = await client.get("/users/123?x=1", headers={"X-Custom-Header": "Some Value"})
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/json"  # dict body → JSON
            assert r.headers["x-handler"] == "echo"
            got = r.json()
            assert got["method"] == "GET"
            assert got["path"] == "/users/:id"  # the pattern
            assert got["request_path"] == "/users/123"
            assert got["path_params"] == {"id": "123"}
            assert got["query_params"] == {"x": "1"}
            assert got["headers"]["x-custom-header"] == "Some Value"
            assert all(name == name.lower() for name in got["headers"])
            assert got["body"] is None

            for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
                r = await client.request(method, "/items/42")
                assert r.status_code == 200, (method, r.text)
                assert r.json()["method"] == method and r.json()["path_params"] == {"id": "42"}
            # HEAD: the function runs (it saw HEAD), the client gets the head without a body
            r = await client.head("/items/42")
            assert r.status_code == 200 and r.headers["x-method"] == "HEAD" and r.content == b""
            assert int(r.headers["content-length"]) > 0
            # HEAD on a GET-only route falls back to GET, still without a body
            r = await client.head("/users/7")
            assert r.status_code == 200 and r.headers["x-method"] == "HEAD" and r.content == b""

            # api_path "plain/text" (no leading "/"); a str body with a content-type is sent as is;
            # headers may be given as ["Name: value"] strings
            r = await client.get("/plain/text")
            assert r.status_code == 201
            assert r.headers["content-type"] == "text/plain; charset=utf-8"
            assert r.headers["x-extra"] == "1"
            assert r.content == b"plain text, sent as is"


# --- 2. request bodies ------------------------------------------------------------------------


async def test_request_bodies_json_text_and_large_streamed(tmp_path: Path) -> None:
    big = random.Random(7).randbytes(2 * MiB + 12345)
    digest = hashlib.sha256(big).hexdigest()

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 100_000):
            yield big[start:start + 100_000]

    with trio.fail_after(40):
        async with http_supervisor(tmp_path) as (_sup, client):
            r = await client.post("/json", json={"name": "ada", "tags": [1, 2]})
            assert r.status_code == 200 and r.json()["body"] == {"name": "ada", "tags": [1, 2]}
            r = await client.post("/items/1", content=b"hello, text", headers={"content-type": "text/plain"})
            assert r.status_code == 200 and r.json()["body"] == "hello, text"
            # a small body is also readable as a stream from an @http handler
            r = await client.post("/upload/all", content=b"tiny", headers={"content-type": "text/plain"})
            assert r.status_code == 200
            assert r.json()["length"] == 4 and r.json()["inline_body"] == "tiny"

            for path in ("/upload/all", "/upload/iter"):  # read_all() and `async for`
                # Content-Length body
                r = await client.post(path, content=big, headers={"content-type": "application/octet-stream"})
                assert r.status_code == 200, r.text
                got = r.json()
                assert (got["length"], got["sha256"]) == (len(big), digest), path
                assert got["content_length"] == str(len(big)) and got["transfer_encoding"] is None
                assert got["inline_body"] is None  # too big to be inlined: streamed only
                # chunked body
                r = await client.post(path, content=chunked(), headers={"content-type": "application/octet-stream"})
                assert r.status_code == 200, r.text
                got = r.json()
                assert (got["length"], got["sha256"]) == (len(big), digest), path
                assert got["transfer_encoding"] == "chunked" and got["content_length"] is None
                if path == "/upload/iter":
                    assert got["chunks"] > 1  # it really arrived as a stream


# --- 3. condition functions -------------------------------------------------------------------


async def test_condition_function_gates_the_handler(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with http_supervisor(tmp_path) as (sup, client):
            r = await client.get("/guarded/1")
            assert r.status_code == 422
            err = error_of(r)
            assert err["code"] == "CONDITION_NOT_MET" and err["skipped"] is True
            r = await client.get("/guarded/2", headers={"x-allow": "no"})
            assert r.status_code == 422
            assert await sup.call("api.guarded_calls") == []  # the handler never ran
            r = await client.get("/guarded/3", headers={"x-allow": "yes"})
            assert r.status_code == 200 and r.json() == {"guarded": "3"}
            assert await sup.call("api.guarded_calls") == ["3"]


# --- 4. streamed responses with @http ---------------------------------------------------------


async def test_streaming_http_handler_forms(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with http_supervisor(tmp_path) as (sup, client):
            lines = "".join(f"line {i}\n" for i in range(5))
            for path, status, form, body in [
                ("/stream/writer", 201, "writer", lines),  # await writer.write / close_async
                ("/stream/stream", 200, "stream", lines + "end\n"),  # stream.write / stream.end
                ("/stream/close", 202, "close", "written, then close()\n"),  # response.close()
            ]:
                for _ in range(3):  # the fire-and-forget forms must be reliably ordered
                    r = await client.get(path)
                    assert r.status_code == status, (path, r.text)
                    assert r.headers["x-form"] == form and r.headers["content-type"] == "text/plain"
                    assert r.headers.get("transfer-encoding") == "chunked", (path, r.headers)
                    assert "content-length" not in r.headers, (path, r.headers)
                    assert r.text == body, path
            # nothing went wrong in the worker along the way
            assert (await sup.workers())["api"]["restarts"] == 0
            assert "Traceback" not in sup.output()


# --- 5. server-sent events --------------------------------------------------------------------


async def test_sse_events_arrive_as_they_are_written(tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    with trio.fail_after(30):
        async with http_supervisor(tmp_path) as (_sup, client):
            async with client.stream("GET", "/sse", params={"flag": str(flag)}) as r:
                assert r.status_code == 200
                assert r.headers["content-type"] == "text/event-stream"
                assert r.headers["cache-control"] == "no-cache"
                lines = r.aiter_lines()
                seen = []
                with trio.move_on_after(5):
                    async for line in lines:
                        seen.append(line)
                        if line == "data: first":
                            break
                # the handler is still blocked before its last event: only the flag releases it
                assert seen == ["id: 1", "event: tick", "data: first"], "the first event was held back"
                # a started stream has no overall deadline: request_timeout_ms only bounds its start
                await trio.sleep(REQUEST_TIMEOUT_MS / 1000 + 0.5)
                flag.touch()
                rest = [line async for line in lines]
            assert [line for line in rest if line] == ["id: 2", "event: tick", "data: last"]


# --- 6. large downloads with flat memory ------------------------------------------------------


def _expected_download(mib: int) -> str:
    block = random.Random(1234).randbytes(MiB)
    h = hashlib.sha256()
    for i in range(mib):
        h.update(i.to_bytes(8, "big") + block[8:])
    return h.hexdigest()


async def test_large_download_streams_with_bounded_supervisor_memory(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with http_supervisor(tmp_path) as (sup, client):
            assert sup.proc is not None
            proc = psutil.Process(sup.proc.pid)

            async def download(mib: int, *, length: bool) -> tuple[str, int]:
                h = hashlib.sha256()
                size = 0
                params = {"mib": mib, **({"length": 1} if length else {})}
                async with client.stream("GET", "/download", params=params) as r:
                    assert r.status_code == 200
                    if length:
                        assert r.headers["content-length"] == str(mib * MiB)
                    else:
                        assert r.headers["transfer-encoding"] == "chunked"
                    next_pause = MiB
                    async for chunk in r.aiter_raw():
                        h.update(chunk)
                        size += len(chunk)
                        if size >= next_pause:  # a slow-ish client: the worker must wait for it
                            next_pause += MiB
                            await trio.sleep(0.01)
                return h.hexdigest(), size

            # warm up (allocator, buffers), then take the baseline
            assert await download(8, length=False) == (_expected_download(8), 8 * MiB)
            baseline = proc.memory_info().rss
            peak = baseline

            async def sample(cancel: trio.CancelScope) -> None:
                nonlocal peak
                with cancel:
                    while True:
                        peak = max(peak, proc.memory_info().rss)
                        await trio.sleep(0.005)

            async with trio.open_nursery() as nursery:
                sampler = trio.CancelScope()
                nursery.start_soon(sample, sampler)
                result = await download(64, length=True)
                sampler.cancel()
            assert result == (_expected_download(64), 64 * MiB)
            growth = peak - baseline
            assert growth < 16 * MiB, f"supervisor RSS grew by {growth / MiB:.1f} MiB for a 64 MiB download"


# --- 7. worker exit -------------------------------------------------------------------------------

DOOMED = """
import trio
from iii_supervisor import http

state = {"inflight": 0}

async def slow(req):
    state["inflight"] += 1
    await trio.sleep(30)

@http
async def stream(req, response):
    await response.status(200)
    await response.headers({"content-type": "text/plain"})
    await response.writer.write(b"first part\\n")
    state["inflight"] += 1
    await trio.sleep(30)

iii.register_function("doomed.slow", slow)
iii.register_function("doomed.stream", stream)
iii.register_function("doomed.ping", lambda req: {"status_code": 200, "body": "pong"})
iii.register_function("doomed.inflight", lambda _d: state["inflight"])
for path, fn in (("/doomed/slow", "doomed.slow"), ("/doomed/stream", "doomed.stream"), ("/doomed/ping", "doomed.ping")):
    iii.register_trigger({"type": "http", "function_id": fn, "config": {"api_path": path}})
"""


async def test_worker_exit_removes_its_routes_and_fails_requests_in_flight(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with http_supervisor(tmp_path, {"api": API, "doomed": DOOMED}) as (sup, client):
            r = await client.get("/doomed/ping")
            assert r.status_code == 200 and r.json() == "pong"
            pid = (await sup.workers())["doomed"]["pid"]
            outcome: dict[str, Any] = {}

            async def buffered() -> None:
                r = await client.get("/doomed/slow")
                outcome["buffered"] = (r, trio.current_time())

            async def streamed() -> None:
                async with client.stream("GET", "/doomed/stream") as r:
                    assert r.status_code == 200
                    parts = r.aiter_raw()
                    assert await parts.__anext__() == b"first part\n"
                    try:
                        async for _ in parts:
                            pass
                    except httpx.RemoteProtocolError as exc:  # cut body: no final chunk
                        outcome["streamed"] = (exc, trio.current_time())
                    else:
                        outcome["streamed"] = ("complete", trio.current_time())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(buffered)
                nursery.start_soon(streamed)
                while await sup.call("doomed.inflight") < 2:
                    await trio.sleep(0.02)
                os.kill(pid, signal.SIGKILL)
                killed_at = trio.current_time()

            r, at = outcome["buffered"]
            assert r.status_code in (502, 503), r.text
            assert error_of(r)["code"] == "invocation_stopped"
            assert at - killed_at < 1.0, "the request in flight must fail at once"
            cut, at = outcome["streamed"]
            assert isinstance(cut, httpx.RemoteProtocolError), "a cut stream must not look complete"
            assert at - killed_at < 1.0
            # its routes are gone (it restarts only after 5 s) ...
            r = await client.get("/doomed/ping")
            assert r.status_code == 404 and error_of(r)["code"] == "NOT_FOUND"
            assert (await sup.workers())["doomed"]["state"] == "backoff"
            # ... and the other worker's routes are untouched
            assert (await client.get("/users/1")).status_code == 200


# --- 8. route clashes -------------------------------------------------------------------------

CLASH = """
import time

deadline = time.monotonic() + 10
while time.monotonic() < deadline:  # wait until the api worker owns GET /users/:id
    triggers = iii.trigger({"function_id": "engine::triggers::list"})["triggers"]
    if any(t["config"].get("api_path") == "/users/:id" for t in triggers):
        break
    time.sleep(0.05)

iii.register_function("clash.get", lambda req: {"status_code": 200, "headers": {"content-type": "text/plain"},
                                                "body": "clash"})
outcome = {}
try:
    iii.register_trigger({"type": "http", "function_id": "clash.get",
                          "config": {"api_path": "users/:userId", "http_method": "get"}})
    outcome["error"] = None
except Exception as exc:
    outcome["error"] = {"type": type(exc).__name__, "code": exc.code, "message": exc.message}
# another method on the same shape is no clash
iii.register_trigger({"type": "http", "function_id": "clash.get",
                      "config": {"api_path": "/users/:userId", "http_method": "DELETE"}})
iii.register_function("clash.outcome", lambda _d: outcome)
"""


async def test_a_stopped_worker_gets_no_unbounded_queue(tmp_path: Path) -> None:
    # small limits so that a few 400 KB calls fill what the stopped worker's socket does not take
    limits = {"max_frame_size": MiB, "max_queued_bytes": MiB}
    with trio.fail_after(40):
        async with http_supervisor(tmp_path, supervisor=limits, max_body_size=512 * 1024) as (sup, client):
            pid = (await sup.workers())["api"]["pid"]
            outcomes: list[tuple[int, str, float]] = []

            async def post(i: int) -> None:
                start = trio.current_time()
                r = await client.post("/json", json={"i": i, "pad": "x" * 400_000})
                outcomes.append((r.status_code, error_of(r)["code"], trio.current_time() - start))

            os.kill(pid, signal.SIGSTOP)
            try:
                async with trio.open_nursery() as nursery:
                    for i in range(16):
                        nursery.start_soon(post, i)
            finally:
                os.kill(pid, signal.SIGCONT)
            codes = sorted({code for _status, code, _t in outcomes})
            assert codes == ["invocation_timeout", "worker_overloaded"], outcomes
            for status, code, took in outcomes:
                if code == "worker_overloaded":  # refused at once, not after the request timeout
                    assert status == 503 and took < REQUEST_TIMEOUT_MS / 1000, outcomes
                else:
                    assert status == 504
            assert "worker api is not reading its socket" in sup.output()
            # the worker catches up (it runs the calls that timed out, whose answers are dropped)
            with trio.fail_after(10):
                while (await client.get("/users/1")).status_code != 200:
                    await trio.sleep(0.1)
            assert (await sup.workers())["api"]["pid"] == pid


async def test_route_owned_by_another_worker_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with http_supervisor(tmp_path, {"api": API, "clash": CLASH}) as (sup, client):
            err = (await sup.call("clash.outcome"))["error"]
            assert err is not None, "the clashing route was accepted"
            assert err["code"] == "trigger_registration_failed"
            assert err["type"] == "TriggerRegistrationError"
            assert "GET /users/:userId" in err["message"] and "/users/:id" in err["message"]
            assert "'api'" in err["message"] and "'api.echo'" in err["message"]
            r = await client.get("/users/5")  # still served by its owner
            assert r.status_code == 200 and r.json()["path"] == "/users/:id"
            r = await client.delete("/users/5")
            assert r.status_code == 200 and r.text == "clash"


# --- 9. unregister ----------------------------------------------------------------------------


async def test_trigger_unregister_removes_the_route_at_once(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with http_supervisor(tmp_path) as (sup, client):
            r = await client.get("/temporary")
            assert r.status_code == 200 and r.json()["path"] == "/temporary"
            assert await sup.call("api.drop_temporary") is True
            r = await client.get("/temporary")
            assert r.status_code == 404 and error_of(r)["code"] == "NOT_FOUND"
            assert (await client.get("/users/1")).status_code == 200


# --- 10. bad input, limits and timeouts --------------------------------------------------------


async def test_malformed_request_line_and_headers_get_400(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with http_supervisor(tmp_path) as (sup, client):
            port = sup.http_port
            for data in [
                b"THIS IS NOT HTTP\r\n\r\n",  # request line
                b"GET /users/1 HTTP/1.1 extra\r\nHost: x\r\n\r\n",  # request line
                b"GET /users/1 HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",  # header line
                b"GET /users/1 HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n",  # header name
                b"GET /users/1 HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",  # framing
            ]:
                async with Raw.connect(port) as raw:
                    await raw.send(data)
                    status, headers, body = parse_raw_response(await raw.read_until_closed())
                    assert status == 400, data
                    assert headers["content-type"] == "application/json"
                    assert orjson.loads(body)["error"]["code"] == "BAD_REQUEST"
            assert (await client.get("/users/1")).status_code == 200


def _mutants(seed: int, count: int) -> list[bytes]:
    """Valid requests broken at random: flipped, dropped, duplicated and inserted bytes, cuts."""
    rng = random.Random(seed)
    bases = [
        request("GET", "/users/1?x=1", headers="Accept: */*\r\n"),
        request("POST", "/json", b'{"k": [1, 2, {"z": null}]}', "Content-Type: application/json\r\n"),
        b"POST /upload/iter HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        request("GET", "/stream/writer") + request("HEAD", "/users/2"),
    ]
    specials = [b"\r", b"\n", b"\0", b":", b" ", b"\xff", b"\r\n\r\n", b"chunked", b"-1", b"9" * 30]
    out = []
    for _ in range(count):
        data = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data) + 1)
            op = rng.randrange(5)
            if op == 0 and i < len(data):
                data[i] = rng.randrange(256)
            elif op == 1:
                del data[i:i + rng.randint(1, 8)]
            elif op == 2:
                data[i:i] = rng.choice(specials)
            elif op == 3:
                data[i:i] = data[i:i + rng.randint(1, 40)]
            else:
                del data[i:]
        out.append(bytes(data))
    return out


async def test_nothing_a_client_sends_breaks_the_front(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with http_supervisor(tmp_path) as (sup, client):
            cases = _mutants(seed=20261125, count=150) + [random.Random(7).randbytes(n) for n in (1, 100, 5000)]
            for data in cases:
                async with Raw.connect(sup.http_port) as raw:
                    await raw.send(data)
                    await raw.stream.send_eof()  # the server sees the end instead of waiting for more
                    with trio.fail_after(5):
                        rest = await raw.read_until_closed()
                if rest:  # whatever it answered is well-formed HTTP with a known status
                    assert rest.startswith(b"HTTP/1.1 "), (data, rest)
                    known = (200, 201, 204, 400, 404, 405, 408, 413, 422, 431, 500, 501)
                    assert parse_raw_response(rest)[0] in known, rest
            assert (await client.get("/users/1")).status_code == 200
            assert "HTTP connection failed" not in sup.output() and "Traceback" not in sup.output(), sup.output()


async def test_bodies_over_the_limit_get_413(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with http_supervisor(tmp_path) as (sup, client):
            port = sup.http_port
            # a declared Content-Length over the limit is refused before any of it is sent
            for path, ctype in (("/upload/all", "application/octet-stream"), ("/json", "application/json")):
                async with Raw.connect(port) as raw:
                    await raw.send(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                                   f"Content-Length: {10 * 1024 ** 3}\r\n\r\n".encode())
                    with trio.fail_after(3):
                        head, body = await raw.response("POST")
                    assert head.status_code == 413, path
                    assert header(head, "connection") == "close"
                    err = orjson.loads(body)["error"]
                    assert err["code"] == "PAYLOAD_TOO_LARGE" and str(MAX_BODY) in err["message"]
                    with trio.fail_after(3):  # and the connection is closed (the body is not drained)
                        assert await raw.read_until_closed() == b""

            # a chunked body gets 413 as soon as it crosses the limit, streamed or buffered
            for path, ctype in (("/upload/all", "application/octet-stream"), ("/upload/iter", "text/plain"),
                                ("/json", "application/json")):
                async with Raw.connect(port) as raw:
                    await raw.send(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                                   f"Transfer-Encoding: chunked\r\n\r\n".encode())

                    async def send_body(raw: Raw = raw) -> None:
                        piece = b"%x\r\n%s\r\n" % (64 * 1024, b"x" * 64 * 1024)
                        try:
                            for _ in range(8 * MiB // (64 * 1024)):  # 8 MiB, never finished
                                await raw.send(piece)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass
                        await trio.sleep_forever()

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(send_body)
                        with trio.fail_after(5):
                            head, body = await raw.response("POST")
                        nursery.cancel_scope.cancel()
                    assert head.status_code == 413, (path, body)
                    assert orjson.loads(body)["error"]["code"] == "PAYLOAD_TOO_LARGE"
            assert (await client.get("/users/1")).status_code == 200
            assert (await sup.workers())["api"]["restarts"] == 0


async def test_unknown_path_404_and_wrong_method_405(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with http_supervisor(tmp_path) as (_sup, client):
            for path in ("/nope", "/users", "/users/1/extra", "/"):
                r = await client.get(path)
                assert r.status_code == 404, path
                err = error_of(r)
                assert err["code"] == "NOT_FOUND" and path in err["message"]
            r = await client.put("/users/1")
            assert r.status_code == 405
            assert r.headers["allow"] == "GET"
            assert error_of(r)["code"] == "METHOD_NOT_ALLOWED"
            r = await client.post("/stream/writer", json={})
            assert r.status_code == 405 and r.headers["allow"] == "GET"
            r = await client.head("/nope")
            assert r.status_code == 404 and r.content == b""


async def test_handler_errors_give_500_with_stacktrace_only_in_debug(tmp_path: Path) -> None:
    with trio.fail_after(40):
        for debug in (False, True):
            run_dir = tmp_path / f"debug-{debug}"
            run_dir.mkdir()
            async with http_supervisor(run_dir, debug=debug) as (_sup, client):
                for path, message in (("/boom", "kaboom from the handler"),
                                      ("/boom-http", "kaboom from an @http handler")):
                    r = await client.get(path)
                    assert r.status_code == 500, (path, r.text)
                    err = error_of(r)
                    assert err["code"] == "invocation_failed"
                    assert message in err["message"]
                    if debug:
                        assert "Traceback" in err["stacktrace"] and message in err["stacktrace"], (path, err)
                    else:
                        assert "stacktrace" not in err and "Traceback" not in r.text, (path, err)


async def test_slow_handler_gets_504(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with http_supervisor(tmp_path) as (sup, client):
            start = trio.current_time()
            r = await client.get("/slow")
            elapsed = trio.current_time() - start
            assert r.status_code == 504
            assert error_of(r)["code"] == "invocation_timeout"
            assert REQUEST_TIMEOUT_MS / 1000 - 0.1 <= elapsed < REQUEST_TIMEOUT_MS / 1000 + 2
            # the worker is still busy with it, yet serves others
            assert (await client.get("/users/1")).status_code == 200
            assert (await sup.workers())["api"]["restarts"] == 0


async def test_handler_writing_after_504_gets_an_error_not_a_hang(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with http_supervisor(tmp_path) as (sup, client):
            sleep = REQUEST_TIMEOUT_MS / 1000 + 0.5
            r = await client.get("/slow-stream", params={"sleep": str(sleep)})
            assert r.status_code == 504
            with trio.fail_after(5):
                while (outcome := await sup.call("api.late_outcome")) is None:
                    await trio.sleep(0.05)
            assert outcome == {"type": "ChannelClosed", "code": "response_abandoned"}


async def test_slow_header_clients_are_dropped_and_do_not_block_others(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with http_supervisor(tmp_path, header_timeout=1.0) as (sup, client):
            port = sup.http_port
            partials = [b"", b"GET /users/1 HT", b"GET /users/1 HTTP/1.1\r\nHost: x\r\nX-Half: "]
            closed_after: dict[int, tuple[float, bytes]] = {}

            async def slow_client(i: int, data: bytes) -> None:
                async with Raw.connect(port) as raw:
                    start = trio.current_time()
                    if data:
                        await raw.send(data)
                    rest = await raw.read_until_closed()
                    closed_after[i] = (trio.current_time() - start, rest)

            async with trio.open_nursery() as nursery:
                for i, data in enumerate(partials):
                    nursery.start_soon(slow_client, i, data)
                await trio.sleep(0.2)
                # while they hang on, normal requests are served promptly
                for n in range(5):
                    with trio.fail_after(0.5):
                        r = await client.get(f"/users/{n}")
                    assert r.status_code == 200 and r.json()["path_params"] == {"id": str(n)}
                assert not closed_after
            for i, (after, rest) in closed_after.items():
                assert 0.9 <= after < 3.0, (partials[i], after)
                if rest:  # a started head may be answered 408 before the close
                    assert parse_raw_response(rest)[0] == 408, rest


async def test_keep_alive_and_pipelining(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with http_supervisor(tmp_path) as (sup, _client):
            async with Raw.connect(sup.http_port) as raw:
                # several requests one after the other on one connection
                for n in range(3):
                    await raw.send(request("GET", f"/users/{n}"))
                    head, body = await raw.response()
                    assert head.status_code == 200 and orjson.loads(body)["path_params"] == {"id": str(n)}
                # pipelined: three requests in one send (one with a body), answers in order
                await raw.send(request("GET", "/users/a") + request("POST", "/items/b", b'{"k": 1}',
                                                                    "Content-Type: application/json\r\n")
                               + request("HEAD", "/users/c") + request("GET", "/users/d"))
                head, body = await raw.response()
                assert head.status_code == 200 and orjson.loads(body)["path_params"] == {"id": "a"}
                head, body = await raw.response("POST")
                got = orjson.loads(body)
                assert head.status_code == 200 and got["path_params"] == {"id": "b"} and got["body"] == {"k": 1}
                head, body = await raw.response("HEAD")
                assert head.status_code == 200 and header(head, "x-method") == "HEAD" and body == b""
                head, body = await raw.response()
                assert head.status_code == 200 and orjson.loads(body)["path_params"] == {"id": "d"}
                # early answers (404, 405, 422: the request is not handed to a function) keep the
                # connection alive too, pipelined or not
                await raw.send(request("GET", "/nope") + request("PUT", "/users/1") + request("GET", "/guarded/1"))
                for status in (404, 405, 422):
                    head, body = await raw.response()
                    assert head.status_code == status and header(head, "connection") is None, (status, body)
                # still open afterwards
                await raw.send(request("GET", "/plain/text"))
                head, body = await raw.response()
                assert head.status_code == 201 and body == b"plain text, sent as is"
                # an early answer to a request whose body is still to come says it closes
                await raw.send(b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial")
                head, body = await raw.response("POST")
                assert head.status_code == 404 and header(head, "connection") == "close"
                assert await raw.read_until_closed() == b""


async def test_client_disconnecting_mid_stream_makes_the_next_write_raise(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with http_supervisor(tmp_path) as (sup, client):
            pid = (await sup.workers())["api"]["pid"]
            async with Raw.connect(sup.http_port) as raw:
                await raw.send(request("GET", "/stream/forever"))
                head, _ = await raw.response(head_only=True)
                assert head.status_code == 200 and header(head, "transfer-encoding") == "chunked"
            # closed: the handler's next write fails
            with trio.fail_after(5):
                while (outcome := await sup.call("api.forever_outcome")) is None:
                    await trio.sleep(0.05)
            assert outcome == {"type": "ChannelClosed", "code": "client_disconnected"}
            # the supervisor and the worker are fine
            assert (await client.get("/users/1")).status_code == 200
            workers = await sup.workers()
            assert workers["api"]["pid"] == pid and workers["api"]["restarts"] == 0


async def test_max_connections_bound(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with http_supervisor(tmp_path, max_connections=2) as (sup, client):
            port = sup.http_port
            async with Raw.connect(port) as first, Raw.connect(port) as second:
                for raw in (first, second):  # a complete request: each surely holds its slot
                    await raw.send(request("GET", "/users/1"))
                    assert (await raw.response())[0].status_code == 200
                async with Raw.connect(port) as third:
                    await third.send(request("GET", "/users/3"))
                    with trio.fail_after(3):
                        data = await third.read_until_closed()
                    status, _headers, body = parse_raw_response(data)
                    assert status == 503, data
                    assert orjson.loads(body)["error"]["code"] == "SERVICE_UNAVAILABLE"
            # once they are closed, requests work again
            with trio.fail_after(3):
                while True:
                    try:
                        r = await client.get("/users/4")
                        break
                    except httpx.TransportError:
                        await trio.sleep(0.05)
            assert r.status_code == 200


async def test_streamed_responses_keep_the_connection_alive(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with http_supervisor(tmp_path) as (sup, _client):
            async with Raw.connect(sup.http_port) as raw:
                for _ in range(3):
                    await raw.send(request("GET", "/stream/writer"))
                    head, body = await raw.response()
                    assert head.status_code == 201 and header(head, "connection") is None
                    assert body.count(b"line ") == 5


async def test_response_framing_follows_the_client_and_the_handler(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with http_supervisor(tmp_path) as (sup, client):
            port = sup.http_port
            r = await client.get("/users/1")  # every response says who answers and when
            assert r.headers["server"] == "iii-supervisor" and r.headers["date"].endswith(" GMT")

            # HTTP/1.0: no keep-alive, no chunked encoding (a stream ends when the connection does)
            async def http10(target: str) -> tuple[int, dict[str, str], bytes]:
                async with Raw.connect(port) as raw:
                    await raw.send(f"GET {target} HTTP/1.0\r\n\r\n".encode())
                    return parse_raw_response(await raw.read_until_closed())

            status, headers, body = await http10("/users/1")
            assert status == 200 and headers["connection"] == "close"
            assert headers["content-length"] == str(len(body)) and orjson.loads(body)["path_params"] == {"id": "1"}
            status, headers, body = await http10("/stream/writer")
            assert status == 201 and headers["connection"] == "close"
            assert "transfer-encoding" not in headers and "content-length" not in headers
            assert body == b"".join(f"line {i}\n".encode() for i in range(5))

            # an HTTP/1.1 client that says Connection: close
            async with Raw.connect(port) as raw:
                await raw.send(request("GET", "/users/2", headers="Connection: close\r\n"))
                head, body = await raw.response()
                assert head.status_code == 200 and header(head, "connection") == "close"
                assert await raw.read_until_closed() == b""

            # framing headers from a handler are not copied; its "connection: close" is honoured
            told = {"status_code": 200, "body": "short", "headers": {
                "content-type": "text/plain", "content-length": "999", "transfer-encoding": "chunked",
                "connection": "close"}}
            async with Raw.connect(port) as raw:
                await raw.send(request("POST", "/as-told", orjson.dumps(told), "Content-Type: application/json\r\n"))
                head, body = await raw.response("POST")
                assert body == b"short" and header(head, "content-length") == "5"
                assert header(head, "transfer-encoding") is None and header(head, "connection") == "close"
                assert await raw.read_until_closed() == b""

            # a stream sent with the length its handler declared; a handler that writes less or
            # more than it declared gets the connection cut, not a client waiting forever
            async with Raw.connect(port) as raw:
                await raw.send(request("GET", "/stream/declared?wrote=10"))
                head, body = await raw.response()
                assert header(head, "content-length") == "10" and header(head, "transfer-encoding") is None
                assert body == b"x" * 10
            for wrote in (4, 20):
                async with Raw.connect(port) as raw:
                    await raw.send(request("GET", f"/stream/declared?wrote={wrote}"))
                    with trio.fail_after(5):
                        data = await raw.read_until_closed()
                    status, headers, body = parse_raw_response(data)
                    assert status == 200 and headers["content-length"] == "10" and len(body) < 10, (wrote, data)
            assert (await client.get("/users/3")).status_code == 200


async def test_expect_100_continue_is_answered_before_the_body_is_sent(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with http_supervisor(tmp_path) as (sup, _client):
            async with Raw.connect(sup.http_port) as raw:
                body = b'{"k": 2}'
                await raw.send(request("POST", "/json", headers="Content-Type: application/json\r\n"
                                       f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\n"))
                while b"\r\n\r\n" not in raw.buffer:
                    raw.buffer += await raw._receive()
                interim, _, raw.buffer = raw.buffer.partition(b"\r\n\r\n")
                assert interim == b"HTTP/1.1 100 Continue"
                await raw.send(body)
                head, got = await raw.response("POST")
                assert head.status_code == 200 and orjson.loads(got)["body"] == {"k": 2}


async def test_clients_that_stall_while_sending_a_body_get_408(tmp_path: Path) -> None:
    stalled = [
        # a JSON body, read whole before the handler is called
        request("POST", "/json", headers="Content-Type: application/json\r\nContent-Length: 100\r\n")
        + b'{"partial',
        # a chunked body, streamed to an @http handler that reads it
        b"POST /upload/iter HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ]
    with trio.fail_after(30):
        async with http_supervisor(tmp_path, body_timeout=1.0) as (sup, client):
            for data in stalled:
                async with Raw.connect(sup.http_port) as raw:
                    start = trio.current_time()
                    await raw.send(data)
                    rest = await raw.read_until_closed()
                    after = trio.current_time() - start
                status, _headers, body = parse_raw_response(rest)
                assert status == 408 and orjson.loads(body)["error"]["code"] == "REQUEST_TIMEOUT", rest
                assert 0.9 <= after < 3.0, after
            assert (await client.get("/users/1")).status_code == 200


async def test_invalid_handler_responses_get_500_not_a_dropped_connection(tmp_path: Path) -> None:
    told_cases = [
        {"status_code": 150},
        {"status_code": 200, "headers": {"x-bad": "line\nbreak"}},
        {"status_code": 200, "headers": {"bad name": "v"}},
        {"status_code": 200, "headers": {"x-snow": "\u2603"}},
        {"status_code": 200, "headers": ["no colon here"]},
    ]
    with trio.fail_after(30):
        async with http_supervisor(tmp_path) as (_sup, client):
            for told in told_cases:
                r = await client.post("/as-told", json=told)
                assert r.status_code == 500 and error_of(r)["code"] == "invalid_response", told
            r = await client.post("/as-told", json={"status_code": 204, "body": {"ignored": True}})
            assert r.status_code == 204 and r.content == b""
