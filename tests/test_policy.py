"""Pure unit tests of the restart policy (iii_supervisor.process.policy). No clock, no trio."""

from __future__ import annotations

import math

import pytest

from iii_supervisor.process.policy import BackoffPolicy, RestartTracker

# --- BackoffPolicy.delay ---------------------------------------------------------------------


def test_default_delay_sequence_doubles_then_caps() -> None:
    policy = BackoffPolicy()
    assert [policy.delay(n) for n in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_delay_before_first_failure_is_zero() -> None:
    policy = BackoffPolicy()
    assert policy.delay(0) == 0.0
    assert policy.delay(-3) == 0.0


def test_delay_is_capped_at_custom_max_delay() -> None:
    policy = BackoffPolicy(initial_delay=1.0, max_delay=5.0)
    assert [policy.delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]


def test_factor_one_keeps_constant_delay() -> None:
    policy = BackoffPolicy(initial_delay=0.5, factor=1)
    assert {policy.delay(n) for n in (1, 2, 3, 50, 10**6)} == {0.5}


def test_custom_factor() -> None:
    policy = BackoffPolicy(initial_delay=1.0, factor=3.0, max_delay=100.0)
    assert [policy.delay(n) for n in range(1, 7)] == [1, 3, 9, 27, 81, 100]


@pytest.mark.parametrize("failures", [65, 1000, 10**6, 10**18, 2**200])
def test_huge_failure_counts_do_not_overflow(failures: int) -> None:
    policy = BackoffPolicy()
    delay = policy.delay(failures)
    assert delay == 30.0
    assert math.isfinite(delay)


@pytest.mark.parametrize("factor", [1e5, 1e10, 1e300])
def test_huge_factor_does_not_overflow(factor: float) -> None:
    # factor ** 64 is beyond the float range for these: the delay must still be max_delay
    policy = BackoffPolicy(factor=factor, max_delay=60.0)
    assert policy.delay(2) == 60.0
    assert policy.delay(100) == 60.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial_delay": -0.1}, "initial_delay must be at least 0.1, got -0.1"),
        ({"initial_delay": 0}, "initial_delay must be at least 0.1, got 0"),  # 0 gave 40 spawns/s
        ({"initial_delay": 0.001}, "initial_delay must be at least 0.1, got 0.001"),
        ({"initial_delay": math.nan}, "initial_delay must be a finite number of seconds, got nan"),
        ({"max_delay": -1}, "max_delay must be at least 0.1, got -1"),
        ({"max_delay": math.inf}, "max_delay must be a finite number of seconds, got inf"),
        ({"reset_after": -5}, "reset_after must be a finite number > 0, got -5"),
        ({"reset_after": 0}, "reset_after must be a finite number > 0, got 0"),  # every run "healthy"
        ({"reset_after": math.inf}, "reset_after must be a finite number > 0, got inf"),
        ({"factor": 0.5}, r"factor must be at least 1 \(1 keeps the delay constant\), got 0.5"),
        ({"factor": -2}, "factor must be at least 1"),
        ({"factor": math.inf}, "factor must be a finite number"),
        ({"initial_delay": 5.0, "max_delay": 1.0}, r"max_delay \(1.0\) must be at least initial_delay \(5.0\)"),
        ({"initial_delay": 60.0}, r"max_delay \(30.0\) must be at least initial_delay \(60.0\)"),  # default cap
    ],
)
def test_validators_reject_bad_values(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BackoffPolicy(**kwargs)


def test_validators_accept_boundaries() -> None:
    policy = BackoffPolicy(initial_delay=0.1, max_delay=0.1, factor=1, reset_after=0.001)
    assert policy.delay(5) == 0.1
    assert BackoffPolicy(initial_delay=30.0, max_delay=30.0).delay(3) == 30.0


# --- RestartTracker ----------------------------------------------------------------------------


def _exit(tracker: RestartTracker, now: float, run_duration: float) -> float:
    return tracker.on_exit(started_at=now - run_duration, now=now)


def test_consecutive_quick_crashes_grow_the_delay() -> None:
    tracker = RestartTracker(BackoffPolicy())
    delays = [_exit(tracker, 100.0 + i, 0.1) for i in range(8)]
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert tracker.failures == 8


def test_long_run_resets_to_initial_delay() -> None:
    tracker = RestartTracker(BackoffPolicy(reset_after=10.0))
    for i in range(5):
        _exit(tracker, float(i), 0.1)
    assert tracker.failures == 5
    # a run of exactly reset_after counts as healthy
    assert _exit(tracker, 100.0, 10.0) == 0.5
    assert tracker.failures == 1
    assert _exit(tracker, 101.0, 0.2) == 1.0


def test_run_just_below_reset_after_does_not_reset() -> None:
    tracker = RestartTracker(BackoffPolicy(reset_after=10.0))
    _exit(tracker, 0.0, 1.0)
    _exit(tracker, 1.0, 1.0)
    assert _exit(tracker, 50.0, 9.99) == 2.0


def test_restarts_counts_every_exit() -> None:
    tracker = RestartTracker(BackoffPolicy(reset_after=10.0))
    durations = [0.1, 0.1, 20.0, 0.1, 3600.0, 0.1]
    for i, d in enumerate(durations):
        _exit(tracker, 10_000.0 + i, d)
    assert tracker.restarts == len(durations)
    assert tracker.failures == 2  # the last healthy run reset the streak, then one crash


# One table: (how long the run lasted, delay expected before the next start).
RESTART_STEPS: list[tuple[float, float]] = [
    (0.2, 0.5),    # first crash
    (0.2, 1.0),
    (1.0, 2.0),
    (9.9, 4.0),    # still below reset_after
    (0.0, 8.0),
    (0.1, 16.0),
    (0.1, 30.0),   # capped
    (0.1, 30.0),
    (10.0, 0.5),   # healthy run (== reset_after): sequence restarts
    (0.3, 1.0),
    (500.0, 0.5),  # healthy again
    (500.0, 0.5),  # crash after a long run every time: always restarts quickly
    (0.1, 1.0),
]


def test_restart_delay_table() -> None:
    tracker = RestartTracker(BackoffPolicy(initial_delay=0.5, max_delay=30.0, factor=2.0, reset_after=10.0))
    now = 1000.0
    for step, (run_duration, expected) in enumerate(RESTART_STEPS):
        started_at = now
        now += run_duration
        delay = tracker.on_exit(started_at=started_at, now=now)
        assert delay == expected, f"step {step}: run of {run_duration}s gave {delay}, expected {expected}"
        now += delay
    assert tracker.restarts == len(RESTART_STEPS)
