"""The HTTP front: listens, limits connections, times reads out, and hands requests to the exchange.

One task per connection, one request at a time per connection (HTTP/1.1 keep-alive, and
pipelining: h11 buffers what a client sends ahead). The pieces:

- :mod:`.connection` — one client's socket I/O and h11 parse (:class:`HttpConnection`);
- :mod:`.exchange` — one request, from route to response (:class:`Exchange`);
- this file — the listener, the connection limits (in all and per client address, each refusal
  answered 503 and logged at a bounded rate), and the one timer that ends reads whose deadline
  passed (a :class:`~iii_supervisor.deadlines.Deadlines` heap, as the invoker uses for calls).

Every wait is bounded: request heads (``header_timeout``, a total for the whole head, also the
keep-alive idle time), body reads (``body_timeout`` of silence), writes to a client that does not
read (``body_timeout``), and the handler until its response starts (``request_timeout_ms``).

Cost per request (measured, see docs/performance.md) shaped this: the socket calls complete
without the scheduler when they can; a read deadline is a float and a heap push, not a cancel
scope; the answer arrives in an :class:`~iii_supervisor.inbox.Inbox`. A request parks its task
twice (for the request, for the answer) and nowhere else.
"""

from __future__ import annotations

import logging
import math

try:  # the compiled build of h11, if installed (pip install 'iii-supervisor[fast]')
    import h11_mypyc as h11  # type: ignore[import-not-found]
except ImportError:
    import h11  # type: ignore[no-redef]
import trio

from ...channels import ChannelTable
from ...deadlines import Deadlines
from ...errors import EngineError
from ...invocation import Invoker
from ...plainsocket import PlainSocket
from ...ratelimit import RateLimitedLog
from ...registry import Registry, TriggerTypeEntry
from .config import HttpConfig
from .connection import ClientGone, HttpConnection
from .exchange import Exchange
from .messages import json_response
from .routes import HttpTriggerProvider, Router

log = logging.getLogger(__name__)

#: refused connections are logged at most once per this many seconds (then a count)
REFUSAL_LOG_INTERVAL = 10.0


class HttpFront:
    """The HTTP module: serves the routes of ``http`` triggers."""

    def __init__(self, config: HttpConfig, registry: Registry, invoker: Invoker, channels: ChannelTable) -> None:
        self.config = config
        self.router = Router()
        self.registry = registry
        self.exchange = Exchange(config, self.router, registry, invoker, channels)
        self.port: int | None = None
        self._live = 0
        #: open connections by client address (only addresses with some)
        self._per_client: dict[str, int] = {}
        self._timer: Deadlines[HttpConnection] = Deadlines(_expire_read, _read_current)
        self._refused = RateLimitedLog(log, REFUSAL_LOG_INTERVAL)
        #: responses sent, by status code (``engine::http::stats``, for /metrics)
        self.statuses: dict[int, int] = {}

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        self.registry.add_trigger_type(TriggerTypeEntry("http", "HTTP requests to config.api_path",
                                                        HttpTriggerProvider(self.router)))
        self.registry.add_builtin("engine::http::stats", self._stats, "HTTP responses sent, by status code")
        try:
            listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        except OSError as exc:
            raise EngineError(f"cannot listen on http://{self.config.host}:{self.config.port}: {exc.strerror}",
                              code="http_bind_failed") from exc
        sockname = listeners[0].socket.getsockname()
        self.port = sockname[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(self._timer.run)
            await nursery.start(self._refused.run)
            await nursery.start(trio.serve_listeners, self._serve_connection, listeners)
            log.info("HTTP front listening on http://%s:%d", _host_for_url(sockname[0]), self.port)
            task_status.started(self.port)

    async def _stats(self, _data: object) -> dict[str, object]:
        return {"responses": {str(status): n for status, n in sorted(self.statuses.items())}}

    # --- connections --------------------------------------------------------------------------

    def _refusal(self, client: str) -> str | None:
        """Why a new connection from ``client`` is refused, or None."""
        if self._live >= self.config.max_connections:
            return f"{self._live} connections are open (http.max_connections)"
        if self._per_client.get(client, 0) >= self.config.max_connections_per_client:
            return (f"{self._per_client[client]} connections from {client} are open "
                    f"(http.max_connections_per_client)")
        return None

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        client = _client_address(stream)
        http = HttpConnection(PlainSocket.take(stream), write_timeout=self.config.body_timeout, arm=self._timer.add)
        http.statuses = self.statuses
        try:
            refusal = self._refusal(client)
            if refusal is not None:
                self._refused.warning("HTTP connections refused", "HTTP: refused a connection from %s: %s",
                                      client, refusal)
                with trio.move_on_after(1):
                    await http.respond(json_response(503, "SERVICE_UNAVAILABLE", "too many connections"), None)
                return
            self._live += 1
            self._per_client[client] = self._per_client.get(client, 0) + 1
            try:
                with http.scope:
                    await self._connection_loop(http)
            finally:
                self._live -= 1
                if self._per_client[client] == 1:
                    del self._per_client[client]
                else:
                    self._per_client[client] -= 1
            if http.timed_out and not http.response_started and (
                    http.parser.their_state is h11.SEND_BODY or http.parser.trailing_data[0]):
                await http.respond_if_possible(json_response(408, "REQUEST_TIMEOUT", "request not received in time"))
            # else: an idle keep-alive connection, or a client gone silent mid-response: dropped
        except ClientGone:
            pass
        except Exception:
            log.exception("HTTP connection failed")
        finally:
            http.armed = math.inf  # its heap entry is stale now: compaction may drop it
            http.sock.close()

    async def _connection_loop(self, http: HttpConnection) -> None:
        while True:
            http.sock.waited = http.parked = False
            try:
                # the whole head within header_timeout: trickling it byte by byte does not help
                event = await http.next_event(deadline=trio.current_time() + self.config.header_timeout)
            except h11.RemoteProtocolError as exc:
                await http.bad_request(exc)
                return
            if type(event) is not h11.Request:
                return  # ConnectionClosed
            await self.exchange.handle(http, event)
            if not (http.sock.waited or http.parked):
                # answered without ever waiting (a buffered request answered 404, say): yield
                # once, so that a client that never pauses cannot starve the other connections
                await trio.lowlevel.checkpoint()
            if http.must_close or not http.finish_request_body():
                return
            http.next_cycle()


def _expire_read(http: HttpConnection, when: float) -> None:
    http.expire(when)


def _read_current(http: HttpConnection, when: float) -> bool:
    # the entry the connection armed last is current even while it is between two reads; older
    # ones are not (one live entry per connection, so the heap stays near the connection count)
    return http.armed == when


def _client_address(stream: trio.SocketStream) -> str:
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return "?"
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host
