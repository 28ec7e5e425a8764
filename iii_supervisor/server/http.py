"""The HTTP front: h11 over trio, serving the routes of ``http`` triggers.

One task per connection, one request at a time per connection (HTTP/1.1 keep-alive and
pipelining come from h11, which buffers what a client sends ahead). For each request:

1. resolve the route (404 / 405 with ``Allow``); refuse a declared body over the limit with 413
   before reading it;
2. run the trigger's condition function, if any (422 ``CONDITION_NOT_MET`` when falsy);
3. call the function on its worker with the request, plus two channel references:
   ``request_body`` (we stream the body to the worker) and ``response`` (the worker may stream
   the response back);
4. answer from whichever comes first on the response channel: a returned
   ``{status_code, headers, body}`` (buffered), or ``set_status``/``set_headers`` controls
   followed by body chunks (streamed, each forwarded to the client as it arrives).

Flow control: the worker may send only :data:`CHANNEL_WINDOW` bytes ahead; each chunk written to
the client is granted back with ``channelwindow``. A slow client therefore slows the handler
down instead of growing the supervisor's memory: a multi-GiB download costs at most one window.

Every wait is bounded: request heads (``header_timeout``, also the keep-alive idle time), body
reads (``body_timeout``), and the handler until the response starts (``request_timeout_ms``,
then 504). Once a response is streaming it may last as long as the handler writes (SSE); the
client disconnecting closes the channel, and the handler's next write raises.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import aclosing
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import orjson

try:  # the compiled build of h11, if installed (pip install 'iii-supervisor[fast]'): ~1.1-1.2x
    import h11_mypyc as h11  # type: ignore[import-not-found]
except ImportError:
    import h11
import trio

from ..config import HttpConfig
from ..errors import EngineError, InvocationError
from ..invocation import Invoker, Pending
from ..protocol import (
    CHANNEL_WINDOW,
    ChannelClose,
    ChannelControl,
    ChannelWindow,
    Chunk,
    ErrorBody,
    InvocationResult,
)
from ..registry import Registry
from ..session import Session
from .routes import Match, MethodNotAllowed, Router

log = logging.getLogger(__name__)

RECEIVE_SIZE = 64 * 1024
MAX_HEAD_SIZE = 64 * 1024
#: Non-JSON bodies up to this size are also handed over inline, as text, in ``body``.
INLINE_TEXT_LIMIT = 64 * 1024
_SERVER = ("server", "iii-supervisor")

#: HTTP status for an invocation error code.
_STATUS_OF_ERROR = {
    "invocation_timeout": 504,
    "invocation_stopped": 502,
    "function_not_found": 503,
}


class _ClientGone(Exception):
    """The client closed the connection or broke the protocol; nothing more can be sent."""


def error_body(code: str, message: str, **extra: Any) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, **extra}})


@attrs.define
class _Response:
    """A buffered response."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def json_response(status: int, code: str, message: str, *, headers: list[tuple[str, str]] | None = None,
                  **extra: Any) -> _Response:
    return _Response(status, [("content-type", "application/json"), *(headers or [])],
                     error_body(code, message, **extra))


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _checked_header(name: str, value: str) -> tuple[str, str]:
    # h11 refuses these when the response is sent, when it is too late to answer 500
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}")
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"header {name!r} has a line break in its value")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"header {name!r} has a value that is not latin-1: {value!r:.80}") from None
    return name, value


def _header_list(value: Any) -> list[tuple[str, str]]:
    """Handler headers: ``{"name": "value"}`` or ``["Name: value", ...]``, validated."""
    if isinstance(value, dict):
        return [_checked_header(str(k), str(v)) for k, v in value.items()]
    if isinstance(value, list):
        pairs = []
        for item in value:
            name, sep, val = str(item).partition(":")
            if not sep:
                raise ValueError(f"header {item!r} is not 'Name: value'")
            pairs.append(_checked_header(name.strip(), val.strip()))
        return pairs
    if value is None:
        return []
    raise ValueError(f"headers must be an object or a list of 'Name: value' strings, got {type(value).__name__}")


