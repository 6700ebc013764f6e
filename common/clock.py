"""Time as an injected dependency: a clock, and the deadline every invocation works against."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Callable

Clock = Callable[[], float]
"""Returns seconds since the epoch; `time.time` in production, a fake in tests."""

system_clock: Clock = time.time


def iso_utc(epoch_s: float) -> str:
    """Epoch seconds as an ISO 8601 UTC string with millisecond precision."""
    return datetime.fromtimestamp(epoch_s, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch_of(iso: str) -> float:
    """The inverse of `iso_utc` (any ISO 8601 with a zone or `Z`); ValueError when it is not a timestamp."""
    return datetime.fromisoformat(str(iso).replace("Z", "+00:00")).timestamp()


def epoch_or_none(iso: object) -> float | None:
    """`epoch_of`, or None for a missing or unreadable value (data written by someone else)."""
    try:
        return epoch_of(iso) if iso else None
    except ValueError:
        return None


class Deadline:
    """The point after which an invocation must checkpoint and stop, leaving `margin_s` to do so."""

    def __init__(self, clock: Clock, budget_s: float, margin_s: float = 5.0) -> None:
        self.clock = clock
        self.ends_at = clock() + budget_s
        self.margin_s = min(margin_s, budget_s / 10)

    def remaining(self) -> float:
        return self.ends_at - self.clock()

    def near(self) -> bool:
        return self.remaining() <= self.margin_s
