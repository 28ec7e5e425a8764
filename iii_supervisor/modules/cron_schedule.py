"""Pure cron logic: trigger configs, next ticks across time zones and DST, catch-up decisions.

No trio and no I/O: every function takes the times it needs (epoch seconds, UTC), so the
scheduler in :mod:`.cron` and the tests give it whatever clock they like.

Expressions are parsed by croniter. Field counts (``expression.split()``):

- 5: ``min hour dom month dow`` (the crontab form the iii documentation shows);
- 6: ``sec min hour dom month dow`` — **seconds first, as in the iii reference engine**.
  croniter's own default puts seconds *last*; we pass ``second_at_beginning=True``;
- 7: ``sec min hour dom month dow year`` (the reference's optional trailing year);
- a shortcut: ``@yearly`` ``@annually`` ``@monthly`` ``@weekly`` ``@daily`` ``@midnight`` ``@hourly``.

Time zones and DST (see docs/cron.md): an expression is matched against the *wall clock* of the
job's zone. A wall time that does not exist (spring forward) fires once, at the end of the gap;
a wall time that occurs twice (fall back) fires once, at its first occurrence — unless the hour
field is ``*``, in which case the job follows elapsed time and fires in both passes (cronie's
rule: ``*/15 * * * *`` keeps running every 15 minutes, ``30 2 * * *`` runs once that night).
"""

from __future__ import annotations

import heapq
import math
from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from croniter import CroniterBadDateError, CroniterError, croniter

from ..errors import TriggerRegistrationError
from ..trigger_config import condition_function_id
from ..trigger_config import short as _quote

SHORTCUTS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_FIELDS = {
    5: ("minute", "hour", "day of month", "month", "day of week"),
    6: ("second", "minute", "hour", "day of month", "month", "day of week"),
    7: ("second", "minute", "hour", "day of month", "month", "day of week", "year"),
}
CONFIG_KEYS = ("expression", "timezone", "timeout_ms", "persistent", "condition_function_id")
#: longer expressions are refused (the parsed ones are cached: their size must be bounded)
MAX_EXPRESSION = 1024
#: a job that matches no date in this many years is refused (Feb 30, a past year)
_MAX_YEARS = 50


def _fail(expression: Any, problem: str) -> TriggerRegistrationError:
    return TriggerRegistrationError(f"cron expression {_quote(expression)}: {problem}")


@lru_cache(maxsize=4096)
def _iterator(expression: str, seconds_first: bool) -> croniter:
    """One croniter per distinct expression, shared (it is re-positioned before every use)."""
    return croniter(expression, 0.0, ret_type=float, second_at_beginning=seconds_first,
                    max_years_between_matches=_MAX_YEARS)


def _bad_field(expression: str, fields: list[str]) -> str | None:
    """Which field croniter refuses, found by parsing each one alone (only on the error path)."""
    names = _FIELDS[len(fields)]
    for i, value in enumerate(fields):
        probe = ["*"] * len(fields)
        probe[i] = value
        if i == 6:  # a year alone needs the others fixed to be checked (croniter rejects "* … *")
            probe[:6] = ["0", "0", "0", "1", "1", "*"]
        try:
            croniter(" ".join(probe), 0.0, second_at_beginning=len(fields) > 5)
        except CroniterError as exc:
            return f"the {names[i]} field {_quote(value, 40)} is invalid ({exc})"
    return None