def _valid_status(value: Any) -> int:
    # 1xx are interim responses: a handler's answer must be final
    if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 599:
        raise ValueError(f"status_code must be an integer from 200 to 599, got {value!r}")
    return value


def render_result(result: Any) -> _Response:
    """A handler's return value as an HTTP response (see docs/http.md for the rules)."""
    if not isinstance(result, dict) or not ({"status_code", "statusCode", "body", "headers"} & result.keys()):
        return _Response(200, [("content-type", "application/json")], orjson.dumps(result))
    status = _valid_status(result.get("status_code", result.get("statusCode", 200)))
    headers = _header_list(result.get("headers"))
    body = result.get("body")
    has_type = any(k.lower() == "content-type" for k, _ in headers)
    if body is None or status in (204, 304):  # these responses have no body by definition
        data = b""
    elif isinstance(body, str) and has_type:
        data = body.encode()
    else:
        data = orjson.dumps(body)
        if not has_type:
            headers.append(("content-type", "application/json"))
    return _Response(status, headers, data)


class HttpConnection:
    """h11 state plus the socket, with bounded reads."""

    def __init__(self, stream: trio.SocketStream, *, write_timeout: float = 30.0) -> None:
        self.stream = stream
        #: a client that stops reading for this long is dropped (its slot is freed)
        self.write_timeout = write_timeout
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_SIZE)
        # the body pump may answer "100 Continue" while the response is being sent
        self._send_lock = trio.StrictFIFOLock()

    async def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.conn.they_are_waiting_for_100_continue:
                await self.send(h11.InformationalResponse(status_code=100, headers=[_SERVER]))
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _ClientGone(str(exc)) from None
            self.conn.receive_data(data)

    async def send(self, *events: Any) -> None:
        try:
            data = b"".join(self.conn.send(event) or b"" for event in events)
            with trio.CancelScope(deadline=trio.current_time() + self.write_timeout) as scope:
                async with self._send_lock:
                    await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError) as exc:
            raise _ClientGone(str(exc)) from None
        if scope.cancelled_caught:
            raise _ClientGone(f"the client read nothing for {self.write_timeout:g}s")

    def _finish_request_body(self) -> bool:
        """Consume the rest of the request body if it is already buffered (always so without a
        body); False if some of it is still to come, or the request was malformed: the connection
        must then close."""
        if self.conn.their_state is h11.ERROR:
            return False
        try:
            while self.conn.their_state is h11.SEND_BODY:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    return False
        except h11.RemoteProtocolError:
            return False
        return True

    async def respond(self, response: _Response, *, head_only: bool = False) -> None:
        headers = [_SERVER, *response.headers]
        if not self._finish_request_body():
            # answering before the body was read (404, 413 …): say we close, so that the client
            # does not send its next request on a connection about to go away
            headers.append(("connection", "close"))
        if response.status not in (204, 304) and not any(k.lower() == "content-length" for k, _ in response.headers):
            headers.append(("content-length", str(len(response.body))))
        events: list[Any] = [h11.Response(status_code=response.status, headers=headers,
                                          reason=_reason(response.status))]
        if response.body and not head_only:
            events.append(h11.Data(data=response.body))
        events.append(h11.EndOfMessage())
        await self.send(*events)


@attrs.define
class _Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    content_length: int | None
    chunked: bool

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    @property
    def is_json(self) -> bool:
        return "application/json" in self.headers.get("content-type", "")


def parse_request(event: h11.Request) -> _Request:
    target = event.target.decode("latin-1")
    parts = urlsplit(target)
    headers: dict[str, str] = {}
    for name, value in event.headers:
        key, val = name.decode("latin-1").lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {val}" if key in headers else val
    length = headers.get("content-length")
    return _Request(
        method=event.method.decode("ascii").upper(),
        path=parts.path or "/",
        query=dict(parse_qsl(parts.query, keep_blank_values=True)),
        headers=headers,
        content_length=int(length) if length is not None else None,  # h11 validated it
        chunked="chunked" in headers.get("transfer-encoding", "").lower(),
    )


