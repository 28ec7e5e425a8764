"""The metrics module: a Prometheus endpoint (``GET /metrics``) on its own address, off by default.

    [metrics]
    enabled = true
    host = "127.0.0.1"
    port = 9464          # 0 picks a free port (logged at start)

Like every module it reaches the engine only through the invoker: a scrape calls the built-ins
``engine::invocations::stats`` (calls, errors by code, durations per function),
``engine::workers::list`` (state, restarts, RSS, CPU, calls in flight per worker) and
``engine::http::stats`` (responses by status) — each answers at once from plain data on the trio
loop — and turns their answers into metric families. The text exposition is rendered by
``prometheus_client`` in a worker thread, so a scrape never holds the loop for longer than the
built-ins take; a separate port keeps ``/metrics`` out of the routes of ``http`` triggers and off
the public address. The HTTP side is h11, one request per connection, bounded (a request head of
at most 8 KiB within 5 s; 16 scrapes at once).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import attrs
import h11
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from ..config import positive
from ..errors import EngineError, InvocationError
from ..invocation import Invoker
from .base import ModuleContext, ModuleSpec

log = logging.getLogger(__name__)

_WORKER_STATES = ("starting", "running", "backoff", "stopping", "stopped", "fatal", "attached")
_MAX_HEAD = 8192
_HEAD_TIMEOUT = 5.0
_MAX_SCRAPES = 16


@attrs.frozen(kw_only=True)
class MetricsConfig:
    """The ``[metrics]`` config section."""

    #: Serve ``/metrics`` (off by default).
    enabled: bool = False
    host: str = "127.0.0.1"
    #: 0 picks a free port (logged at start).
    port: int = attrs.field(default=9464, validator=[attrs.validators.ge(0), attrs.validators.le(65535)])
    #: Seconds a scrape may take to collect its figures.
    scrape_timeout: float = attrs.field(default=10.0, validator=positive)


class _Snapshot(Collector):
    """The figures of one scrape as metric families (built on the loop, rendered in a thread)."""

    def __init__(self, invocations: dict[str, Any], workers: list[dict[str, Any]], http: dict[str, Any] | None):
        self.invocations, self.workers, self.http = invocations, workers, http

    def collect(self) -> Iterator[Any]:
        calls = CounterMetricFamily("iii_invocations", "Calls routed to worker functions", labels=["function_id"])
        errors = CounterMetricFamily("iii_invocation_errors", "Calls that ended with an error",
                                     labels=["function_id", "code"])
        duration = HistogramMetricFamily("iii_invocation_duration_seconds", "Time from routing a call to its answer",
                                         labels=["function_id"])
        bounds = self.invocations.get("buckets", [])
        for function_id, s in sorted(self.invocations.get("functions", {}).items()):
            calls.add_metric([function_id], s["calls"])
            for code, n in sorted(s["errors"].items()):
                errors.add_metric([function_id, code], n)
            cumulative, buckets = 0, []
            for bound, n in zip([*map(str, bounds), "+Inf"], s["buckets"], strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            duration.add_metric([function_id], buckets, s["seconds"])
        yield from (calls, errors, duration)

        restarts = CounterMetricFamily("iii_worker_restarts", "Restarts of each worker", labels=["worker"])
        state = GaugeMetricFamily("iii_worker_state", "1 for the state each worker is in", labels=["worker", "state"])
        rss = GaugeMetricFamily("iii_worker_rss_bytes", "Resident memory of each worker process", labels=["worker"])
        cpu = GaugeMetricFamily("iii_worker_cpu_percent", "CPU use of each worker since the previous sample",
                                labels=["worker"])
        in_flight = GaugeMetricFamily("iii_worker_in_flight", "Calls each worker is executing", labels=["worker"])
        for w in self.workers:
            name = w["name"]
            if w["restarts"] is not None:  # (an attached iii-door worker has none: it is not ours to restart)
                restarts.add_metric([name], w["restarts"])
            for s in _WORKER_STATES:
                state.add_metric([name, s], 1.0 if w["state"] == s else 0.0)
            if w.get("rss_bytes") is not None:
                rss.add_metric([name], w["rss_bytes"])
            if w.get("cpu_percent") is not None:
                cpu.add_metric([name], w["cpu_percent"])
            in_flight.add_metric([name], w.get("in_flight", 0))
        yield from (restarts, state, rss, cpu, in_flight)

        if self.http is not None:
            responses = CounterMetricFamily("iii_http_responses", "HTTP responses sent by the front, by status",
                                            labels=["status"])
            for status, n in self.http.get("responses", {}).items():
                responses.add_metric([status], n)
            yield responses


def render(invocations: dict[str, Any], workers: list[dict[str, Any]], http: dict[str, Any] | None) -> bytes:
    """The Prometheus text exposition of one scrape's figures (blocking: run it in a thread)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(invocations, workers, http))
    return generate_latest(registry)