@attrs.frozen
class Schedule:
    """A parsed expression in a time zone. :meth:`next_after` gives the tick after an instant."""

    expression: str
    timezone: str
    tz: tzinfo
    seconds_first: bool
    #: the hour field is ``*``: in a repeated (fall-back) hour the job fires in both passes
    every_hour: bool

    @classmethod
    def parse(cls, expression: Any, timezone: Any = None, *, now: float) -> Schedule:
        """Parse and check ``expression``; raises :class:`TriggerRegistrationError` naming what is wrong."""
        if not isinstance(expression, str) or not expression.strip():
            raise TriggerRegistrationError(f"a cron trigger needs config.expression (a non-empty string), "
                                           f"got {_quote(expression)}")
        if len(expression) > MAX_EXPRESSION:
            raise _fail(expression, f"is {len(expression)} characters long; at most {MAX_EXPRESSION}")
        text = " ".join(expression.split())
        fields = text.split(" ")
        if text.startswith("@"):
            if text.lower() not in SHORTCUTS:
                raise _fail(expression, f"unknown shortcut; use one of {', '.join(SHORTCUTS)}")
            text = text.lower()
        elif len(fields) not in _FIELDS:
            raise _fail(expression, f"has {len(fields)} field(s); expected 5 (min hour dom month dow), "
                                    f"6 (sec min hour dom month dow: seconds first, as in iii), "
                                    f"7 (… year) or a shortcut (@hourly, @daily …)")
        tz, tz_name = _zone(timezone)
        seconds_first = len(fields) > 5
        try:
            it = _iterator(text, seconds_first)
        except CroniterError as exc:
            detail = _bad_field(text, fields) if len(fields) in _FIELDS else None
            raise _fail(expression, detail or str(exc)) from None
        hour = it.expanded[1]
        schedule = cls(text, tz_name, tz, seconds_first, every_hour=hour == ["*"])
        try:
            schedule.next_after(now)
        except CroniterBadDateError:
            raise _fail(expression, f"matches no date in the next {_MAX_YEARS} years "
                                    f"(e.g. 30 February, or a year in the past)") from None
        return schedule

    # --- next tick --------------------------------------------------------------------------

    def next_after(self, after: float) -> float:
        """The first tick strictly after ``after`` (epoch seconds), as epoch seconds."""
        # ticks fall on whole seconds, so the tick after ``after`` is the tick after its floor:
        # the cache makes 10,000 jobs with one expression cost one computation per second
        return _next_tick(self, math.floor(after))

    def _wall_next(self, wall: float) -> float:
        """The first wall-clock tick strictly after ``wall`` (wall seconds: UTC-epoch numbering)."""
        it = _iterator(self.expression, self.seconds_first)
        it.set_current(wall, force=True)
        return float(it.get_next())

    def _offset(self, instant: float) -> float:
        off = datetime.fromtimestamp(instant, UTC).astimezone(self.tz).utcoffset()
        return off.total_seconds() if off is not None else 0.0

    def _transition(self, lo: float, hi: float) -> float:
        """The instant in (lo, hi] where the offset changes (found to the second)."""
        before = self._offset(lo)
        while hi - lo > 1:
            mid = math.floor((lo + hi) / 2)
            if self._offset(mid) == before:
                lo = mid
            else:
                hi = mid
        return hi

    def _instants(self, wall: float) -> list[float]:
        """The instants at which wall time ``wall`` fires (sorted): one, or two in a repeated hour."""
        naive = datetime.fromtimestamp(wall, UTC).replace(tzinfo=None)
        first = naive.replace(tzinfo=self.tz, fold=0).timestamp()
        second = naive.replace(tzinfo=self.tz, fold=1).timestamp()
        if first == second:
            return [first]
        if first > second:  # a gap (spring forward): fire when the gap ends
            return [self._transition(second, first)]
        return [first, second] if self.every_hour else [first]  # a repeated hour (fall back)

    def _compute(self, after: float) -> float:
        if self.tz is UTC:
            return self._wall_next(after)
        wall = after + self._offset(after)
        best = math.inf
        ambiguous = self._ambiguous(wall)
        if ambiguous is not None:
            first, second = ambiguous
            transition = self._transition(first, second)
            if after < second and self.every_hour:
                # first pass of a repeated hour: the second pass (from the transition on) may
                # hold a tick earlier than the first tick after the repeated hour
                tick = self._wall_next(transition + self._offset(transition) - 1)
                second_pass = self._ambiguous(tick)
                if second_pass is not None:
                    best = second_pass[1]
            elif after >= second and not self.every_hour:
                # second pass: the fixed-time ticks of the repeated hour fired in the first one
                wall = max(wall, transition + self._offset(first) - 1)
        while True:
            wall = self._wall_next(wall)
            for instant in self._instants(wall):
                if instant > after:
                    return min(best, instant)

    def _ambiguous(self, wall: float) -> tuple[float, float] | None:
        """For a wall time that occurs twice: its (first, second) instants."""
        naive = datetime.fromtimestamp(wall, UTC).replace(tzinfo=None)
        first = naive.replace(tzinfo=self.tz, fold=0).timestamp()
        second = naive.replace(tzinfo=self.tz, fold=1).timestamp()
        return (first, second) if first < second else None

    # --- display ----------------------------------------------------------------------------

    def local(self, instant: float) -> datetime:
        return datetime.fromtimestamp(instant, self.tz)


@lru_cache(maxsize=16384)
def _next_tick(schedule: Schedule, after: int) -> float:
    return schedule._compute(float(after))


def _zone(value: Any) -> tuple[tzinfo, str]:
    if value is None or value == "UTC":
        return UTC, "UTC"
    if not isinstance(value, str) or not value:
        raise TriggerRegistrationError(f"cron config.timezone must be an IANA zone name such as "
                                       f"'Europe/Berlin', got {_quote(value)}")
    try:
        return ZoneInfo(value), value
    except (ZoneInfoNotFoundError, ValueError):
        raise TriggerRegistrationError(f"cron config.timezone {_quote(value)} is not a known IANA time zone "
                                       f"(e.g. 'UTC', 'Europe/Berlin', 'America/New_York')") from None


