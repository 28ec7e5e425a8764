"""Restart policy: capped exponential backoff. Pure: the clock is passed in, nothing sleeps.

A worker that crashes is restarted after ``initial_delay``, then twice that, four times … up
to ``max_delay``. A run that lasted at least ``reset_after`` seconds counts as healthy and resets
the sequence, so a worker that crashes once a day restarts at once instead of after 30 s, while a
crash loop settles at one attempt every ``max_delay`` seconds and never hammers the machine.

Values that would defeat that are refused when the policy is built (the config names them):
``initial_delay`` below :data:`MIN_INITIAL_DELAY` (0 gave 40 spawns a second), ``max_delay`` below
``initial_delay``, ``factor`` below 1 (a shrinking delay), a ``reset_after`` of 0 (every run would
count as healthy), and infinities or NaN anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs

#: The shortest first restart delay accepted, in seconds (systemd's default ``RestartSec``): at
#: most 10 spawns a second for a worker that dies at once, even with ``factor = 1``.
MIN_INITIAL_DELAY = 0.1


def _at_least(minimum: float, why: str = "") -> Callable[[Any, attrs.Attribute[float], float], None]:
    def check(_inst: Any, attribute: attrs.Attribute[float], value: float) -> None:
        if not math.isfinite(value):
            raise ValueError(f"{attribute.name} must be a finite number of seconds, got {value!r}")
        if value < minimum:
            raise ValueError(f"{attribute.name} must be at least {minimum:g}{why}, got {value!r}")
    return check


def _positive(_inst: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class BackoffPolicy:
    initial_delay: float = attrs.field(default=0.5, validator=_at_least(MIN_INITIAL_DELAY))
    max_delay: float = attrs.field(default=30.0, validator=_at_least(MIN_INITIAL_DELAY))
    factor: float = attrs.field(default=2.0, validator=_at_least(1, " (1 keeps the delay constant)"))
    reset_after: float = attrs.field(default=10.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.max_delay < self.initial_delay:
            raise ValueError(f"max_delay ({self.max_delay!r}) must be at least initial_delay ({self.initial_delay!r})")

    def delay(self, failures: int) -> float:
        """Delay before the restart that follows the ``failures``-th consecutive failure (≥ 1)."""
        if failures <= 0:
            return 0.0
        # cap the exponent: factor ** 1000 would overflow a float long after max_delay is hit
        try:
            delay = self.initial_delay * self.factor ** min(failures - 1, 64)
        except OverflowError:  # a large factor (1e5 ** 64) still leaves the float range: past max_delay
            delay = math.inf
        return min(self.max_delay, delay)


@attrs.define
class RestartTracker:
    """Counts consecutive failures of one worker and answers "how long until the next start"."""

    policy: BackoffPolicy
    failures: int = 0
    restarts: int = 0

    def on_exit(self, *, started_at: float, now: float) -> float:
        """Record an exit of a run started at ``started_at``; return the delay before restarting."""
        if now - started_at >= self.policy.reset_after:
            self.failures = 0
        self.failures += 1
        self.restarts += 1
        return self.policy.delay(self.failures)
