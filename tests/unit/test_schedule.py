"""ETL_SCHEDULE: five-field cron (UTC) or an interval; the next tick after any moment, and the schedule's period."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from common.errors import ConfigError
from common.schedule import parse_schedule


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def ticks(expression: str, start: str, count: int) -> list[str]:
    schedule, moment, found = parse_schedule(expression), at(start), []
    for _ in range(count):
        moment = schedule.next_after(moment)
        found.append(iso(moment))
    return found


def test_the_default_is_every_hour_on_the_hour():
    assert ticks("0 * * * *", "2026-03-01 10:00:00", 3) == ["2026-03-01 11:00:00", "2026-03-01 12:00:00",
                                                            "2026-03-01 13:00:00"]
    assert ticks("0 * * * *", "2026-03-01 10:59:59.5", 1) == ["2026-03-01 11:00:00"]
    assert parse_schedule("0 * * * *").period_s == 3600


@pytest.mark.parametrize("expression, start, expected", [
    ("*/15 * * * *", "2026-03-01 10:07:00", ["2026-03-01 10:15:00", "2026-03-01 10:30:00", "2026-03-01 10:45:00"]),
    ("5,35 9-10 * * *", "2026-03-01 10:40:00", ["2026-03-02 09:05:00", "2026-03-02 09:35:00",
                                               "2026-03-02 10:05:00"]),
    ("0 0 * * 1-5", "2026-03-06 12:00:00", ["2026-03-09 00:00:00", "2026-03-10 00:00:00", "2026-03-11 00:00:00"]),
    ("30 2 1 */3 *", "2026-02-10 00:00:00", ["2026-04-01 02:30:00", "2026-07-01 02:30:00", "2026-10-01 02:30:00"]),
    ("0 12 29 2 *", "2026-01-01 00:00:00", ["2028-02-29 12:00:00", "2032-02-29 12:00:00", "2036-02-29 12:00:00"]),
    ("0 0 13 * 5", "2026-03-01 00:00:00", ["2026-03-06 00:00:00", "2026-03-13 00:00:00", "2026-03-20 00:00:00"]),
    ("0 6 * * 7", "2026-03-01 07:00:00", ["2026-03-08 06:00:00", "2026-03-15 06:00:00", "2026-03-22 06:00:00"]),
    ("10-20/5 * * * *", "2026-03-01 10:16:00", ["2026-03-01 10:20:00", "2026-03-01 11:10:00",
                                               "2026-03-01 11:15:00"]),
    ("0 0 1 jan,jul mon-fri", "2026-01-01 00:00:00", ["2026-01-02 00:00:00", "2026-01-05 00:00:00",
                                                      "2026-01-06 00:00:00"]),
    ("@daily", "2026-12-31 23:00:00", ["2027-01-01 00:00:00", "2027-01-02 00:00:00", "2027-01-03 00:00:00"]),
])
def test_cron_fields_lists_ranges_steps_and_day_rules(expression, start, expected):
    assert ticks(expression, start, 3) == expected


@pytest.mark.parametrize("expression, period", [("30s", 30), ("15m", 900), ("1h", 3600), ("2d", 172800),
                                                ("45", 45)])
def test_intervals_tick_on_multiples_of_the_period(expression, period):
    schedule = parse_schedule(expression)
    assert schedule.period_s == period
    start = at("2026-03-01 10:00:01")
    first = schedule.next_after(start)
    assert first > start and first % period == 0 and schedule.next_after(first) == first + period


def test_the_period_of_an_uneven_cron_schedule_is_its_longest_gap():
    assert parse_schedule("0 9 * * 1-5").period_s == 3 * 86400 - 0  # Friday 09:00 to Monday 09:00
    assert parse_schedule("*/20 * * * *").period_s == 1200


@pytest.mark.parametrize("expression, message", [
    ("", "empty"),
    ("* * * *", "5 fields"),
    ("60 * * * *", "minute"),
    ("* 24 * * *", "hour"),
    ("* * 0 * *", "day of month"),
    ("* * * 13 *", "month"),
    ("* * * * 8", "day of week"),
    ("*/0 * * * *", "step"),
    ("5-1 * * * *", "range"),
    ("0 0 31 2 *", "never"),
    ("0s", "interval"),
    ("1w", "ETL_SCHEDULE"),
    ("@sometimes", "ETL_SCHEDULE"),
])
def test_bad_schedules_are_a_config_error_that_says_why(expression, message):
    with pytest.raises(ConfigError, match=message):
        parse_schedule(expression)
