"""The HTTP front: h11 over trio, serving the routes of ``http`` triggers.

One task per connection, one request at a time per connection (HTTP/1.1 keep-alive, and
pipelining: h11 buffers what a client sends ahead). For each request:

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
reads (``body_timeout``), writes to a client that does not read (``body_timeout``), and the
handler until the response starts (``request_timeout_ms``, then 504, from the invoker's
deadline). Once a response is streaming it may last as long as the handler writes (SSE); the
client disconnecting closes the channel, and the handler's next write raises.

Cost per request (measured, see docs/performance.md) shaped this module: h11 parses, responses
are serialised by :mod:`.messages`; the socket is a :class:`~iii_supervisor.plainsocket.PlainSocket`
(a ``recv``/``send`` that can complete does so without a trip through trio's scheduler); read
deadlines are one float per connection checked by one timer task (:meth:`HttpFront._expire_reads`)
instead of a cancel scope per read; the answer arrives in an :class:`~iii_supervisor.inbox.Inbox`.
A request therefore parks its task twice (for the request, for the answer) and nowhere else.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncGenerator
from contextlib import aclosing
from http import HTTPStatus
from typing import Any

import attrs
import orjson

try:  # the compiled build of h11, if installed (pip install 'iii-supervisor[fast]')
    import h11_mypyc as h11  # type: ignore[import-not-found]
except ImportError:
    import h11  # type: ignore[no-redef]
import trio

from ...errors import EngineError, InvocationError
from ...inbox import Inbox
from ...invocation import Invoker, Pending
from ...plainsocket import PlainSocket
from ...protocol import (
    CHANNEL_WINDOW,
    ChannelClose,
    ChannelControl,
    ChannelWindow,
    Chunk,
    ErrorBody,
    InvocationResult,
)
from ...channels import Channel, ChannelPeer, ChannelTable
from ...registry import Registry, TriggerTypeEntry
from ...tracing import ensure_traceparent
from .config import HttpConfig
from .messages import (
    CONTINUE,
    LAST_CHUNK,
    NO_BODY_STATUSES,
    Request,
    Response,
    encode_chunk,
    encode_head,
    encode_response,
    handler_headers,
    json_response,
    parse_request,
    render_result,
    stream_framing,
    valid_status,
)
from .routes import HttpTriggerProvider, Match, MethodNotAllowed, Router

log = logging.getLogger(__name__)

RECEIVE_SIZE = 64 * 1024
MAX_HEAD_SIZE = 64 * 1024
#: Non-JSON bodies up to this size are also handed over inline, as text, in ``body``.
INLINE_TEXT_LIMIT = 64 * 1024

#: HTTP status for an invocation error code.
_STATUS_OF_ERROR = {
    "invocation_timeout": 504,
    "invocation_stopped": 502,
    "function_not_found": 503,
    "worker_overloaded": 503,
    "request_too_large": 413,  # the call (request and its body, as JSON) does not fit in a frame
}


class _ClientGone(Exception):
    """The client closed the connection or broke the protocol; nothing more can be sent."""


class _TooLarge(Exception):
    pass


def _new_parser() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_SIZE)


class HttpConnection:
    """One client: h11 parses what it sends, our own writes answer it.

    The h11 connection is replaced for every request (its unread bytes carried over): h11 tracks
    responses only through its own send path, which we do not use (see :mod:`.messages`).
    """

    def __init__(self, sock: PlainSocket, *, write_timeout: float) -> None:
        self.sock = sock
        #: a client that reads nothing for this long while we write is dropped
        self.write_timeout = write_timeout
        self.parser = _new_parser()
        #: covers the whole connection; cancelled when a read deadline passes (see HttpFront)
        self.scope = trio.CancelScope()
        #: when the read in progress (request head or body) times out; inf when not reading
        self.read_deadline = math.inf
        self.timed_out = False
        #: bytes of the response to the current request went out
        self.response_started = False
        #: the connection ends after the current response
        self.must_close = False
        #: the current request declared no body / has been read to its end
        self.bodiless = False
        self.request_done = False
        #: the current request waited for its answer (the task yielded to others)
        self.parked = False
        self._continue_sent = False
        #: a write is waiting for the socket: later writes queue behind it (keeps the order)
        self._write_lock = trio.StrictFIFOLock()
        self._writing = False

    def expire(self) -> None:
        self.timed_out = True
        self.scope.cancel()

    def next_cycle(self) -> None:
        data, closed = self.parser.trailing_data
        self.parser = parser = _new_parser()
        if data:
            parser.receive_data(data)
        if closed:
            parser.receive_data(b"")
        self.response_started = self._continue_sent = self.bodiless = self.request_done = False

    # --- reading --------------------------------------------------------------------------

    async def next_event(self, timeout: float) -> Any:
        """The next h11 event; waits at most ``timeout`` seconds for each piece of data."""
        parser = self.parser
        while True:
            event = parser.next_event()
            if event is not h11.NEED_DATA:
                return event
            if parser.they_are_waiting_for_100_continue and not (self._continue_sent or self.response_started):
                self._continue_sent = True
                await self.write(CONTINUE)
            self.read_deadline = trio.current_time() + timeout
            try:
                data = await self._receive()
            finally:
                self.read_deadline = math.inf
            parser.receive_data(data)

    async def _receive(self) -> bytes:
        try:
            return await self.sock.receive_some(RECEIVE_SIZE)
        except (OSError, trio.ClosedResourceError) as exc:
            raise _ClientGone(str(exc)) from None

    def finish_request_body(self) -> bool:
        """Consume the rest of the request body if it is already buffered (always so without a
        body); False if some of it is still to come, or the request was malformed: the connection
        must then close."""
        if self.request_done:
            return True
        parser = self.parser
        if parser.their_state is h11.ERROR:
            return False
        if self.bodiless:
            # h11's EndOfMessage would consume no bytes; asking for it costs ~13 µs per request
            self.request_done = True
            return True
        try:
            while parser.their_state is h11.SEND_BODY:
                if parser.next_event() is h11.NEED_DATA:
                    return False
        except h11.RemoteProtocolError:
            return False
        self.request_done = True
        return True

    # --- writing --------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        if not self._writing:  # as much as the socket takes, now, without a checkpoint
            try:
                sent = self.sock.send_now(data)
            except OSError as exc:
                raise _ClientGone(str(exc)) from None
            if sent == len(data):
                return
            data = memoryview(data)[sent:]  # type: ignore[assignment]
        self._writing = True  # before the lock: acquiring it may let another task run
        try:
            async with self._write_lock:
                await self._write_slowly(memoryview(data))
        finally:
            self._writing = self._write_lock.locked()  # handed over to a queued writer, or free

    async def _write_slowly(self, view: memoryview) -> None:
        with trio.CancelScope(deadline=trio.current_time() + self.write_timeout) as scope:
            try:
                await self.sock.send_rest(view)
            except (OSError, trio.ClosedResourceError) as exc:
                raise _ClientGone(str(exc)) from None
        if scope.cancelled_caught:
            raise _ClientGone(f"the client read nothing for {self.write_timeout:g}s")

    async def respond(self, response: Response, request: Request | None) -> None:
        """Send a buffered response. Closes after it unless the request was read to its end
        and both sides allow keep-alive."""
        close = (request is None or not request.keep_alive or response.close
                 or not self.finish_request_body())
        self.must_close = self.must_close or close
        self.response_started = True
        await self.write(encode_response(response, head_only=request is not None and request.head_only,
                                         close=close))


class HttpFront:
    """The HTTP module: serves the routes of ``http`` triggers."""

    def __init__(self, config: HttpConfig, registry: Registry, invoker: Invoker, channels: ChannelTable) -> None:
        self.config = config
        self.router = Router()
        self.registry = registry
        self.invoker = invoker
        self.channels = channels
        self.port: int | None = None
        self._live: set[HttpConnection] = set()
        self._some_live = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        self.registry.add_trigger_type(TriggerTypeEntry("http", "HTTP requests to config.api_path",
                                                        HttpTriggerProvider(self.router)))
        try:
            listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        except OSError as exc:
            raise EngineError(f"cannot listen on http://{self.config.host}:{self.config.port}: {exc.strerror}",
                              code="http_bind_failed") from exc
        sockname = listeners[0].socket.getsockname()
        self.port = sockname[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(self._expire_reads)
            await nursery.start(trio.serve_listeners, self._serve_connection, listeners)
            log.info("HTTP front listening on http://%s:%d", _host_for_url(sockname[0]), self.port)
            task_status.started(self.port)

    async def _expire_reads(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """End connections whose read deadline passed: one timer for all of them.

        A cancel scope per read cost ~17 µs per request; a deadline checked every ``tick``
        costs a float per read, and the timeouts fire up to one tick late. No connections, no
        wake-ups.
        """
        tick = min(max(min(self.config.header_timeout, self.config.body_timeout) / 10, 0.01), 0.5)
        task_status.started()
        while True:
            if not self._live:
                self._some_live = trio.Event()
                await self._some_live.wait()
            await trio.sleep(tick)
            now = trio.current_time()
            for http in self._live:
                if http.read_deadline <= now:
                    http.expire()

    # --- connections --------------------------------------------------------------------------

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        http = HttpConnection(PlainSocket.take(stream), write_timeout=self.config.body_timeout)
        try:
            if len(self._live) >= self.config.max_connections:
                with trio.move_on_after(1):
                    await http.respond(json_response(503, "SERVICE_UNAVAILABLE", "too many connections"), None)
                return
            self._live.add(http)
            self._some_live.set()
            with http.scope:
                await self._connection_loop(http)
            if http.timed_out and not http.response_started and (
                    http.parser.their_state is h11.SEND_BODY or http.parser.trailing_data[0]):
                await self._safe_respond(http, json_response(408, "REQUEST_TIMEOUT", "request not received in time"))
            # else: an idle keep-alive connection, or a client gone silent mid-response: dropped
        except _ClientGone:
            pass
        except Exception:
            log.exception("HTTP connection failed")
        finally:
            self._live.discard(http)
            http.sock.close()

    async def _connection_loop(self, http: HttpConnection) -> None:
        while True:
            http.sock.waited = http.parked = False
            try:
                event = await http.next_event(self.config.header_timeout)
            except h11.RemoteProtocolError as exc:
                await self._bad_request(http, exc)
                return
            if type(event) is not h11.Request:
                return  # ConnectionClosed
            await self._handle(http, event)
            if not (http.sock.waited or http.parked):
                # answered without ever waiting (a buffered request answered 404, say): yield
                # once, so that a client that never pauses cannot starve the other connections
                await trio.lowlevel.checkpoint()
            if http.must_close or not http.finish_request_body():
                return
            http.next_cycle()

    async def _bad_request(self, http: HttpConnection, exc: h11.RemoteProtocolError) -> None:
        status = exc.error_status_hint  # 400, 431 (head too large), 501 (unknown transfer-encoding)
        code = HTTPStatus(status).phrase.upper().replace(" ", "_")  # BAD_REQUEST, NOT_IMPLEMENTED …
        await self._safe_respond(http, json_response(status, code, f"malformed request: {exc}"))

    async def _safe_respond(self, http: HttpConnection, response: Response) -> None:
        if not http.response_started:
            try:
                with trio.move_on_after(self.config.body_timeout):
                    await http.respond(response, None)
            except _ClientGone:
                pass

    # --- one request --------------------------------------------------------------------------

    async def _handle(self, http: HttpConnection, event: h11.Request) -> None:
        request = parse_request(event.method, event.target, event.headers, event.http_version)
        http.bodiless = not request.has_body
        found = self.router.resolve(request.method, request.path)
        if found is None:
            await http.respond(json_response(404, "NOT_FOUND", f"no route for {request.method} {request.path}"),
                               request)
            return
        if isinstance(found, MethodNotAllowed):
            allow = ", ".join(found.allowed)
            await http.respond(json_response(405, "METHOD_NOT_ALLOWED",
                                             f"{request.method} is not allowed on {request.path} (allowed: {allow})",
                                             headers=[("allow", allow)]), request)
            return
        limit = self.config.max_body_size
        if request.content_length is not None and request.content_length > limit:
            await http.respond(json_response(413, "PAYLOAD_TOO_LARGE",
                                             f"request body of {request.content_length} bytes exceeds the limit "
                                             f"of {limit} bytes"), request)
            return  # the body was never read: respond() closes the connection
        buffered = not request.has_body or request.is_json or (
            not request.chunked and (request.content_length or 0) <= INLINE_TEXT_LIMIT)
        body_bytes = b""
        if request.has_body and buffered:
            try:
                body_bytes = await self._read_body(http)
            except _TooLarge:
                await http.respond(self._body_too_large(), request)
                return
            except h11.RemoteProtocolError as exc:
                await self._bad_request(http, exc)
                return
        data = self._request_data(request, found, body_bytes if buffered else None)
        # one deadline for the condition and the handler together: the response must start in time
        deadline = trio.current_time() + self.config.request_timeout_ms / 1000
        traceparent = ensure_traceparent(request.headers.get("traceparent"))  # the client's trace, if it sent one
        response = await self._check_condition(found, data, deadline, traceparent)
        if response is None:
            response = await self._invoke(http, request, found, data, body_bytes, deadline, stream_body=not buffered,
                                          traceparent=traceparent)
        if response is not None:
            await http.respond(response, request)

    async def _body_chunks(self, http: HttpConnection) -> AsyncGenerator[bytes, None]:
        """The request body as it arrives, bounded in size (:class:`_TooLarge`); a silence of
        ``body_timeout`` ends the connection."""
        size = 0
        while True:
            event = await http.next_event(self.config.body_timeout)
            if type(event) is h11.Data:
                size += len(event.data)
                if size > self.config.max_body_size:
                    raise _TooLarge
                yield bytes(event.data)
            elif type(event) is h11.EndOfMessage:
                return
            else:
                raise _ClientGone(f"unexpected {type(event).__name__} while reading a body")

    async def _read_body(self, http: HttpConnection) -> bytes:
        async with aclosing(self._body_chunks(http)) as chunks:
            return b"".join([chunk async for chunk in chunks])

    def _request_data(self, request: Request, found: Match, body: bytes | None) -> dict[str, Any]:
        parsed: Any = None
        if body:
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

    async def _check_condition(self, found: Match, data: dict[str, Any], deadline: float,
                               traceparent: str | None = None) -> Response | None:
        condition = found.route.condition_function_id
        if condition is None:
            return None
        try:
            allowed = await self.invoker.call(condition, data, timeout=max(deadline - trio.current_time(), 0.001),
                                              traceparent=traceparent)
        except InvocationError as exc:
            return self._error_response(exc.code, f"condition {condition!r} failed: {exc.message}", exc.stacktrace)
        if not allowed:
            return json_response(422, "CONDITION_NOT_MET", f"condition {condition!r} returned {allowed!r}",
                                 skipped=True)
        return None

    def _body_too_large(self) -> Response:
        """413 for a body that crossed the limit while it was read (a declared one is refused before)."""
        return json_response(413, "PAYLOAD_TOO_LARGE",
                             f"request body exceeds the limit of {self.config.max_body_size} bytes")

    def _error_response(self, code: str, message: str, stacktrace: str | None) -> Response:
        extra: dict[str, Any] = {"stacktrace": stacktrace} if self.config.debug and stacktrace else {}
        return json_response(_STATUS_OF_ERROR.get(code, 500), code, message, **extra)

    async def _invoke(self, http: HttpConnection, request: Request, found: Match, data: dict[str, Any],
                      body: bytes, deadline: float, *, stream_body: bool,
                      traceparent: str | None = None) -> Response | None:
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
                return render_result(await self.invoker.call(function_id, data, timeout=timeout, traceparent=traceparent))
            except InvocationError as exc:
                return self._error_response(exc.code, exc.message, exc.stacktrace)
        worker = entry.owner
        assert worker is not None
        response = self.channels.open_inbound(worker)
        exchange = _Exchange(response)
        try:
            body_ref = self.channels.open_outbound(worker, empty=not stream_body and not body)
            data["request_body"] = body_ref.to_wire()
            data["response"] = response.ref().to_wire()
            # the invoker's deadline ends the wait: an invocation_timeout result arrives in the inbox
            exchange.pending = self.invoker.start_local(entry, data, timeout=timeout, notify=response.inbox,
                                                        traceparent=traceparent)
            if not stream_body:
                if body:
                    response.peer.send_nowait(Chunk(body_ref.channel_id, body))
                    response.peer.send_nowait(ChannelClose(channel_id=body_ref.channel_id))
                return await self._respond(http, request, exchange)
            too_large = trio.CancelScope()  # cancelled by the pump if the body crosses the limit in time
            result = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump_body, http, response.peer, body_ref.channel_id, too_large)
                with too_large:
                    result = await self._respond(http, request, exchange)
                nursery.cancel_scope.cancel()
            if too_large.cancelled_caught:
                return self._body_too_large()
            return result
        finally:
            # The handler may still run (504, 413, client gone): make its next write raise
            # instead of waiting forever for window we will never grant.
            response.abandon("response_abandoned", "the HTTP front no longer reads this response")
            if exchange.pending is not None:
                self.invoker.forget(exchange.pending)
            response.close()

    async def _pump_body(self, http: HttpConnection, worker: ChannelPeer, channel_id: int,
                         too_large: trio.CancelScope) -> None:
        # if we are cancelled (the response is done: 504, early answer), the handler must not
        # wait for the rest of the body forever
        error: ErrorBody | None = ErrorBody(code="body_abandoned", message="the request body will not be sent")
        try:
            async with aclosing(self._body_chunks(http)) as chunks:
                async for chunk in chunks:
                    worker.send_nowait(Chunk(channel_id, chunk))
                    await trio.lowlevel.checkpoint()  # a fast client must not starve the others
            error = None
        except _TooLarge:
            error = ErrorBody(code="payload_too_large",
                              message=f"request body exceeds {self.config.max_body_size} bytes")
            if not http.response_started:  # no response started yet: 413
                too_large.cancel()
        except (_ClientGone, h11.RemoteProtocolError) as exc:
            error = ErrorBody(code="client_disconnected", message=f"the client went away: {exc}")
        finally:
            if http.timed_out:
                error = ErrorBody(code="body_timeout", message="the client stopped sending the body")
            worker.send_nowait(ChannelClose(channel_id=channel_id, error=error))

    async def _respond(self, http: HttpConnection, request: Request, exchange: _Exchange) -> Response | None:
        """Wait for the start of the answer; stream it or return it."""
        head = Response(200, [])
        touched = False  # did the handler use the response channel at all?
        inbox = exchange.inbox
        while True:
            if not inbox and not inbox.closed:
                http.parked = True  # get() waits: other tasks run meanwhile
            try:
                event = await inbox.get()
            except trio.EndOfChannel:
                return json_response(502, "invocation_stopped", "the worker went away")
            kind = type(event)
            if kind is InvocationResult:
                error = event.error
                # a timeout comes from the engine: the handler itself may still run
                if error is None or error.code != "invocation_timeout":
                    exchange.channel.writer_done = True
                if error is not None:
                    return self._error_response(error.code, error.message, error.stacktrace)
                if event.result is not None:
                    try:
                        return render_result(event.result)
                    except ValueError as exc:
                        return json_response(500, "invalid_response", f"invalid response: {exc}")
                if not touched:
                    head.status = 204
                return head
            if kind is Chunk:
                break
            if kind is ChannelControl:
                touched = True
                control = event.data
                try:
                    if control.get("type") == "set_status":
                        head.status = valid_status(control.get("status_code"))
                    elif control.get("type") == "set_headers":
                        handler_headers(control.get("headers"), head)
                except ValueError as exc:
                    return json_response(500, "invalid_response", str(exc))
            elif kind is ChannelClose:
                exchange.channel.writer_done = touched = True
                error = event.error
                if error is not None:
                    return self._error_response(error.code, error.message, error.stacktrace)
        # Streaming has no overall deadline (think SSE); it ends when the handler closes the
        # writer, the worker goes away, or the client does.
        assert exchange.pending is not None
        self.invoker.clear_deadline(exchange.pending)
        await self._stream(http, request, exchange, head, event.data)
        return None

    async def _stream(self, http: HttpConnection, request: Request, exchange: _Exchange, head: Response,
                      first: bytes) -> None:
        no_body = request.head_only or head.status in NO_BODY_STATUSES
        length, chunked, close_delimited = stream_framing(head, request)
        # keep-alive only if the request body is read and the body's end can be told without closing
        close = not request.keep_alive or head.close or not http.finish_request_body() or close_delimited
        http.must_close = http.must_close or close
        sent = 0

        async def forward(data: bytes) -> None:
            nonlocal sent
            sent += len(data)
            if length is not None and sent > length:
                raise _ClientGone(_broken_length(request, exchange, f"more than the {length} bytes"))
            if data and not no_body:
                await http.write(encode_chunk(data) if chunked else data)
            exchange.grant(len(data))

        try:
            http.response_started = True
            await http.write(encode_head(head, length=length, chunked=chunked, close=close))
            await forward(first)
            while True:
                try:
                    event = await exchange.inbox.get()
                except trio.EndOfChannel:
                    break  # the worker went away
                kind = type(event)
                if kind is Chunk:
                    await forward(event.data)
                elif kind is ChannelClose or (kind is InvocationResult and event.error is not None):
                    exchange.channel.writer_done = True
                    if kind is ChannelClose and event.error is None:
                        if length is not None and sent < length and not no_body:
                            raise _ClientGone(_broken_length(request, exchange, f"{sent} of the {length} bytes"))
                        if chunked and not no_body:
                            await http.write(LAST_CHUNK)
                        return
                    break  # the handler failed mid-stream: abort, the client sees a cut body
            raise _ClientGone("response aborted")
        except _ClientGone:
            exchange.abandon("client_disconnected", "the HTTP client went away")
            raise


@attrs.define(eq=False)
class _Exchange:
    """One call's response channel, as the HTTP front sees it."""

    channel: Channel
    pending: Pending | None = None

    @property
    def inbox(self) -> Inbox[Any]:
        return self.channel.inbox

    @property
    def function_id(self) -> str:
        return self.pending.function_id if self.pending is not None else "?"

    def grant(self, size: int) -> None:
        self.channel.grant(size)

    def abandon(self, code: str, message: str) -> None:
        self.channel.abandon(code, message)


def _broken_length(request: Request, exchange: _Exchange, wrote: str) -> str:
    message = (f"{request.method} {request.path}: function {exchange.function_id!r} wrote {wrote} "
               f"its content-length declared; connection cut")
    log.warning("%s", message)
    return message


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


__all__ = ["CHANNEL_WINDOW", "HttpFront", "render_result"]
