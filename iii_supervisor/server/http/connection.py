"""One HTTP client connection: its socket I/O, h11's parse of what it sends, our writes.

h11 parses everything the client sends; responses are serialised by :mod:`.messages` (h11's
send path cost more than its parse). Since h11 learns about responses only through that path,
the h11 connection is replaced for every request, carrying over the unread bytes — which is
what pipelining needs.

Reads and writes are plain non-blocking socket calls (:class:`~iii_supervisor.plainsocket.PlainSocket`):
one that can complete does so without a trip through trio's scheduler. A read has a deadline —
the whole request head must arrive within ``header_timeout`` (a total: a client sending one
byte every few seconds does not keep it open), a body may pause at most ``body_timeout`` — kept
as one number per connection and served by the front's :class:`~iii_supervisor.deadlines.Deadlines`
timer, which cancels :attr:`HttpConnection.scope` when it passes. Writes to a client that reads
nothing for ``write_timeout`` end the connection.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from http import HTTPStatus
from typing import Any

try:  # the compiled build of h11, if installed (pip install 'iii-supervisor[fast]')
    import h11_mypyc as h11  # type: ignore[import-not-found]
except ImportError:
    import h11  # type: ignore[no-redef]
import trio

from ...plainsocket import PlainSocket
from .messages import CONTINUE, Request, Response, encode_response, json_response

RECEIVE_SIZE = 64 * 1024
MAX_HEAD_SIZE = 64 * 1024


class ClientGone(Exception):
    """The client closed the connection or broke the protocol; nothing more can be sent."""


class BodyTooLarge(Exception):
    """The request body crossed the size limit while it was read."""


def _new_parser() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_SIZE)


class HttpConnection:
    """One client: h11 parses what it sends, our own writes answer it.

    The h11 connection is replaced for every request (its unread bytes carried over): h11 tracks
    responses only through its own send path, which we do not use (see :mod:`.messages`).
    """

    def __init__(self, sock: PlainSocket, *, write_timeout: float,
                 arm: Callable[[float, HttpConnection], None]) -> None:
        self.sock = sock
        #: registers a read deadline with the front's timer
        self._arm = arm
        #: the last deadline registered with the timer (its one current heap entry, even between reads)
        self.armed = math.inf
        #: a client that reads nothing for this long while we write is dropped
        self.write_timeout = write_timeout
        #: the front's count of responses by status (None: not counted)
        self.statuses: dict[int, int] | None = None
        self.parser = _new_parser()
        #: covers the whole connection; cancelled when a read deadline passes
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

    def expire(self, when: float) -> None:
        """The front's timer: the read deadline ``when`` passed (ignored if a later read set another)."""
        if self.read_deadline == when:
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

    async def next_event(self, *, deadline: float | None = None, idle: float | None = None) -> Any:
        """The next h11 event. Waits until ``deadline`` (absolute, for the whole event), or at most
        ``idle`` seconds for each piece of data."""
        parser = self.parser
        while True:
            event = parser.next_event()
            if event is not h11.NEED_DATA:
                return event
            if parser.they_are_waiting_for_100_continue and not (self._continue_sent or self.response_started):
                self._continue_sent = True
                await self.write(CONTINUE)
            when = deadline if deadline is not None else trio.current_time() + (idle or 0.0)
            self.read_deadline = when
            if when != self.armed:  # one heap entry per deadline, not one per read of a trickled head
                self.armed = when
                self._arm(when, self)
            try:
                data = await self._receive()
            finally:
                self.read_deadline = math.inf
            parser.receive_data(data)

    async def _receive(self) -> bytes:
        try:
            return await self.sock.receive_some(RECEIVE_SIZE)
        except (OSError, trio.ClosedResourceError) as exc:
            raise ClientGone(str(exc)) from None

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
                raise ClientGone(str(exc)) from None
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
                raise ClientGone(str(exc)) from None
        if scope.cancelled_caught:
            raise ClientGone(f"the client read nothing for {self.write_timeout:g}s")

    async def respond(self, response: Response, request: Request | None) -> None:
        """Send a buffered response. Closes after it unless the request was read to its end
        and both sides allow keep-alive."""
        close = (request is None or not request.keep_alive or response.close
                 or not self.finish_request_body())
        self.must_close = self.must_close or close
        self.response_started = True
        self.count(response.status)
        await self.write(encode_response(response, head_only=request is not None and request.head_only,
                                         close=close))

    def count(self, status: int) -> None:
        if self.statuses is not None:
            self.statuses[status] = self.statuses.get(status, 0) + 1

    # --- bodies and errors -------------------------------------------------------------------

    async def body_chunks(self, limit: int, idle: float) -> AsyncGenerator[bytes, None]:
        """The request body as it arrives, at most ``limit`` bytes (then :class:`BodyTooLarge`);
        a silence of ``idle`` seconds ends the connection."""
        size = 0
        while True:
            event = await self.next_event(idle=idle)
            if type(event) is h11.Data:
                size += len(event.data)
                if size > limit:
                    raise BodyTooLarge
                yield bytes(event.data)
            elif type(event) is h11.EndOfMessage:
                return
            else:
                raise ClientGone(f"unexpected {type(event).__name__} while reading a body")

    async def read_body(self, limit: int, idle: float) -> bytes:
        async with aclosing(self.body_chunks(limit, idle)) as chunks:
            return b"".join([chunk async for chunk in chunks])

    async def bad_request(self, exc: h11.RemoteProtocolError) -> None:
        status = exc.error_status_hint  # 400, 431 (head too large), 501 (unknown transfer-encoding)
        code = HTTPStatus(status).phrase.upper().replace(" ", "_")  # BAD_REQUEST, NOT_IMPLEMENTED …
        await self.respond_if_possible(json_response(status, code, f"malformed request: {exc}"))

    async def respond_if_possible(self, response: Response) -> None:
        """Best effort, before any response started: a client that does not read is dropped."""
        if not self.response_started:
            try:
                with trio.move_on_after(self.write_timeout):
                    await self.respond(response, None)
            except ClientGone:
                pass
