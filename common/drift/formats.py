"""Value formats per source and field: declared in `FIELD_FORMATS`, or inferred when the values make it unambiguous.

A spreadsheet that re-saves the Kaggle history rewrites `2020-12-31 23:59:59` as `31-12-20 23:59`. That reading
is day-first only because 31 cannot be a month, and only if `31-12-20` is not YY-MM-DD (2031-12-20, a date that
has not happened yet). So a date order is inferred from *every* value of the column seen in the run, never from a
sample: each value rules out the orders under which it is no date, or a date in the future; while more than one
order survives, the rows wait in quarantine with a reason that names the fix (a `FIELD_FORMATS` declaration,
then `etl quarantine replay`). One surviving order becomes the format, recorded in the run summary like a field
mapping and persisted per source (`formats:<source>`), so later runs and replays read with it.

Order of reading a timestamp value (`ValueFormats.timestamp`):
    declared format (FIELD_FORMATS)  ->  the standard forms (`to_timestamp`: ISO 8601, epochs)
    ->  the learned/inferred format  ->  inference (hold the row back until every value has been seen)
A declared format comes first so that it can claim digit runs (`201801012359`) that would otherwise read as epochs.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime

from common.drift.coerce import MAX_YEAR, MIN_YEAR, CoerceError

ORDERS = {"DMY": ("%d", "%m", "{y}"), "MDY": ("%m", "%d", "{y}"), "YMD": ("{y}", "%m", "%d")}
"""Date orders tried for `A-B-C` values, in this order (day-first is the spreadsheet default outside the US)."""

_SHAPE = re.compile(
    r"^(?P<a>[0-9]{1,4})(?P<sep>[-/.])(?P<b>[0-9]{1,2})(?P=sep)(?P<c>[0-9]{1,4})"
    r"(?:(?P<t>[ T])[0-9]{1,2}:[0-9]{2}(?P<s>:[0-9]{2})?(?:(?P<ws>\s*)(?P<ampm>[AaPp][Mm]))?)?$"
)


class Ambiguous(CoerceError):
    """The values seen so far allow more than one date order (or none): the row waits, never a guess."""


class Undecided(Exception):
    """Not an error: the format is not decided yet; hold the row until every value of the batch has been seen."""


class DateOrder:
    """What the values of one column allow: the strptime formats under which every value seen is a real,
    plausible date, and for each format ruled out, the first value that ruled it out."""

    def __init__(self, latest: date) -> None:
        self.latest = latest  # a value read as later than this is in the future: that reading is wrong
        self.remaining: list[str] | None = None  # None until a value has been seen
        self.ruled_out: dict[str, str] = {}
        self.seen = 0

    @staticmethod
    def candidates(value: str) -> list[str]:
        """The strptime formats a value's shape allows, one per date order; [] if it is no `A-B-C` date."""
        shape = _SHAPE.match(value.strip())
        if shape is None:
            return []
        a, b, c, sep = len(shape["a"]), len(shape["b"]), len(shape["c"]), shape["sep"]
        if a == 4 and c <= 2:
            orders, year = ["YMD"], "%Y"
        elif c == 4 and a <= 2:
            orders, year = ["DMY", "MDY"], "%Y"
        elif a <= 2 and c <= 2:
            orders, year = ["DMY", "MDY", "YMD"], "%y"
        else:
            return []
        if b > 2:
            return []
        clock = ""
        if shape["t"]:
            clock = shape["t"] + ("%I" if shape["ampm"] else "%H") + ":%M" + (":%S" if shape["s"] else "")
            if shape["ampm"]:
                clock += (" " if shape["ws"] else "") + "%p"
        return [sep.join(part.format(y=year) for part in ORDERS[order]) + clock for order in orders]

    def readings(self, value: str) -> tuple[list[str], dict[str, str]]:
        """The formats under which `value` is a plausible date, and why each other candidate is not."""
        text, fits, refuted = value.strip(), [], {}
        for fmt in self.candidates(text):
            try:
                moment = datetime.strptime(text, fmt)
            except ValueError:
                refuted[fmt] = f"{text!r}: no such date in that order"
                continue
            if not MIN_YEAR <= moment.year <= MAX_YEAR:
                refuted[fmt] = f"{text!r}: would be in {moment.year}, outside {MIN_YEAR}..{MAX_YEAR}"
            elif moment.date() > self.latest:
                refuted[fmt] = f"{text!r}: would be {moment.date().isoformat()}, in the future"
            else:
                fits.append(fmt)
        return fits, refuted

    def observe(self, value: str) -> None:
        """Narrow the formats by one more value. Raises CoerceError if the value is no date in any order."""
        fits, refuted = self.readings(value)
        if not fits:
            raise CoerceError(f"{value.strip()!r} is no date in any order ({'; '.join(refuted.values())})")
        self.seen += 1
        if self.remaining is None:
            self.remaining = fits
            self.ruled_out.update(refuted)
            return
        for fmt in self.remaining:
            if fmt not in fits:
                self.ruled_out.setdefault(fmt, refuted.get(fmt, f"{value.strip()!r}: a different shape"))
        self.remaining = [fmt for fmt in self.remaining if fmt in fits]

    @property
    def decided(self) -> str | None:
        return self.remaining[0] if self.remaining is not None and len(self.remaining) == 1 else None

    def evidence(self) -> dict:
        return {"values_seen": self.seen, "ruled_out": dict(self.ruled_out)}

    def refuse(self, label: str, value: str, source: str, field: str) -> Ambiguous:
        """The quarantine reason for a value while no single order is decided: what it could be, and the fix."""
        remaining = self.remaining or []
        example = remaining[0] if remaining else (self.candidates(value) or ["%d-%m-%y %H:%M"])[0]
        fix = (f"set FIELD_FORMATS='{json.dumps({source: {field: example}})}' (the format the file really uses) "
               f"and run `etl quarantine replay --source {source}`")
        if remaining:
            readings = ", ".join(remaining[:-1]) + " or " + remaining[-1]
            return Ambiguous(f"ambiguous date format: {value.strip()!r} reads as {readings} and no value of "
                             f"{label} seen so far rules out the others; {fix}")
        return Ambiguous(f"the values of {label} fit no single format ({'; '.join(self.ruled_out.values())}); {fix}")