class HttpFront:
    def __init__(self, config: HttpConfig, router: Router, registry: Registry, invoker: Invoker) -> None:
        self.config = config
        self.router = router
        self.registry = registry
        self.invoker = invoker
        self._connections = trio.CapacityLimiter(config.max_connections)
        self.port: int | None = None

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        except OSError as exc:
            raise EngineError(f"cannot listen on http://{self.config.host}:{self.config.port}: {exc.strerror}",
                              code="http_bind_failed") from exc
        sockname = listeners[0].socket.getsockname()
        self.port = sockname[1]
        log.info("HTTP front listening on http://%s:%d", _host_for_url(sockname[0]), self.port)
        await trio.serve_listeners(self._serve_connection, listeners, task_status=task_status)  # type: ignore[arg-type]

    # --- connections --------------------------------------------------------------------------

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        http = HttpConnection(stream, write_timeout=self.config.body_timeout)
        try:
            self._connections.acquire_on_behalf_of_nowait(http)
        except trio.WouldBlock:
            with trio.move_on_after(1):
                try:
                    await http.respond(json_response(503, "SERVICE_UNAVAILABLE", "too many connections"))
                except _ClientGone:
                    pass
            await trio.aclose_forcefully(stream)
            return
        try:
            await self._connection_loop(http)
        except _ClientGone:
            pass
        except Exception:
            log.exception("HTTP connection failed")
        finally:
            self._connections.release_on_behalf_of(http)
            await trio.aclose_forcefully(stream)

    async def _connection_loop(self, http: HttpConnection) -> None:
        conn = http.conn
        while True:
            # a bare CancelScope: trio's move_on_* helpers go through contextlib, measurable per request
            with trio.CancelScope(deadline=trio.current_time() + self.config.header_timeout) as head_scope:
                try:
                    event = await http.next_event()
                except h11.RemoteProtocolError as exc:
                    await self._bad_request(http, exc)
                    return
            if head_scope.cancelled_caught:
                if conn.their_state is h11.SEND_BODY or conn.trailing_data[0]:
                    await self._safe_respond(http, json_response(408, "REQUEST_TIMEOUT", "request head not received in time"))
                return  # an idle keep-alive connection, or a slow client: dropped
            if isinstance(event, h11.ConnectionClosed):
                return
            assert isinstance(event, h11.Request)
            await self._handle(http, event)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE or conn.our_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _bad_request(self, http: HttpConnection, exc: h11.RemoteProtocolError) -> None:
        status = exc.error_status_hint
        code = "REQUEST_HEADER_FIELDS_TOO_LARGE" if status == 431 else "BAD_REQUEST"
        await self._safe_respond(http, json_response(status, code, f"malformed request: {exc}"))

    async def _safe_respond(self, http: HttpConnection, response: _Response) -> None:
        if http.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                with trio.move_on_after(self.config.body_timeout):
                    await http.respond(response)
            except _ClientGone:
                pass

    # --- one request --------------------------------------------------------------------------

    async def _handle(self, http: HttpConnection, event: h11.Request) -> None:
        request = parse_request(event)
        head_only = request.method == "HEAD"
        found = self.router.resolve(request.method, request.path)
        if found is None:
            await http.respond(json_response(404, "NOT_FOUND", f"no route for {request.method} {request.path}"),
                               head_only=head_only)
            return
        if isinstance(found, MethodNotAllowed):
            allow = ", ".join(found.allowed)
            await http.respond(json_response(405, "METHOD_NOT_ALLOWED",
                                             f"{request.method} is not allowed on {request.path} (allowed: {allow})",
                                             headers=[("allow", allow)]), head_only=head_only)
            return
        limit = self.config.max_body_size
        if request.content_length is not None and request.content_length > limit:
            await http.respond(json_response(413, "PAYLOAD_TOO_LARGE",
                                             f"request body of {request.content_length} bytes exceeds the limit "
                                             f"of {limit} bytes"))
            return  # the body was never read: h11 leaves their state in SEND_BODY, we close
        buffered = not request.has_body or request.is_json or (
            not request.chunked and (request.content_length or 0) <= INLINE_TEXT_LIMIT)
        body_bytes = b""
        if request.has_body and buffered:
            try:
                body_bytes = await self._read_body(http)
            except _TooLarge:
                await http.respond(json_response(413, "PAYLOAD_TOO_LARGE",
                                                 f"request body exceeds the limit of {limit} bytes"))
                return
            except _BodyTimeout:
                await http.respond(json_response(408, "REQUEST_TIMEOUT", "request body not received in time"))
                return
            except h11.RemoteProtocolError as exc:
                await self._bad_request(http, exc)
                return
        data = self._request_data(request, found, body_bytes if buffered else None)
        # one deadline for the condition and the handler together: the response must start in time
        deadline = trio.current_time() + self.config.request_timeout_ms / 1000
        response = await self._check_condition(found, data, deadline)
        if response is None:
            response = await self._invoke(http, request, found, data, body_bytes, deadline, stream_body=not buffered)
        if response is not None:
            await http.respond(response, head_only=head_only)

    async def _body_chunks(self, http: HttpConnection) -> AsyncIterator[bytes]:
        """The request body as it arrives, bounded in size (:class:`_TooLarge`) and in silence
        (:class:`_BodyTimeout`); ends at the end of the body."""
        size = 0
        while True:
            with trio.CancelScope(deadline=trio.current_time() + self.config.body_timeout) as scope:
                event = await http.next_event()
            if scope.cancelled_caught:
                raise _BodyTimeout
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.config.max_body_size:
                    raise _TooLarge
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise _ClientGone(f"unexpected {type(event).__name__} while reading a body")

    async def _read_body(self, http: HttpConnection) -> bytes:
        async with aclosing(self._body_chunks(http)) as chunks:
            return b"".join([chunk async for chunk in chunks])

    def _request_data(self, request: _Request, found: Match, body: bytes | None) -> dict[str, Any]:
        parsed: Any = None
        if body is not None and body:
            if request.is_json:
                try:
                    parsed = orjson.loads(body)
                except orjson.JSONDecodeError:
                    parsed = None
            else:
                try:
                    parsed = body.decode()
                except UnicodeDecodeError:
                    parsed = None
        route = found.route
        return {
            "method": request.method,
            "path": route.pattern,
            "request_path": request.path,
            "path_params": found.params,
            "query_params": request.query,
            "headers": request.headers,
            "body": parsed,
            "trigger": {"type": "http", "path": route.pattern, "method": route.method},
        }

    async def _check_condition(self, found: Match, data: dict[str, Any], deadline: float) -> _Response | None:
        condition = found.route.condition_function_id
        if condition is None:
            return None
        try:
            allowed = await self.invoker.call(condition, data, timeout=max(deadline - trio.current_time(), 0.001))
        except InvocationError as exc:
            return self._error_response(exc.code, f"condition {condition!r} failed: {exc.message}", exc.stacktrace)
        if not allowed:
            return json_response(422, "CONDITION_NOT_MET", f"condition {condition!r} returned {allowed!r}",
                                 skipped=True)
        return None

    def _error_response(self, code: str, message: str, stacktrace: str | None) -> _Response:
        extra = {"stacktrace": stacktrace} if self.config.debug and stacktrace else {}
        return json_response(_STATUS_OF_ERROR.get(code, 500), code, message, **extra)

    async def _invoke(self, http: HttpConnection, request: _Request, found: Match, data: dict[str, Any],
                      body: bytes, deadline: float, *, stream_body: bool) -> _Response | None:
        """Call the function; returns a buffered response, or None once a stream was sent."""
        function_id = found.route.trigger.function_id
        timeout = max(deadline - trio.current_time(), 0.001)
        entry = self.registry.lookup(function_id)
        if entry is None:
            return json_response(503, "function_not_found",
                                 f"route {found.route.method} {found.route.pattern} is bound to function "
                                 f"{function_id!r}, which is not registered")
        if entry.builtin is not None:
            try:
                return render_result(await self.invoker.call(function_id, data, timeout=timeout))
            except InvocationError as exc:
                return self._error_response(exc.code, exc.message, exc.stacktrace)
        session: Session = entry.owner  # type: ignore[assignment]
        body_channel = session.new_channel_id()  # we write it; nothing comes back on it
        response_channel, events = session.open_channel()
        body_ref: dict[str, Any] = {"channel_id": body_channel, "direction": "read"}
        if not stream_body and not body:
            body_ref["eof"] = True  # an empty body: the worker's reader starts at its end, no frame needed
        data["request_body"] = body_ref
        data["response"] = {"channel_id": response_channel, "direction": "write"}
        pending = self.invoker.start_local(entry, data, timeout=timeout, notify=session.channels[response_channel])
        exchange = _Exchange(session, response_channel, events, pending)
        try:
            if not stream_body:
                if body:
                    session.send_nowait(Chunk(body_channel, body))
                    session.send_nowait(ChannelClose(channel_id=body_channel))
                return await self._respond(http, request, exchange, deadline=deadline)
            too_large = trio.CancelScope()  # cancelled by the pump if the body crosses the limit in time
            result = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump_body, http, session, body_channel, too_large)
                with too_large:
                    result = await self._respond(http, request, exchange, deadline=deadline)
                nursery.cancel_scope.cancel()
            if too_large.cancelled_caught:
                return json_response(413, "PAYLOAD_TOO_LARGE",
                                     f"request body exceeds the limit of {self.config.max_body_size} bytes")
            return result
        finally:
            # The handler may still run (504, 413, client gone): make its next write raise
            # instead of waiting forever for window we will never grant.
            exchange.abandon("response_abandoned", "the HTTP front no longer reads this response")
            self.invoker.forget(pending)
            session.close_channel(response_channel)

    async def _pump_body(self, http: HttpConnection, session: Session, channel_id: int,
                         too_large: trio.CancelScope) -> None:
        # if we are cancelled (the response is done: 504, early answer), the handler must not
        # wait for the rest of the body forever
        error: ErrorBody | None = ErrorBody(code="body_abandoned", message="the request body will not be sent")
        try:
            async with aclosing(self._body_chunks(http)) as chunks:
                async for chunk in chunks:
                    session.send_nowait(Chunk(channel_id, chunk))
            error = None
        except _BodyTimeout:
            error = ErrorBody(code="body_timeout", message="the client stopped sending the body")
        except _TooLarge:
            error = ErrorBody(code="payload_too_large",
                              message=f"request body exceeds {self.config.max_body_size} bytes")
            if http.conn.our_state is h11.SEND_RESPONSE:  # no response started yet: 413
                too_large.cancel()
        except (_ClientGone, h11.RemoteProtocolError) as exc:
            error = ErrorBody(code="client_disconnected", message=f"the client went away: {exc}")
        finally:
            session.send_nowait(ChannelClose(channel_id=channel_id, error=error))

    async def _respond(self, http: HttpConnection, request: _Request, exchange: _Exchange, *,
                       deadline: float) -> _Response | None:
        """Wait (until ``deadline``) for the start of the answer; stream it or return it."""
        status = 200
        headers: list[tuple[str, str]] = []
        touched = False  # did the handler use the response channel at all?
        first: bytes | None = None
        with trio.CancelScope(deadline=deadline) as scope:
            async for event in exchange.events:
                match event:
                    case ChannelControl(data={"type": "set_status", "status_code": code}):
                        touched = True
                        try:
                            status = _valid_status(code)
                        except ValueError as exc:
                            return json_response(500, "invalid_response", str(exc))
                    case ChannelControl(data={"type": "set_headers", "headers": value}):
                        touched = True
                        try:
                            headers.extend(_header_list(value))
                        except ValueError as exc:
                            return json_response(500, "invalid_response", str(exc))
                    case Chunk(data=data):
                        first = data
                        break
                    case ChannelClose(error=error):
                        exchange.writer_done = touched = True
                        if error is not None:
                            return self._error_response(error.code, error.message, error.stacktrace)
                    case InvocationResult(error=error, result=result):
                        # a timeout comes from the engine: the handler itself may still run
                        if error is None or error.code != "invocation_timeout":
                            exchange.writer_done = True
                        if error is not None:
                            return self._error_response(error.code, error.message, error.stacktrace)
                        if result is not None:
                            try:
                                return render_result(result)
                            except ValueError as exc:
                                return json_response(500, "invalid_response", f"invalid response: {exc}")
                        return _Response(status if touched else 204, headers, b"")
            else:
                return json_response(502, "invocation_stopped", "the worker went away")
        if scope.cancelled_caught:
            return json_response(504, "invocation_timeout", f"no response within {self.config.request_timeout_ms} ms")
        assert first is not None
        # Streaming has no overall deadline (think SSE); it ends when the handler closes the
        # writer, the worker goes away, or the client does.
        self.invoker.clear_deadline(exchange.pending)
        await self._stream(http, request, exchange, status, headers, first)
        return None

    async def _stream(self, http: HttpConnection, request: _Request, exchange: _Exchange, status: int,
                      headers: list[tuple[str, str]], first: bytes) -> None:
        head_only = request.method == "HEAD"
        try:
            head = [_SERVER, *headers]
            if not http._finish_request_body():  # as respond() does: keep-alive only if the body is read
                head.append(("connection", "close"))
            await http.send(h11.Response(status_code=status, headers=head, reason=_reason(status)))
            await self._forward(http, exchange, first, head_only)
            async for event in exchange.events:
                match event:
                    case Chunk(data=data):
                        await self._forward(http, exchange, data, head_only)
                    case ChannelClose(error=None):
                        exchange.writer_done = True
                        await http.send(h11.EndOfMessage())
                        return
                    case ChannelClose() | InvocationResult(error=ErrorBody()):
                        exchange.writer_done = True
                        break  # the handler failed mid-stream: abort, the client sees a cut body
                    case _:
                        pass
            # worker gone or handler failed: close without the final chunk
            raise _ClientGone("response aborted")
        except _ClientGone:
            exchange.abandon("client_disconnected", "the HTTP client went away")
            raise

    async def _forward(self, http: HttpConnection, exchange: _Exchange, data: bytes, head_only: bool) -> None:
        if not head_only:
            await http.send(h11.Data(data=data))
        exchange.grant(len(data))


@attrs.define(eq=False)
class _Exchange:
    """One call's response channel, as the HTTP front sees it."""

    session: Session
    channel_id: int
    events: trio.MemoryReceiveChannel[Any]
    pending: Pending
    #: the worker will not write on the channel any more (it closed it, or its handler returned)
    writer_done: bool = False

    def grant(self, size: int) -> None:
        self.session.send_nowait(ChannelWindow(channel_id=self.channel_id, size=size))

    def abandon(self, code: str, message: str) -> None:
        """Tell a still-running handler that nobody reads its response: its next write raises."""
        if not self.writer_done:
            self.writer_done = True
            self.session.send_nowait(ChannelClose(channel_id=self.channel_id, error=ErrorBody(code=code, message=message)))


class _TooLarge(Exception):
    pass


class _BodyTimeout(Exception):
    pass


_REASONS = {int(status): status.phrase.encode() for status in HTTPStatus}


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"")


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


__all__ = ["CHANNEL_WINDOW", "HttpFront", "render_result"]
