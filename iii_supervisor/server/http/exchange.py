"""One HTTP request: route → middleware → condition → middleware → invoke → respond or stream.

For each request:

1. resolve the route (404 / 405 with ``Allow``); refuse a declared body over the limit with 413
   before reading it; run the global middleware (``[http] middleware``), if any, before the
   body is read;
2. run the trigger's condition function, if any (422 ``CONDITION_NOT_MET`` when falsy), then
   the route's ``middleware_function_ids`` in order (each may answer instead of the handler:
   :mod:`.middleware`);
3. call the function on its worker with the request, plus two channel references (from the
   engine's :class:`~iii_supervisor.channels.ChannelTable`): ``request_body`` (we stream the
   body to the worker) and ``response`` (the worker may stream the response back);
4. answer from whichever comes first on the response channel: a returned
   ``{status_code, headers, body}`` (buffered), or ``set_status``/``set_headers`` controls
   followed by body chunks (streamed, each forwarded to the client as it arrives).

Flow control: the worker may send only :data:`~iii_supervisor.protocol.CHANNEL_WINDOW` bytes
ahead; each chunk written to the client is granted back with ``channelwindow``. A slow client
therefore slows the handler down instead of growing the supervisor's memory.

The handler's deadline until its response starts is the invoker's (``request_timeout_ms``, then
504). Once a response is streaming it may last as long as the handler writes (SSE); the client
disconnecting closes the channel, and the handler's next write raises. What can be decided
without I/O — the request's fields, rendering a result, framing — is in :mod:`.messages`.
"""

from __future__ import annotations

import logging
from contextlib import aclosing
from typing import Any

import attrs

try:  # the compiled build of h11, if installed (pip install 'iii-supervisor[fast]')
    import h11_mypyc as h11  # type: ignore[import-not-found]
except ImportError:
    import h11  # type: ignore[no-redef]
import trio

from ...channels import Channel, ChannelPeer, ChannelTable
from ...errors import EngineError
from ...inbox import Inbox
from ...invocation import Invoker, Pending
from ...protocol import ChannelClose, ChannelControl, Chunk, ErrorBody, InvocationResult
from ...registry import Registry
from ...tracing import ensure_traceparent
from .config import HttpConfig
from .connection import BodyTooLarge, ClientGone, HttpConnection
from .messages import (
    LAST_CHUNK,
    NO_BODY_STATUSES,
    Request,
    Response,
    encode_chunk,
    encode_head,
    handler_headers,
    json_response,
    parse_request,
    render_result,
    request_data,
    stream_framing,
    valid_status,
)
from .middleware import BadAnswer, Continue, middleware_input, read_answer
from .routes import Match, MethodNotAllowed, Router

log = logging.getLogger(__name__)

#: HTTP status for an invocation error code.
_STATUS_OF_ERROR = {
    "invocation_timeout": 504,
    "invocation_stopped": 502,
    "function_not_found": 503,
    "worker_overloaded": 503,
    "request_too_large": 413,  # the call (request and its body, as JSON) does not fit in a frame
}

#: Seconds the front waits, after a null result, for the frames of a response channel that
#: travels apart from the result (an iii door worker's channel socket may connect only after
#: its handler returned); once that socket is open, it waits for its end.
APART_GRACE = 0.25

#: Non-JSON bodies up to this size are also handed over inline, as text, in ``body``.
INLINE_TEXT_LIMIT = 64 * 1024


