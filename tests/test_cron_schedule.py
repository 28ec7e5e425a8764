"""Pure cron logic: expressions, next ticks (UTC and DST), catch-up and clock-jump decisions."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from iii_supervisor.errors import TriggerRegistrationError
from iii_supervisor.modules.cron_schedule import (
    Schedule,
    Slot,
    Timetable,
    catch_up_tick,
    clock_jump,
    count_ticks,
    parse_job_config,
    rfc3339,
    ticks_text,
)

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp()


def ts(*args: int, tz: ZoneInfo | None = None, fold: int = 0) -> float:
    return datetime(*args, tzinfo=tz or UTC, fold=fold).timestamp()


def ticks(expression: str, start: float, count: int, timezone: str | None = None) -> list[str]:
    schedule = Schedule.parse(expression, timezone, now=start)
    out, t = [], start
    for _ in range(count):
        t = schedule.next_after(t)
        out.append(schedule.local(t).isoformat())
    return out


# --- expression forms ---------------------------------------------------------------------------


@pytest.mark.parametrize(("expression", "first"), [
    ("0 2 * * *", "2026-03-02T02:00:00+00:00"),               # 5 fields: min hour dom month dow
    ("30 0 2 * * *", "2026-03-02T02:00:30+00:00"),            # 6 fields: seconds FIRST (as iii)
    ("0 0 2 * * * 2027", "2027-01-01T02:00:00+00:00"),        # 7 fields: trailing year
    ("@hourly", "2026-03-01T13:00:00+00:00"),
    ("@daily", "2026-03-02T00:00:00+00:00"),
    ("@WEEKLY", "2026-03-08T00:00:00+00:00"),
    ("  */5   *  * * * * ", "2026-03-01T12:00:05+00:00"),    # extra blanks are fine
])
def test_expression_forms(expression: str, first: str) -> None:
    assert ticks(expression, NOW, 1) == [first]


def test_six_fields_mean_seconds_first_not_croniters_default() -> None:
    # croniter alone reads "0 0 2 * * *" as min=0 hour=0 dom=2 … sec=*; iii means 02:00:00 daily
    assert ticks("0 0 2 * * *", NOW, 2) == ["2026-03-02T02:00:00+00:00", "2026-03-03T02:00:00+00:00"]


def test_every_second() -> None:
    assert ticks("* * * * * *", NOW, 3) == ["2026-03-01T12:00:01+00:00", "2026-03-01T12:00:02+00:00",
                                              "2026-03-01T12:00:03+00:00"]


@pytest.mark.parametrize(("expression", "message"), [
    ("61 * * * *", "cron expression '61 * * * *': the minute field '61' is invalid"),
    ("0 25 * * *", "the hour field '25' is invalid"),
    ("* * * * 8", "the day of week field '8' is invalid"),
    ("70 * * * * *", "the second field '70' is invalid"),
    ("0 0 0 1 1 * 1800", "the year field '1800' is invalid"),
    ("* * *", "cron expression '* * *': has 3 field(s); expected 5 (min hour dom month dow), 6 (sec"),
    ("* * * * * * * *", "has 8 field(s)"),
    ("every day", "has 2 field(s)"),
    ("@every", "cron expression '@every': unknown shortcut; use one of @yearly"),
    ("0 0 30 2 *", "cron expression '0 0 30 2 *': matches no date in the next 50 years (e.g. 30 February"),
    ("0 0 0 1 1 * 2020", "matches no date"),
    ("", "config.expression (a non-empty string), got ''"),
    ("a b c d e", "the minute field 'a' is invalid"),
    ("1," * 600 + "2 * * * *", "is 1209 characters long; at most 1024"),
])
def test_invalid_expressions_are_refused_with_the_expression_quoted(expression: str, message: str) -> None:
    with pytest.raises(TriggerRegistrationError) as info:
        Schedule.parse(expression, now=NOW)
    assert message in info.value.message
    assert info.value.code == "trigger_registration_failed"


def test_expression_must_be_a_string() -> None:
    with pytest.raises(TriggerRegistrationError, match="got 5"):
        Schedule.parse(5, now=NOW)


@pytest.mark.parametrize(("config", "message"), [
    ({"expression": "* * * * *", "timezone": "Mars/Olympus"}, "config.timezone 'Mars/Olympus' is not a known IANA"),
    ({"expression": "* * * * *", "timezone": "../../etc/passwd"}, "is not a known IANA"),
    ({"expression": "* * * * *", "timezone": 3}, "timezone must be an IANA zone name"),
    ({"expression": "* * * * *", "timeout_ms": 0}, "timeout_ms must be a positive integer (milliseconds), got 0"),
    ({"expression": "* * * * *", "timeout_ms": "5s"}, "got '5s'"),
    ({"expression": "* * * * *", "timeout_ms": True}, "got True"),
    ({"expression": "* * * * *", "persistent": "yes"}, "persistent must be true or false, got 'yes'"),
    ({"expression": "* * * * *", "condition_function_id": ""}, "condition_function_id must be a function id"),
    ({"expression": "* * * * *", "timzone": "UTC"}, "unknown cron config key(s) 'timzone' (known: expression"),
    ({}, "needs config.expression"),
    ([], "config must be an object"),
])
def test_bad_configs(config: object, message: str) -> None:
    with pytest.raises(TriggerRegistrationError) as info:
        parse_job_config(config, now=NOW)
    assert message in info.value.message


def test_good_config() -> None:
    job = parse_job_config({"expression": "0 2 * * *", "timezone": "Europe/Berlin", "timeout_ms": 1500,
                            "persistent": True, "condition_function_id": "c.ok"}, now=NOW)
    assert (job.timeout, job.persistent, job.condition_function_id) == (1.5, True, "c.ok")
    assert job.schedule.timezone == "Europe/Berlin"


# --- next ticks in a DST zone ------------------------------------------------------------------


def test_local_time_in_a_zone() -> None:
    assert ticks("0 2 * * *", NOW, 1, "Europe/Berlin") == ["2026-03-02T02:00:00+01:00"]
    assert ticks("0 2 * * *", NOW, 1, "America/New_York") == ["2026-03-02T02:00:00-05:00"]


def test_spring_forward_a_0230_job_runs_once_when_the_gap_ends() -> None:
    # 2026-03-29 in Berlin: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day
    assert ticks("30 2 * * *", ts(2026, 3, 27, 12, tz=BERLIN), 4, "Europe/Berlin") == [
        "2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00"]


def test_fall_back_a_0230_job_runs_once_at_the_first_0230() -> None:
    # 2026-10-25 in Berlin: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice
    assert ticks("30 2 * * *", ts(2026, 10, 23, 12, tz=BERLIN), 4, "Europe/Berlin") == [
        "2026-10-24T02:30:00+02:00", "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00", "2026-10-27T02:30:00+01:00"]


def test_fall_back_from_inside_the_second_pass_skips_to_the_next_day() -> None:
    schedule = Schedule.parse("30 2 * * *", "Europe/Berlin", now=NOW)
    second_pass = ts(2026, 10, 25, 2, 10, tz=BERLIN, fold=1)
    assert schedule.local(schedule.next_after(second_pass)).isoformat() == "2026-10-26T02:30:00+01:00"


def test_hour_wildcard_jobs_follow_elapsed_time_across_fall_back() -> None:
    assert ticks("0 * * * *", ts(2026, 10, 25, 0, 30, tz=BERLIN), 4, "Europe/Berlin") == [
        "2026-10-25T01:00:00+02:00", "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00", "2026-10-25T03:00:00+01:00"]
    got = ticks("*/20 * * * *", ts(2026, 10, 25, 2, 30, tz=BERLIN), 5, "Europe/Berlin")
    assert got == ["2026-10-25T02:40:00+02:00", "2026-10-25T02:00:00+01:00", "2026-10-25T02:20:00+01:00",
                   "2026-10-25T02:40:00+01:00", "2026-10-25T03:00:00+01:00"]
    schedule = Schedule.parse("*/20 * * * *", "Europe/Berlin", now=NOW)
    inside = ts(2026, 10, 25, 2, 10, tz=BERLIN, fold=1)
    assert rfc3339(schedule.next_after(inside)) == "2026-10-25T01:20:00Z"


def test_hour_wildcard_jobs_across_spring_forward() -> None:
    assert ticks("*/20 * * * *", ts(2026, 3, 29, 1, 30, tz=BERLIN), 3, "Europe/Berlin") == [
        "2026-03-29T01:40:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:20:00+02:00"]


def test_the_next_tick_is_strictly_after_and_ignores_fractions() -> None:
    schedule = Schedule.parse("* * * * * *", None, now=NOW)
    assert schedule.next_after(NOW) == NOW + 1
    assert schedule.next_after(NOW + 0.999) == NOW + 1
    assert schedule.next_after(NOW - 0.5) == NOW


# --- decisions ---------------------------------------------------------------------------------


def test_catch_up_decisions() -> None:
    daily = Schedule.parse("0 2 * * *", None, now=NOW)
    last = ts(2026, 3, 1, 2)
    assert catch_up_tick(daily, None, ts(2026, 3, 5)) is None                # never seen: nothing to catch up
    assert catch_up_tick(daily, last, ts(2026, 3, 2, 1)) is None             # no tick missed yet
    assert catch_up_tick(daily, last, ts(2026, 3, 2, 2)) == ts(2026, 3, 2, 2)
    assert catch_up_tick(daily, last, ts(2026, 3, 9)) == ts(2026, 3, 2, 2)   # a week down: still one run


def test_count_ticks_is_bounded() -> None:
    every_second = Schedule.parse("* * * * * *", None, now=NOW)
    assert count_ticks(every_second, NOW, NOW + 10) == 10
    assert count_ticks(every_second, NOW, NOW + 10**6, limit=50) == 50
    assert count_ticks(every_second, NOW, NOW + 10**6) == 100  # a log line never costs long
    assert (ticks_text(5), ticks_text(100)) == ("5", "100 or more")


def test_clock_jump() -> None:
    assert clock_jump(10.0, 10.0, 2.0) is None
    assert clock_jump(10.5, 10.0, 2.0) is None        # slewing
    assert clock_jump(3610.0, 10.0, 2.0) == 3600.0    # date -s one hour ahead, or a suspend
    assert clock_jump(-3590.0, 10.0, 2.0) == -3600.0  # one hour back


def test_rfc3339() -> None:
    assert rfc3339(ts(2026, 3, 29, 1)) == "2026-03-29T01:00:00Z"
    assert rfc3339(ts(2026, 3, 29, 1) + 0.25) == "2026-03-29T01:00:00.250Z"


# --- the timetable: due ticks, overlap, clock steps (both clocks passed in) ----------------------


def every_second(persistent: bool = False) -> Slot:
    return Slot(schedule=Schedule.parse("* * * * * *", None, now=NOW), persistent=persistent)


def test_due_ticks_and_the_sleep_until_the_next() -> None:
    table = Timetable(jump_threshold=2.0)
    slot = every_second()
    assert table.add(slot, NOW + 0.5) is True  # the earliest: the sleeper must wake
    assert table.delay(NOW + 0.5, 10.0) == 0.5
    assert table.advance(NOW + 0.9, 100.4).runs == []
    due = table.advance(NOW + 1.0, 100.5)
    assert [(r.slot, r.scheduled, r.catch_up) for r in due.runs] == [(slot, NOW + 1, False)]
    assert slot.next_tick == NOW + 2 and table.delay(NOW + 1.0, 10.0) == 1.0
    assert table.delay(NOW + 1.0, 0.25) == 0.25  # never longer than the clock-check interval


def test_a_running_job_skips_its_ticks_and_counts_them() -> None:
    table = Timetable(jump_threshold=2.0)
    slot = every_second()
    table.add(slot, NOW)
    assert len(table.advance(NOW + 1, 1).runs) == 1
    assert table.advance(NOW + 2, 2).runs == [] and table.advance(NOW + 3, 3).runs == []
    assert (slot.skipped, slot.skipped_now, slot.last_skipped) == (2, 2, NOW + 3)
    assert table.end(slot) == 2 and slot.skipped_now == 0 and not slot.running
    assert [r.scheduled for r in table.advance(NOW + 4, 4).runs] == [NOW + 4]  # the first tick after the end
    assert table.begin(slot, NOW + 4, catch_up=True) is None  # a catch-up cannot overlap either
    assert slot.skipped == 3


def test_a_late_scheduler_runs_once_and_reports_the_rest() -> None:
    table = Timetable(jump_threshold=2.0)
    slot = every_second()
    table.add(slot, NOW)
    due = table.advance(NOW + 10.2, 10.2)  # both clocks moved 10 s: a blocked loop, not a clock step
    assert due.jump is None
    assert [r.scheduled for r in due.runs] == [NOW + 1]
    assert due.late == [(slot, pytest.approx(9.2), 9)]
    assert slot.next_tick == NOW + 11


def test_a_forward_step_recomputes_from_now_without_a_burst() -> None:
    table = Timetable(jump_threshold=2.0)
    slot, kept = every_second(), every_second(persistent=True)
    table.add(slot, NOW)
    table.add(kept, NOW)
    table.advance(NOW + 0.5, 0.5)
    due = table.advance(NOW + 3600.7, 1.7)  # 1.2 s passed; the wall clock says an hour
    assert due.jump == pytest.approx(3599.0)
    assert [(r.slot, r.scheduled, r.catch_up) for r in due.runs] == [(kept, NOW + 1, True)]  # once, persistent only
    assert due.late == []
    assert slot.next_tick == kept.next_tick == NOW + 3601


def test_a_backward_step_does_not_stall() -> None:
    table = Timetable(jump_threshold=2.0)
    daily = Slot(schedule=Schedule.parse("0 13 * * *", None, now=NOW))  # NOW is 12:00
    table.add(daily, NOW)
    table.advance(NOW, 0.0)
    assert daily.next_tick == NOW + 3600
    due = table.advance(NOW - 86400 + 10, 10.0)  # set back one day
    assert due.jump == pytest.approx(-86400) and due.runs == []
    assert daily.next_tick == NOW - 86400 + 3600  # today's 13:00 of the new date, not tomorrow's
    assert table.delay(NOW - 86400 + 10, 1e9) == pytest.approx(3590)


def test_small_differences_between_the_clocks_are_no_step() -> None:
    table = Timetable(jump_threshold=2.0)
    table.add(every_second(), NOW)
    table.advance(NOW, 0.0)
    assert table.advance(NOW + 11.5, 10.0).jump is None  # NTP slewing, a slow wake-up


def test_removed_slots_do_not_run_and_cannot_grow_the_heap() -> None:
    table = Timetable(jump_threshold=2.0)
    daily = Schedule.parse("0 2 * * *", None, now=NOW)
    for _ in range(5000):  # a worker registering the same job again and again
        slot = Slot(schedule=daily)
        table.add(slot, NOW)
        table.remove(slot)
    assert len(table._heap) <= 1025 and table.slots == set()
    assert table.advance(NOW + 86400, 86400).runs == []


def test_without_jobs_the_scheduler_sleeps_until_woken() -> None:
    table = Timetable(jump_threshold=2.0)
    assert table.delay(NOW, 1.0) == math.inf
    table.advance(NOW, 0.0)
    # hours later (NTP slewed the clocks apart by 3 s meanwhile) a job arrives: no "jump"
    slot = every_second()
    table.add(slot, NOW + 7200)
    assert table.advance(NOW + 7200.5, 7197.5).jump is None
    assert table.delay(NOW + 7200.5, 1.0) == 0.5


def test_add_says_when_the_sleeper_must_wake() -> None:
    table = Timetable(jump_threshold=2.0)
    table.delay(NOW, 1.0)  # no jobs: sleeps until woken
    hourly = Slot(schedule=Schedule.parse("@hourly", None, now=NOW))
    assert table.add(hourly, NOW) is True
    assert table.delay(NOW, 10.0) == 10.0  # wakes at NOW + 10 (the clock check)
    assert table.add(Slot(schedule=Schedule.parse("@daily", None, now=NOW)), NOW) is False
    assert table.add(every_second(), NOW) is True  # NOW + 1, before the planned wake-up
    table.remove(hourly)
    table.delay(NOW, 1e9)  # the earliest entry decides (a removed job's too: early, never late)
    assert table.add(Slot(schedule=Schedule.parse("@hourly", None, now=NOW)), NOW) is False