# --- trigger config ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class JobConfig:
    """A cron trigger's config, validated."""

    schedule: Schedule
    #: the run's deadline in seconds (None: the module's default)
    timeout: float | None = None
    persistent: bool = False
    condition_function_id: str | None = None


def parse_job_config(config: Any, *, now: float) -> JobConfig:
    """Validate a cron trigger's ``config``; raises :class:`TriggerRegistrationError` naming the bad value."""
    if not isinstance(config, dict):
        raise TriggerRegistrationError(f"a cron trigger's config must be an object, got {_quote(config)}")
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise TriggerRegistrationError(f"unknown cron config key(s) {_quote(', '.join(map(str, unknown)))} "
                                       f"(known: {', '.join(CONFIG_KEYS)})")
    schedule = Schedule.parse(config.get("expression"), config.get("timezone"), now=now)
    timeout_ms = config.get("timeout_ms")
    if timeout_ms is not None and (isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or timeout_ms <= 0):
        raise TriggerRegistrationError(f"cron config.timeout_ms must be a positive integer (milliseconds), "
                                       f"got {_quote(timeout_ms)}")
    persistent = config.get("persistent", False)
    if not isinstance(persistent, bool):
        raise TriggerRegistrationError(f"cron config.persistent must be true or false, got {_quote(persistent)}")
    condition = condition_function_id(config, "cron trigger")
    return JobConfig(schedule=schedule, timeout=timeout_ms / 1000 if timeout_ms is not None else None,
                     persistent=persistent, condition_function_id=condition)


# --- decisions --------------------------------------------------------------------------------


def catch_up_tick(schedule: Schedule, covered: float | None, now: float) -> float | None:
    """The tick to run once now because it was missed, or None.

    ``covered`` is the time up to which the job's ticks are accounted for (the scheduled time of
    its last run, or when it was first seen). Several missed ticks still give one run.
    """
    if covered is None:
        return None
    missed = schedule.next_after(covered)
    return missed if missed <= now else None


#: ticks counted at most for a log line (each costs a croniter step: ~0.1 ms)
COUNT_LIMIT = 100


def count_ticks(schedule: Schedule, start: float, end: float, *, limit: int = COUNT_LIMIT) -> int:
    """How many ticks fall in (start, end], counting at most ``limit``."""
    count = 0
    tick = schedule.next_after(start)
    while tick <= end and count < limit:
        count += 1
        tick = schedule.next_after(tick)
    return count


def ticks_text(count: int, limit: int = COUNT_LIMIT) -> str:
    """``count`` from :func:`count_ticks` for a log line (``100 or more`` at the limit)."""
    return f"{count} or more" if count >= limit else str(count)


def clock_jump(wall_elapsed: float, mono_elapsed: float, threshold: float) -> float | None:
    """The wall clock's step (seconds, signed) if it moved ``threshold`` more or less than the
    monotonic clock over the same interval; else None (NTP slewing stays under it)."""
    step = wall_elapsed - mono_elapsed
    return step if abs(step) >= threshold else None


def rfc3339(instant: float) -> str:
    """``2026-03-29T01:00:00Z`` (with milliseconds when not whole)."""
    dt = datetime.fromtimestamp(instant, UTC)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if dt.microsecond:
        text += f".{dt.microsecond // 1000:03d}"
    return text + "Z"


# --- the timetable: every job's next tick, what is due, overlap, clock steps -------------------


def next_or_never(schedule: Schedule, after: float) -> float:
    """:meth:`Schedule.next_after`, or ``inf`` once an expression has no more ticks (a past year)."""
    try:
        return schedule.next_after(after)
    except CroniterBadDateError:
        return math.inf


@attrs.define(eq=False, kw_only=True)
class Slot:
    """One job's place in a :class:`Timetable`; ``job`` is whatever the caller attaches."""

    schedule: Schedule
    persistent: bool = False
    job: Any = None
    #: wall time of the next tick (inf: none left)
    next_tick: float = math.inf
    running: bool = False
    #: ticks skipped because a run was still going: in all, and during the current run
    skipped: int = 0
    skipped_now: int = 0
    #: the latest tick skipped during the current run
    last_skipped: float = 0.0
    removed: bool = False


@attrs.frozen
class Run:
    """A run to start now."""

    slot: Slot
    scheduled: float
    catch_up: bool = False


@attrs.define
class Due:
    """What :meth:`Timetable.advance` decided."""

    runs: list[Run] = attrs.Factory(list)
    #: the wall clock's step since the last call, when it was one (seconds, signed)
    jump: float | None = None
    #: (slot, seconds late, ticks not run): the caller was late by more than a period
    late: list[tuple[Slot, float, int]] = attrs.Factory(list)