class Exchange:
    """Serves requests for the front: one instance, one :meth:`handle` call per request."""

    def __init__(self, config: HttpConfig, router: Router, registry: Registry, invoker: Invoker,
                 channels: ChannelTable) -> None:
        self.config = config
        self.router = router
        self.registry = registry
        self.invoker = invoker
        self.channels = channels
        #: ``[http] middleware``, in the order they run
        self.global_middleware = config.global_middleware()

    async def handle(self, http: HttpConnection, event: h11.Request) -> None:
        """Answer one request (its head is ``event``)."""
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
        # the client's trace, if it sent one: every call for this request (middleware, condition,
        # handler) is in the same trace
        traceparent = ensure_traceparent(request.headers.get("traceparent"))
        context: dict[str, Any] = {}
        if self.global_middleware:  # before the body is read, as in the reference engine
            response = await self._run_middleware(self.global_middleware, request, found, context,
                                                  trio.current_time() + self.config.request_timeout_ms / 1000,
                                                  traceparent)
            if response is not None:
                await http.respond(response, request)
                return
        buffered = not request.has_body or request.is_json or (
            not request.chunked and (request.content_length or 0) <= INLINE_TEXT_LIMIT)
        body_bytes = b""
        if request.has_body and buffered:
            try:
                body_bytes = await http.read_body(self.config.max_body_size, self.config.body_timeout)
            except BodyTooLarge:
                await http.respond(self._body_too_large(), request)
                return
            except h11.RemoteProtocolError as exc:
                await http.bad_request(exc)
                return
        data = request_data(request, found.route.pattern, found.route.method, found.params,
                            body_bytes if buffered else None)
        # one deadline for the condition and the handler together: the response must start in time
        deadline = trio.current_time() + self.config.request_timeout_ms / 1000
        response = await self._check_condition(found, data, deadline, traceparent)
        if response is None and found.route.middleware_function_ids:
            response = await self._run_middleware(found.route.middleware_function_ids, request, found, context,
                                                  deadline, traceparent)
        if context:
            data["context"] = context
        if response is None:
            response = await self._invoke(http, request, found, data, body_bytes, deadline, stream_body=not buffered,
                                          traceparent=traceparent)
        if response is not None:
            await http.respond(response, request)

    async def _check_condition(self, found: Match, data: dict[str, Any], deadline: float,
                               traceparent: str | None = None) -> Response | None:
        condition = found.route.condition_function_id
        if condition is None:
            return None
        try:
            allowed = await self.invoker.call(condition, data, timeout=max(deadline - trio.current_time(), 0.001),
                                              traceparent=traceparent)
        except EngineError as exc:  # (a module's own error kinds too, not only InvocationError)
            return self._error_response(exc.code, f"condition {condition!r} failed: {exc.message}", exc.stacktrace)
        if not allowed:
            return json_response(422, "CONDITION_NOT_MET", f"condition {condition!r} returned {allowed!r}",
                                 skipped=True)
        return None

    async def _run_middleware(self, function_ids: tuple[str, ...], request: Request, found: Match,
                              context: dict[str, Any], deadline: float, traceparent: str | None) -> Response | None:
        """Call each middleware in turn; the response one of them gives (or its failure), or None
        when all continued. ``context`` collects what they add to it."""
        route = found.route
        for function_id in function_ids:
            # a copy: a built-in middleware gets this very dict, and must not change ours
            if self.registry.lookup(function_id) is None:
                # (looked up here, not inferred from the call's error code, which may also be
                # that of a call the middleware itself made)
                return json_response(503, "function_not_found",
                                     f"route {route.method} {route.pattern} has middleware {function_id!r}, "
                                     f"which is not registered")
            payload = middleware_input(request, route.pattern, found.params, dict(context))
            try:
                answer = await self.invoker.call(function_id, payload,
                                                 timeout=max(deadline - trio.current_time(), 0.001),
                                                 traceparent=traceparent)
            except EngineError as exc:  # (a module's own error kinds too, not only InvocationError)
                if exc.code == "invocation_timeout" and trio.current_time() >= deadline:
                    return json_response(504, "MIDDLEWARE_TIMEOUT",
                                         f"middleware {function_id!r} of route {route.method} {route.pattern} "
                                         f"did not answer within the request's deadline "
                                         f"(http.request_timeout_ms = {self.config.request_timeout_ms})")
                return self._error_response(exc.code, f"middleware {function_id!r} failed: {exc.message}",
                                            exc.stacktrace)
            try:
                decision = read_answer(answer)
            except BadAnswer as exc:
                return json_response(500, "invalid_middleware_response", f"middleware {function_id!r} {exc}")
            if isinstance(decision, Continue):
                context.update(decision.context)
            else:
                return decision.response
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
                result = await self.invoker.call(function_id, data, timeout=timeout, traceparent=traceparent)
            except EngineError as exc:  # (a module's own error kinds too, not only InvocationError)
                return self._error_response(exc.code, exc.message, exc.stacktrace)
            try:
                return render_result(result)
            except ValueError as exc:  # (a bad status or header, a body that is not JSON)
                return json_response(500, "invalid_response", f"invalid response: {exc}")
        worker = entry.owner
        assert worker is not None
        response = self.channels.open_inbound(worker)
        call = _Call(response)
        try:
            body_ref = self.channels.open_outbound(worker, empty=not stream_body and not body)
            data["request_body"] = body_ref.to_wire()
            data["response"] = response.ref().to_wire()
            # the invoker's deadline ends the wait: an invocation_timeout result arrives in the inbox
            call.pending = self.invoker.start_local(entry, data, timeout=timeout, notify=response.inbox,
                                                    traceparent=traceparent)
            if not stream_body:
                if body:
                    response.peer.send_nowait(Chunk(body_ref.channel_id, body))
                    response.peer.send_nowait(ChannelClose(channel_id=body_ref.channel_id))
                return await self._respond(http, request, call)
            too_large = trio.CancelScope()  # cancelled by the pump if the body crosses the limit in time
            result = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump_body, http, response.peer, body_ref.channel_id, too_large)
                with too_large:
                    result = await self._respond(http, request, call)
                nursery.cancel_scope.cancel()
            if too_large.cancelled_caught:
                return self._body_too_large()
            return result
        finally:
            # The handler may still run (504, 413, client gone): make its next write raise
            # instead of waiting forever for window we will never grant.
            response.abandon("response_abandoned", "the HTTP front no longer reads this response")
            if call.pending is not None:
                self.invoker.forget(call.pending)
            response.close()

    async def _pump_body(self, http: HttpConnection, worker: ChannelPeer, channel_id: int,
                         too_large: trio.CancelScope) -> None:
        # if we are cancelled (the response is done: 504, early answer), the handler must not
        # wait for the rest of the body forever
        error: ErrorBody | None = ErrorBody(code="body_abandoned", message="the request body will not be sent")
        try:
            async with aclosing(http.body_chunks(self.config.max_body_size, self.config.body_timeout)) as chunks:
                async for chunk in chunks:
                    worker.send_nowait(Chunk(channel_id, chunk))
                    await trio.lowlevel.checkpoint()  # a fast client must not starve the others
            error = None
        except BodyTooLarge:
            error = ErrorBody(code="payload_too_large",
                              message=f"request body exceeds {self.config.max_body_size} bytes")
            if not http.response_started:  # no response started yet: 413
                too_large.cancel()
        except (ClientGone, h11.RemoteProtocolError) as exc:
            error = ErrorBody(code="client_disconnected", message=f"the client went away: {exc}")
        finally:
            if http.timed_out:
                error = ErrorBody(code="body_timeout", message="the client stopped sending the body")
            worker.send_nowait(ChannelClose(channel_id=channel_id, error=error))

    async def _respond(self, http: HttpConnection, request: Request, call: _Call) -> Response | None:
        """Wait for the start of the answer; stream it or return it."""
        head = Response(200, [])
        touched = False  # did the handler use the response channel at all?
        returned = False  # (a channel apart) its handler returned null: its frames may still come
        channel = call.channel
        inbox = call.inbox
        while True:
            if not inbox and not inbox.closed:
                http.parked = True  # get() waits: other tasks run meanwhile
            try:
                if not returned:
                    event = await inbox.get()
                else:
                    event = None
                    with trio.move_on_after(APART_GRACE):
                        event = await inbox.get()
                    if event is None:  # nothing came: wait on only while the worker's socket is open
                        assert call.pending is not None
                        if channel.writing and trio.current_time() < call.pending.deadline:
                            continue
                        if not touched:
                            head.status = 204
                        return head
            except trio.EndOfChannel:
                return json_response(502, "invocation_stopped", "the worker went away")
            kind = type(event)
            if kind is InvocationResult:
                error = event.error
                # a timeout comes from the engine: the handler itself may still run; a channel
                # apart is left to be closed by its socket, or abandoned by us
                if (error is None or error.code != "invocation_timeout") and not channel.apart:
                    channel.writer_done = True
                if error is not None:
                    return self._error_response(error.code, error.message, error.stacktrace)
                if event.result is not None:
                    try:
                        return render_result(event.result)
                    except ValueError as exc:
                        return json_response(500, "invalid_response", f"invalid response: {exc}")
                if channel.apart and not channel.writer_done:
                    returned = True
                    continue
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
                call.channel.writer_done = touched = True
                error = event.error
                if error is not None:
                    return self._error_response(error.code, error.message, error.stacktrace)
                if returned:
                    return head
        # Streaming has no overall deadline (think SSE); it ends when the handler closes the
        # writer, the worker goes away, or the client does.
        assert call.pending is not None
        self.invoker.clear_deadline(call.pending)
        await self._stream(http, request, call, head, event.data)
        return None

    async def _stream(self, http: HttpConnection, request: Request, call: _Call, head: Response,
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
                raise ClientGone(_broken_length(request, call, f"more than the {length} bytes"))
            if data and not no_body:
                await http.write(encode_chunk(data) if chunked else data)
            call.grant(len(data))

        try:
            http.response_started = True
            http.count(head.status)
            await http.write(encode_head(head, length=length, chunked=chunked, close=close))
            await forward(first)
            while True:
                try:
                    event = await call.inbox.get()
                except trio.EndOfChannel:
                    break  # the worker went away
                kind = type(event)
                if kind is Chunk:
                    await forward(event.data)
                elif kind is ChannelClose or (kind is InvocationResult and event.error is not None):
                    call.channel.writer_done = True
                    if kind is ChannelClose and event.error is None:
                        if length is not None and sent < length and not no_body:
                            raise ClientGone(_broken_length(request, call, f"{sent} of the {length} bytes"))
                        if chunked and not no_body:
                            await http.write(LAST_CHUNK)
                        return
                    break  # the handler failed mid-stream: abort, the client sees a cut body
            raise ClientGone("response aborted")
        except ClientGone:
            call.abandon("client_disconnected", "the HTTP client went away")
            raise



@attrs.define(eq=False)
class _Call:
    """One call to a worker: its pending entry and the channel its response arrives on."""

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


def _broken_length(request: Request, call: _Call, wrote: str) -> str:
    message = (f"{request.method} {request.path}: function {call.function_id!r} wrote {wrote} "
               f"its content-length declared; connection cut")
    log.warning("%s", message)
    return message
