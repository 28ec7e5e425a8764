"""Worker resource usage: RSS and CPU sampled with psutil in one thread, and the ``max_rss`` rule.

psutil reads ``/proc`` with blocking system calls, so sampling never runs on the trio loop: the
pool hands the pids to :meth:`Sampler.sample` in a worker thread (one at a time, through a
limiter of 1) every ``[supervisor] sample_interval`` seconds, and ``status`` reads the cached
figures. The decision "restart this worker" is pure (:func:`over_limit`): a worker whose RSS stays
above its ``max_rss`` for :data:`SAMPLES_OVER` samples in a row is restarted gracefully, so one
short spike (a big request being parsed) does not cost a restart.
"""

from __future__ import annotations

import re
from typing import Any

import attrs
import psutil

#: consecutive samples above ``max_rss`` before the worker is restarted
SAMPLES_OVER = 2

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*\Z")


def parse_size(value: Any) -> int | None:
    """``512 * 2**20``, ``"512MiB"``, ``"1.5G"`` → bytes; None stays None. Raises ValueError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"max_rss must be a number of bytes or a string such as '512MiB', got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(f"max_rss {value!r} is not a size (examples: 536870912, '512MiB', '2G')")
        size = int(float(match.group(1)) * _UNITS[unit])
    if size < 1024 * 1024:
        raise ValueError(f"max_rss must be at least 1MiB, got {value!r}")
    return size


@attrs.frozen
class Sample:
    rss: int
    cpu_percent: float


def over_limit(previous: int, rss: int | None, limit: int | None) -> int:
    """How many samples in a row the RSS has been above ``limit``, counting this one."""
    if limit is None or rss is None or rss <= limit:
        return 0
    return previous + 1


class Sampler:
    """Keeps one ``psutil.Process`` per pid (CPU % is measured between two calls). Thread-side:
    call :meth:`sample` from the one sampling thread only."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def sample(self, pids: set[int]) -> dict[int, Sample]:
        for gone in set(self._procs) - pids:
            del self._procs[gone]
        samples = {}
        for pid in pids:
            try:
                proc = self._procs.get(pid)
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                with proc.oneshot():
                    samples[pid] = Sample(int(proc.memory_info().rss), proc.cpu_percent(None))
            except (psutil.Error, OSError):
                self._procs.pop(pid, None)
        return samples