class Timetable:
    """Next ticks of every job in one heap, and the decisions of the scheduler, without I/O.

    The caller passes both clocks to :meth:`advance` (the wall clock decides what is due, the
    monotonic one reveals steps of the wall clock), starts the runs it returns, sleeps for
    :meth:`delay` and reports the end of each run with :meth:`end`. A tick due while its job's
    previous run is going is skipped and counted: runs of one job never overlap.
    """

    def __init__(self, *, jump_threshold: float) -> None:
        self.jump_threshold = jump_threshold
        self.slots: set[Slot] = set()
        self._heap: list[tuple[float, int, Slot]] = []
        self._seq = 0
        self._clocks: tuple[float, float] | None = None
        #: the wall time the caller sleeps until (from the last :meth:`delay`)
        self._wake_at = math.inf

    def add(self, slot: Slot, now: float) -> bool:
        """Schedule ``slot`` from ``now``; True when its tick comes before the caller's planned
        wake-up (wake the sleeper)."""
        self.slots.add(slot)
        self._push(slot, next_or_never(slot.schedule, now))
        return slot.next_tick < self._wake_at

    def remove(self, slot: Slot) -> None:
        """Stop scheduling ``slot`` (its heap entry is dropped when it comes up, or compacted)."""
        slot.removed = True
        self.slots.discard(slot)

    def _push(self, slot: Slot, tick: float) -> None:
        slot.next_tick = tick
        if tick == math.inf:
            return
        heap = self._heap
        if len(heap) > 1024 and len(heap) > 4 * len(self.slots):
            # entries of removed jobs stay until their tick: drop them now and then, so a worker
            # that keeps restarting cannot grow the heap with the jobs it registers again
            heap[:] = [e for e in heap if not e[2].removed and e[2].next_tick == e[0]]
            heapq.heapify(heap)
        self._seq += 1
        heapq.heappush(heap, (tick, self._seq, slot))

    def delay(self, wall: float, limit: float) -> float:
        """Seconds to sleep: until the earliest tick, at most ``limit`` (to notice clock steps);
        ``inf`` without jobs (the caller is woken by :meth:`add`)."""
        if not self.slots:
            seconds = math.inf
        elif not self._heap:
            seconds = limit
        else:
            seconds = min(limit, max(self._heap[0][0] - wall, 0.0))
        self._wake_at = wall + seconds
        return seconds

    def advance(self, wall: float, mono: float) -> Due:
        due = Due()
        if self._clocks is not None:
            last_wall, last_mono = self._clocks
            due.jump = clock_jump(wall - last_wall, mono - last_mono, self.jump_threshold)
        # without jobs nothing needs protecting from a clock step: the next call starts afresh
        self._clocks = (wall, mono) if self.slots else None
        if due.jump is not None:
            self._recompute(due, wall, forward=due.jump > 0)
        heap = self._heap
        while heap and heap[0][0] <= wall:
            tick, _, slot = heapq.heappop(heap)
            if slot.removed or slot.next_tick != tick:
                continue  # removed, or rescheduled after a clock step
            following = next_or_never(slot.schedule, tick)
            if following <= wall:  # the caller was late by more than a period: no burst either
                due.late.append((slot, wall - tick, count_ticks(slot.schedule, tick, wall)))
                following = next_or_never(slot.schedule, wall)
            run = self.begin(slot, tick)
            if run is not None:
                due.runs.append(run)
            self._push(slot, following)
        return due

    def _recompute(self, due: Due, wall: float, *, forward: bool) -> None:
        """After a clock step every next tick is computed from now: ticks stepped over are not
        run (no burst), and a step back does not wait for the old time (no stall). A persistent
        job that a forward step made miss a tick runs once, as after downtime."""
        self._heap.clear()
        for slot in self.slots:
            if forward and slot.persistent and slot.next_tick <= wall:
                run = self.begin(slot, slot.next_tick, catch_up=True)
                if run is not None:
                    due.runs.append(run)
            self._push(slot, next_or_never(slot.schedule, wall))

    def begin(self, slot: Slot, scheduled: float, *, catch_up: bool = False) -> Run | None:
        """A run of ``slot`` for ``scheduled``, or None (counted as skipped) while one is going."""
        if slot.running:
            slot.skipped += 1
            slot.skipped_now += 1
            slot.last_skipped = max(slot.last_skipped, scheduled)
            return None
        slot.running = True
        return Run(slot, scheduled, catch_up)

    def end(self, slot: Slot) -> int:
        """The run of ``slot`` ended; returns how many ticks it made skip."""
        slot.running = False
        skipped, slot.skipped_now = slot.skipped_now, 0
        return skipped
