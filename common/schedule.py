"""ETL_SCHEDULE: when the trigger starts a pass — a five-field cron expression (UTC) or a plain interval.

    minute hour day-of-month month day-of-week      `0 * * * *` (the default: every hour on the hour)
    each field: `*`, a number, a range `1-5`, a list `1,15,30`, a step `*/15`, `10-50/20` or `5/15`;
    months `jan`..`dec` and days `sun`..`sat` by name; day of week 0-7 (0 and 7 are Sunday); when both day fields
    are restricted a day matching either fires (as in Vixie cron); `@hourly`, `@daily`, `@weekly`, `@monthly`,
    `@yearly` as shorthands.
    an interval: `30s`, `15m`, `1h`, `2d` (or bare seconds), ticking on multiples of the period since the epoch, so
    a restarted trigger keeps the same phase.

Own parser rather than croniter: the trigger needs `next_after` and the schedule's period, nothing more. Config
should call `parse_schedule(settings.etl_schedule)` at start-up so a bad expression fails there.
"""

from __future__ import annotations

import bisect
import functools
import math
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from common.errors import ConfigError

TRIGGER_HEARTBEAT_KEY = "trigger:heartbeat"
"""Shared state the trigger writes on every tick and every few seconds (idle or running): {"at", "pid", "state":
"idle"|"running", "pass_run_id", "next_tick"}, times ISO 8601 UTC. The API's health check reads it."""
TRIGGER_LAST_TICK_KEY = "trigger:last_tick"
"""The last tick a trigger claimed: {"tick" (epoch s), "at", "claimed_by", "finished", "pass_run_id", "status"}."""

SEARCH_DAYS = 9 * 366
"""How far ahead a cron schedule may fire next: 9 years covers a 29 February after a skipped leap year (2100)."""
PERIOD_FROM = date(2024, 1, 1)  # a fixed reference, so the period of a schedule is the same in every process

MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
          "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_INTERVAL = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
MONTHS = {name: number for number, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
DAYS = {name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
FIELDS = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}), ("month", 1, 12, MONTHS),
          ("day of week", 0, 7, DAYS))
HELP = "expected 5 cron fields (minute hour day-of-month month day-of-week, UTC) or an interval such as 30s, 15m, 1h"


class Schedule:
    """When passes are due: `next_after(t)` is the first tick strictly after `t` (epoch seconds)."""

    expression: str

    def next_after(self, moment: float) -> float:
        raise NotImplementedError

    @property
    def period_s(self) -> float:
        """The longest time between two ticks: how long "a tick or two without a pass" really is."""
        raise NotImplementedError


@dataclass(frozen=True)
class Interval(Schedule):
    expression: str
    seconds: float

    def next_after(self, moment: float) -> float:
        return (math.floor(moment / self.seconds) + 1) * self.seconds

    @property
    def period_s(self) -> float:
        return self.seconds


@dataclass(frozen=True)
class Cron(Schedule):
    expression: str
    minutes_of_day: tuple[int, ...]  # sorted, every minute of a day that fires
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]  # 0 = Sunday
    any_day_of_month: bool
    any_day_of_week: bool

    def fires_on(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        by_date = day.day in self.days_of_month
        by_weekday = (day.weekday() + 1) % 7 in self.days_of_week
        if self.any_day_of_month or self.any_day_of_week:
            return by_date and by_weekday  # the unrestricted one matches every day
        return by_date or by_weekday

    def next_after(self, moment: float) -> float:
        start = datetime.fromtimestamp((math.floor(moment / 60) + 1) * 60, timezone.utc)
        day, first_minute = start.date(), start.hour * 60 + start.minute
        for _ in range(SEARCH_DAYS):
            if self.fires_on(day):
                index = bisect.bisect_left(self.minutes_of_day, first_minute)
                if index < len(self.minutes_of_day):
                    midnight = datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()
                    return midnight + self.minutes_of_day[index] * 60
            day, first_minute = day + timedelta(days=1), 0
        raise ConfigError(f"ETL_SCHEDULE {self.expression!r} never fires")

    @functools.cached_property
    def period_s(self) -> float:
        times, previous = self.minutes_of_day, None
        longest_min = max((b - a for a, b in zip(times, times[1:])), default=0)
        for offset in range(SEARCH_DAYS):
            day = PERIOD_FROM + timedelta(days=offset)
            if self.fires_on(day):
                if previous is not None:
                    gap = (day - previous).days * 1440 - times[-1] + times[0]
                    longest_min = max(longest_min, gap)
                previous = day
        return float(longest_min * 60)


def parse_schedule(expression: str) -> Schedule:
    """ETL_SCHEDULE as a Schedule; ConfigError saying what is wrong otherwise."""
    text = " ".join(expression.split()).lower()
    if not text:
        raise ConfigError(f"ETL_SCHEDULE is empty; {HELP}")
    interval = _INTERVAL.fullmatch(text)
    if interval:
        seconds = float(interval.group(1)) * UNITS[interval.group(2)]
        if seconds <= 0:
            raise ConfigError(f"ETL_SCHEDULE: an interval must be longer than 0, got {expression!r}")
        return Interval(expression, seconds)
    if text.startswith("@"):
        if text not in MACROS:
            raise ConfigError(f"ETL_SCHEDULE: unknown shorthand {expression!r}; {HELP}")
        text = MACROS[text]
    parts = text.split(" ")
    if len(parts) != 5:
        raise ConfigError(f"ETL_SCHEDULE {expression!r} has {len(parts)} fields, not 5 fields; {HELP}")
    minutes, hours, days, months, weekdays = (
        _field(part, *spec, expression) for part, spec in zip(parts, FIELDS))
    cron = Cron(expression, tuple(sorted(h * 60 + m for h in hours for m in minutes)), frozenset(days),
                frozenset(months), frozenset(d % 7 for d in weekdays), parts[2].startswith("*"),
                parts[4].startswith("*"))
    if not any(cron.fires_on(PERIOD_FROM + timedelta(days=offset)) for offset in range(SEARCH_DAYS)):
        raise ConfigError(f"ETL_SCHEDULE {expression!r} never fires (no such day)")
    return cron


def _field(text: str, name: str, low: int, high: int, names: dict[str, int], expression: str) -> set[int]:
    """One cron field as the set of values it matches."""

    def fail(why: str) -> ConfigError:
        return ConfigError(f"ETL_SCHEDULE {expression!r}: {name} field {text!r}: {why}")

    def number(token: str) -> int:
        value = names.get(token)
        if value is None:
            if not token.isdigit():
                raise fail(f"{token!r} is not a number")
            value = int(token)
        if not low <= value <= high:
            raise fail(f"{value} is outside {low}-{high}")
        return value

    values: set[int] = set()
    for item in text.split(","):
        span, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise fail(f"step {step_text!r} must be a whole number >= 1")
            step = int(step_text)
        if span == "*":
            first, last = low, high
        elif "-" in span:
            first_text, _, last_text = span.partition("-")
            first, last = number(first_text), number(last_text)
            if first > last:
                raise fail(f"range {span!r} runs backwards")
        else:
            first = number(span)
            last = high if step_text else first  # `5/15`: from 5 to the end, every 15
        values.update(range(first, last + 1, step))
    return values