class MetricsModule:
    def __init__(self, config: MetricsConfig, invoker: Invoker) -> None:
        self.config = config
        self.invoker = invoker
        self.port: int | None = None
        self._render_limiter = trio.CapacityLimiter(1)
        self._slots = trio.CapacityLimiter(_MAX_SCRAPES)

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        if not self.config.enabled:
            task_status.started()
            return
        try:
            listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        except OSError as exc:
            raise EngineError(f"cannot listen on http://{self.config.host}:{self.config.port} for metrics: "
                              f"{exc.strerror}", code="metrics_bind_failed") from exc
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._serve, listeners)
            log.info("metrics on http://%s:%d/metrics", self.config.host, self.port)
            task_status.started(self.port)

    async def scrape(self) -> bytes:
        with trio.fail_after(self.config.scrape_timeout):
            invocations = await self.invoker.call("engine::invocations::stats")
            workers = (await self.invoker.call("engine::workers::list"))["workers"]
            try:
                http = await self.invoker.call("engine::http::stats")
            except InvocationError:  # no HTTP front in this engine
                http = None
        return await trio.to_thread.run_sync(render, invocations, workers, http, limiter=self._render_limiter)

    async def _serve(self, stream: trio.SocketStream) -> None:
        async with stream, self._slots:
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
            try:
                with trio.fail_after(_HEAD_TIMEOUT):
                    event = conn.next_event()
                    while event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(4096))
                        event = conn.next_event()
            except (h11.RemoteProtocolError, trio.TooSlowError, trio.BrokenResourceError):
                return
            if not isinstance(event, h11.Request):
                return
            if event.method not in (b"GET", b"HEAD") or event.target.split(b"?")[0] != b"/metrics":
                status, body, ctype = 404, b"only GET /metrics here\n", "text/plain; charset=utf-8"
            else:
                try:
                    status, body, ctype = 200, await self.scrape(), CONTENT_TYPE_LATEST
                except (trio.TooSlowError, EngineError) as exc:
                    log.warning("metrics scrape failed: %s", exc)
                    status, body, ctype = 503, b"scrape failed\n", "text/plain; charset=utf-8"
            headers = [("content-type", ctype), ("content-length", str(len(body))), ("connection", "close")]
            try:
                data = conn.send(h11.Response(status_code=status, headers=headers)) or b""
                if event.method != b"HEAD":
                    data += conn.send(h11.Data(data=body)) or b""
                data += conn.send(h11.EndOfMessage()) or b""
                with trio.move_on_after(_HEAD_TIMEOUT):
                    await stream.send_all(data)
            except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass


def build(context: ModuleContext, config: MetricsConfig) -> MetricsModule:
    return MetricsModule(config, context.invoker)


SPEC = ModuleSpec(
    name="metrics",
    section="metrics",
    config_type=MetricsConfig,
    build=build,
)
