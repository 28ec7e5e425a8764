"""Counters the engine keeps for ``/metrics``: calls per function, errors per code, durations.

Pure and cheap (a dict lookup, a bisect and three additions per call: the routing path pays for
it on every call), and bounded: at most :data:`MAX_FUNCTIONS` function ids are counted apart,
the rest under ``"(other)"``. Read with :meth:`InvocationStats.snapshot` (plain data, for the
``engine::invocations::stats`` built-in that the metrics module calls).
"""

from __future__ import annotations

import bisect
from typing import Any

#: histogram bucket upper bounds, in seconds (prometheus_client's defaults)
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
MAX_FUNCTIONS = 10_000
OTHER = "(other)"


class _Function:
    __slots__ = ("calls", "errors", "buckets", "seconds")

    def __init__(self) -> None:
        self.calls = 0
        self.errors: dict[str, int] = {}
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one: above the largest bound
        self.seconds = 0.0


class InvocationStats:
    def __init__(self) -> None:
        self._functions: dict[str, _Function] = {}

    def record(self, function_id: str, error_code: str | None, seconds: float) -> None:
        stats = self._functions.get(function_id)
        if stats is None:
            if len(self._functions) >= MAX_FUNCTIONS:
                function_id = OTHER
                stats = self._functions.get(OTHER)
            if stats is None:
                stats = self._functions[function_id] = _Function()
        stats.calls += 1
        if error_code is not None:
            stats.errors[error_code] = stats.errors.get(error_code, 0) + 1
        stats.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        stats.seconds += seconds

    def snapshot(self) -> dict[str, Any]:
        """``{"buckets": [...], "functions": {id: {calls, errors: {code: n}, buckets: [...], seconds}}}``
        (``buckets`` per function are not cumulative; the last one counts calls above every bound)."""
        return {"buckets": list(BUCKETS), "functions": {
            fid: {"calls": s.calls, "errors": dict(s.errors), "buckets": list(s.buckets), "seconds": s.seconds}
            for fid, s in self._functions.items()}}
