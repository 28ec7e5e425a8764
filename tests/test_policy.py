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


#: backoff alone, without the restart intensity getting in the way
NO_LIMIT = {"max_restarts": 10**6}


def test_consecutive_quick_crashes_grow_the_delay() -> None:
    tracker = RestartTracker(BackoffPolicy(**NO_LIMIT))
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
    tracker = RestartTracker(BackoffPolicy(reset_after=10.0, **NO_LIMIT))
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
    tracker = RestartTracker(BackoffPolicy(initial_delay=0.5, max_delay=30.0, factor=2.0, reset_after=10.0, **NO_LIMIT))
    now = 1000.0
    for step, (run_duration, expected) in enumerate(RESTART_STEPS):
        started_at = now
        now += run_duration
        delay = tracker.on_exit(started_at=started_at, now=now)
        assert delay == expected, f"step {step}: run of {run_duration}s gave {delay}, expected {expected}"
        now += delay
    assert tracker.restarts == len(RESTART_STEPS)


# --- restart intensity (FATAL) -------------------------------------------------------------------


def test_more_than_max_restarts_within_the_window_is_fatal() -> None:
    tracker = RestartTracker(BackoffPolicy(initial_delay=1.0, factor=1.0, max_restarts=3, restart_window=60.0))
    assert [tracker.on_exit(started_at=t, now=t + 0.1) for t in (0.0, 2.0, 4.0)] == [1.0, 1.0, 1.0]
    assert tracker.on_exit(started_at=6.0, now=6.1) is None  # the 4th restart within 60 s: give up
    assert tracker.restarts == 3  # the refused one is not a restart


def test_restarts_spread_wider_than_the_window_go_on_forever() -> None:
    tracker = RestartTracker(BackoffPolicy(initial_delay=1.0, factor=1.0, max_restarts=3, restart_window=10.0))
    now = 0.0
    for _ in range(100):  # one crash every 4 s: never more than 3 in 10 s
        assert tracker.on_exit(started_at=now, now=now + 3.0) is not None
        now += 4.0
    assert tracker.restarts == 100
    assert len(tracker.recent) <= 3  # bounded memory


def test_the_window_slides() -> None:
    tracker = RestartTracker(BackoffPolicy(initial_delay=1.0, factor=1.0, max_restarts=2, restart_window=10.0))
    assert tracker.on_exit(started_at=0, now=1) is not None
    assert tracker.on_exit(started_at=2, now=3) is not None
    assert tracker.on_exit(started_at=4, now=5) is None  # 3 within 10 s
    # exactly restart_window after the first one it has left the window
    assert tracker.on_exit(started_at=10, now=11) is not None


def test_clear_forgets_the_history() -> None:
    tracker = RestartTracker(BackoffPolicy(initial_delay=1.0, factor=2.0, max_restarts=1, restart_window=60.0))
    assert tracker.on_exit(started_at=0, now=0.1) == 1.0
    assert tracker.on_exit(started_at=1, now=1.1) is None
    tracker.clear()
    assert tracker.on_exit(started_at=2, now=2.1) == 1.0  # backoff starts over too
    assert tracker.restarts == 2


def test_max_restarts_zero_makes_the_first_crash_fatal() -> None:
    tracker = RestartTracker(BackoffPolicy(max_restarts=0))
    assert tracker.on_exit(started_at=0, now=100) is None


def test_default_intensity_lets_a_crash_loop_run_about_half_a_minute() -> None:
    # instant crashes with the default backoff: 0.5 + 1 + 2 + 4 + 8 = 15.5 s of restarts, then FATAL
    tracker = RestartTracker(BackoffPolicy())
    now, delays = 0.0, []
    while (delay := tracker.on_exit(started_at=now, now=now)) is not None:
        delays.append(delay)
        now += delay
    assert delays == [0.5, 1, 2, 4, 8]
    assert now == 15.5


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_restarts": -1}, "max_restarts"),
    ({"restart_window": 0}, "restart_window must be a finite number > 0"),
])
def test_intensity_settings_are_validated(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BackoffPolicy(**kwargs)


def test_delays_are_jittered_downwards_and_stay_capped() -> None:
    policy = BackoffPolicy(initial_delay=1.0, max_delay=8.0, factor=2.0, jitter=0.25)
    assert policy.delay(3) == 4.0  # no draw: the plain schedule
    assert policy.delay(3, rand=0.5) == 3.5
    assert policy.delay(3, rand=0.999) > 3.0
    assert all(policy.delay(10, rand=r / 10) <= 8.0 for r in range(10))  # capped whatever the draw
    tracker = RestartTracker(BackoffPolicy(initial_delay=1.0, jitter=0.5, max_restarts=100))
    assert tracker.on_exit(started_at=0.0, now=0.1, rand=1.0 - 1e-9) == pytest.approx(0.5)


def test_jitter_out_of_range_is_refused() -> None:
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="jitter"):
            BackoffPolicy(jitter=bad)
