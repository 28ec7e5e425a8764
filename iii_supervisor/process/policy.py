"""Restart policy: capped exponential backoff. Pure: the clock is passed in, nothing sleeps.

A worker that crashes is restarted after ``initial_delay``, then twice that, four times … up
to ``max_delay``. A run that lasted at least ``reset_after`` seconds counts as healthy and resets
the sequence, so a worker that crashes once a day restarts at once instead of after 30 s, while a
crash loop settles at one attempt every ``max_delay`` seconds and never hammers the machine.

A crash loop does not go on forever either: more than ``max_restarts`` automatic restarts within
``restart_window`` seconds (OTP's restart intensity) make the worker FATAL — see
:class:`RestartTracker`.

Values that would defeat that are refused when the policy is built (the config names them):
``initial_delay`` below :data:`MIN_INITIAL_DELAY` (0 gave 40 spawns a second), ``max_delay`` below
``initial_delay``, ``factor`` below 1 (a shrinking delay), a ``reset_after`` of 0 (every run would
count as healthy), and infinities or NaN anywhere.
"""

from __future__ import annotations

import collections
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
    #: restart intensity (as in OTP): more than ``max_restarts`` automatic restarts within
    #: ``restart_window`` seconds put the worker in state FATAL (no more restarts until asked)
    max_restarts: int = attrs.field(default=5, validator=attrs.validators.ge(0))
    restart_window: float = attrs.field(default=60.0, validator=_positive)
    #: each delay is shortened by up to this fraction, at random, so that workers that crashed
    #: together (a dependency went away) do not all restart in the same instant
    jitter: float = attrs.field(default=0.2, validator=[attrs.validators.ge(0), attrs.validators.le(1)])

    def __attrs_post_init__(self) -> None:
        if self.max_delay < self.initial_delay:
            raise ValueError(f"max_delay ({self.max_delay!r}) must be at least initial_delay ({self.initial_delay!r})")

    def delay(self, failures: int, rand: float = 0.0) -> float:
        """Delay before the restart that follows the ``failures``-th consecutive failure (≥ 1).

        ``rand`` in [0, 1) is the jitter draw (the caller's random number: this stays pure); the
        delay is shortened by ``jitter × rand`` of itself, so it never exceeds ``max_delay``.
        """
        if failures <= 0:
            return 0.0
        # cap the exponent: factor ** 1000 would overflow a float long after max_delay is hit
        try:
            delay = self.initial_delay * self.factor ** min(failures - 1, 64)
        except OverflowError:  # a large factor (1e5 ** 64) still leaves the float range: past max_delay
            delay = math.inf
        return min(self.max_delay, delay) * (1.0 - self.jitter * rand)


@attrs.define
class RestartTracker:
    """Counts consecutive failures of one worker and answers "how long until the next start",
    or ``None``: the restart intensity is exceeded, the worker is FATAL.

    Intensity as in OTP: the times of the automatic restarts of the last ``restart_window``
    seconds are kept (at most ``max_restarts`` + 1 of them); one more than ``max_restarts``
    within the window gives up. Restarts asked for by a person do not count, and
    :meth:`clear` (``restart``/``start`` of a FATAL worker) forgets the history.
    """

    policy: BackoffPolicy
    failures: int = 0
    restarts: int = 0
    recent: collections.deque[float] = attrs.Factory(collections.deque)

    def on_exit(self, *, started_at: float, now: float, rand: float = 0.0) -> float | None:
        """Record an exit of a run started at ``started_at``; return the delay before restarting,
        or None when that restart would exceed the intensity (the worker becomes FATAL)."""
        if now - started_at >= self.policy.reset_after:
            self.failures = 0
        self.failures += 1
        recent = self.recent
        while recent and now - recent[0] >= self.policy.restart_window:
            recent.popleft()
        if len(recent) >= self.policy.max_restarts:
            return None
        recent.append(now)
        self.restarts += 1
        return self.policy.delay(self.failures, rand)

    def clear(self) -> None:
        """Forget the crash history (a person asked for a fresh start)."""
        self.failures = 0
        self.recent.clear()
