"""A real local HTTP server (stdlib ``http.server`` in a thread, 127.0.0.1, port 0) standing in
for the endpoints of external HTTP functions, and recording every request it gets.

    with endpoint_server() as server:
        server.url("/echo")             # 200, the request echoed as JSON
        server.requests                 # [Seen(method, path, headers, body), ...]

Routes: ``/echo``; ``/envelope`` (an HTTP trigger's ``{status_code: 201, headers, body}``
holding the request body as ``got``); ``/status/N`` (status N; ``?json`` adds an ``{"error": {...}}`` body);
``/text`` (200, not JSON); ``/empty`` (204); ``/redirect`` (302 to /echo); ``/hold`` (answers once
:meth:`EndpointServer.release` is called, at most 10 s); ``/big?n=N`` (200 with N bytes, no
Content-Length); ``/declared?n=N`` (Content-Length N, then a few bytes and close).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs


@attrs.frozen
class Seen:
    method: str
    path: str
    #: header names lowercased
    headers: dict[str, str]
    body: bytes


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):  # (the engine hanging up is what tests check)
            super().handle_error(request, client_address)


class EndpointServer:
    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self._release = threading.Event()
        #: requests being held by /hold right now
        self.holding = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                owner.requests.append(seen)
                parts = urlsplit(self.path)
                query = parse_qs(parts.query, keep_blank_values=True)
                route = parts.path
                if route == "/echo":
                    self._send(200, json.dumps({"method": seen.method, "path": seen.path, "headers": seen.headers,
                                                "body": json.loads(body) if body else None}).encode())
                elif route == "/envelope":  # what a function bound to an http trigger answers
                    self._send(200, json.dumps({"status_code": 201, "headers": {"x-served-by": "endpoint"},
                                                "body": {"got": json.loads(body) if body else None}}).encode())
                elif route.startswith("/status/"):
                    status = int(route.rsplit("/", 1)[1])
                    payload = json.dumps({"error": {"code": "not_allowed", "message": "amount too high"}}).encode() \
                        if "json" in query else b"something broke"
                    self._send(status, payload)
                elif route == "/text":
                    self._send(200, b"<html>not json</html>", "text/html")
                elif route == "/empty":
                    self._send(204, b"")
                elif route == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", "/echo")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif route == "/hold":
                    with owner._lock:
                        owner.holding += 1
                    owner._release.wait(10)
                    with owner._lock:
                        owner.holding -= 1
                    self._send(200, b'{"held":true}')
                elif route == "/big":
                    n = int(query["n"][0])
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()  # no length: the body ends when the connection closes
                    piece = b"x" * 65536
                    try:
                        self.wfile.write(b'"')
                        for _ in range(n // len(piece)):
                            self.wfile.write(piece)
                        self.wfile.write(b'"')
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the engine gave up reading (what the test checks)
                elif route == "/declared":
                    self.send_response(200)
                    self.send_header("Content-Length", query["n"][0])
                    self.end_headers()
                    self.wfile.write(b'"abc')
                else:
                    self._send(404, b"no such route")

            def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                if body:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="endpoint-server", daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def release(self) -> None:
        """Let every ``/hold`` request answer."""
        self._release.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@contextmanager
def endpoint_server() -> Iterator[EndpointServer]:
    server = EndpointServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
