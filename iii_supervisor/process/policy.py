"""Restart policy: capped exponential backoff. Pure: the clock is passed in, nothing sleeps.

A worker that crashes is restarted after ``initial_delay``, then twice that, four times … up
to ``max_delay``. A run that lasted at least ``reset_after`` seconds counts as healthy and resets
the sequence, so a worker that crashes once a day restarts at once instead of after 30 s, while a
crash loop settles at one attempt every ``max_delay`` seconds and never hammers the machine.
"""

from __future__ import annotations

import math

import attrs


@attrs.frozen(kw_only=True)
class BackoffPolicy:
    initial_delay: float = attrs.field(default=0.5, validator=attrs.validators.ge(0))
    max_delay: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    factor: float = attrs.field(default=2.0, validator=attrs.validators.ge(1))
    reset_after: float = attrs.field(default=10.0, validator=attrs.validators.ge(0))

    def delay(self, failures: int) -> float:
        """Delay before the restart that follows the ``failures``-th consecutive failure (≥ 1)."""
        if failures <= 0:
            return 0.0
        # cap the exponent: factor ** 1000 would overflow a float long after max_delay is hit
        try:
            delay = self.initial_delay * self.factor ** min(failures - 1, 64)
        except OverflowError:  # a large factor (1e5 ** 64) still leaves the float range: past max_delay
            delay = math.inf if self.initial_delay > 0 else 0.0
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
