"""Lenient but unambiguous value coercion: numbers and timestamps as sources actually write them.

Numbers (`to_number`) accept:
    int / float / Decimal (never bool)            12, 1.5, Decimal("2.50")
    plain and scientific strings                  "12", "-0.5", ".5", "1.2e5", "1.2E-3"
    thousands groups of exactly 3 digits, one     "1,234.5", "1 234.5", "1_234", "1'234", "12,345,678"
    separator kind per value                      (also no-break / narrow no-break spaces)
    currency symbols or ISO codes, either side    "$1,234.50", "USD 12", "12 usd", "€3", "-$5", "US$7"
    surrounding whitespace
and return None for None, "" and whitespace. Currency is stripped, never converted: the drift matcher guards
currencies on column names, this function only reads digits.

Comma as decimal separator (European style) is accepted only where it cannot be a thousands group:
    "1.234,5" and "1 234,5"  -> 1234.5     (dot/space groups, then a decimal comma)
    "1,5", "0,25", "3,14159" -> decimal    (not exactly 3 digits after the single comma)
    "1,234"                  -> 1234.0     (3 digits after one comma: read as a thousands group, the sources are
                                            English-locale; documented rather than guessed per value)
    "1,2,3", "1.234.567", "0,250", "1,23,456" -> CoerceError (ambiguous or malformed grouping)
Rejected: nan / inf (any spelling), "12abc", "12%", booleans, dicts, lists, bytes, non-ASCII digits.

Timestamps (`to_timestamp`) return one fixed-width form, `YYYY-MM-DDTHH:MM:SS.sssZ` in UTC (milliseconds always,
finer digits truncated, like `common.clock.iso_utc`), so that sorting the text sorts by time ("...48.5Z" used to
sort before "...48Z"). Accepted:
    ISO 8601 strings, any zone or none            "2025-06-25T10:47:48Z", "...+02:00", "...48.000Z", "...48.5"
                                                  (so every form stored before reads again: the migration key)
    `YYYY-MM-DD HH:MM:SS` and date only           "2025-06-25 10:47:48", "2025-06-25" (midnight UTC)
    a trailing " UTC" / " GMT"                    "2025-06-25 10:47:48 UTC"
    epoch seconds or milliseconds                 1750848468, 1750848468123, "1750848468.5"
                                                  (|value| > 1e11 means milliseconds: 1e11 s is the year 5138,
                                                  1e11 ms is 1973, so the two ranges never overlap in practice)
    datetime / date objects
Naive values are UTC. Digit strings are epochs, except exactly 8 digits, which is an ISO basic date ("20250625");
everything else goes to `datetime.fromisoformat` first (Python 3.11 reads digit runs as basic-format dates with
any separator, "1701011200000" -> 1701-01-12, so epochs must not reach it). Years outside 1970..2100 are
rejected as implausible for this pipeline.
An epoch below 1e8 (fewer than 9 integer digits: before 1973-03-03) is refused as ambiguous: "2018" is a year,
not 33 minutes after 1970, and plausible epochs have 9-10 digits (seconds, 1973..2286) or 12-13 (milliseconds).
Only ASCII digits count anywhere ("١٢٣" is refused). Other spellings (`31-12-20 23:59`) are not guessed here:
`common.drift.formats` reads them with a declared or inferred format (`parse_with_format`).
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_FLOOR, Decimal, InvalidOperation

MIN_YEAR = 1970
MAX_YEAR = 2100
EPOCH_MS_CUTOFF = 1e11
"""Epoch values whose magnitude exceeds this are milliseconds, smaller ones are seconds."""
EPOCH_MIN = 100_000_000
"""Smaller epoch magnitudes (fewer than 9 digits, before 1973-03-03) are refused: a year or a count, not a time."""

_EPOCH = datetime(1970, 1, 1)


class CoerceError(ValueError):
    """A value cannot be read as the type asked for; the message says what was wrong."""


# --------------------------------------------------------------------------------------------------- numbers

_CURRENCY_SYMBOLS = "$€£¥₿₹₩₽"
_CURRENCY_CODES = r"USDT|USDC|USD|US\$|EUR|GBP|JPY|CHF|CAD|AUD|CNY"
_CURRENCY = re.compile(
    rf"^(?:(?:{_CURRENCY_CODES})\s*|[{_CURRENCY_SYMBOLS}]\s*)|(?:\s*(?:{_CURRENCY_CODES})|\s*[{_CURRENCY_SYMBOLS}])$",
    re.IGNORECASE,
)
_PLAIN = re.compile(r"^(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_GROUPED = re.compile(r"^[1-9]\d{0,2}(?P<sep>[,_' ])\d{3}(?:(?P=sep)\d{3})*(?:\.\d+)?$")
_EURO_GROUPED = re.compile(r"^[1-9]\d{0,2}(?P<sep>[. ])\d{3}(?:(?P=sep)\d{3})*,\d+$")
_DECIMAL_COMMA = re.compile(r"^(?:0|[1-9]\d*),(?:\d{1,2}|\d{4,})$")
_WORDS_NON_FINITE = re.compile(r"^[+-]?(?:nan|inf|infinity)$", re.IGNORECASE)


def to_number(value: object) -> float | None:
    """`value` as a finite float; None for None/blank. Raises CoerceError for anything else."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise CoerceError(f"a boolean is not a number: {value!r}")
    if isinstance(value, (int, float, Decimal)):
        try:
            number = float(value)
        except (OverflowError, ValueError):
            raise CoerceError(f"number out of range: {_short(value)}") from None
        if not math.isfinite(number):
            raise CoerceError(f"non-finite number: {_short(value)}")
        return number
    if not isinstance(value, str):
        raise CoerceError(f"not a number: a {type(value).__name__} ({_short(value)})")
    return _parse_number_text(value)


def _parse_number_text(raw: str) -> float | None:
    text = raw.strip().replace("\u00a0", " ").replace("\u202f", " ")
    if not text:
        return None
    if _WORDS_NON_FINITE.match(text):
        raise CoerceError(f"non-finite number: {_short(raw)}")
    negative = False
    if text[0] in "+-":
        negative, text = text[0] == "-", text[1:].lstrip()
    stripped = _CURRENCY.sub("", text, count=1)
    if stripped != text:
        text = stripped.strip()
        if text[:1] in ("+", "-") and not negative:  # "$-5"
            negative, text = text[0] == "-", text[1:].lstrip()
    if not text or not text.isascii():
        raise CoerceError(f"not a number: {_short(raw)}")
    if _PLAIN.match(text):
        digits = text
    elif _GROUPED.match(text):
        digits = re.sub(r"[,_' ]", "", text)
    elif _EURO_GROUPED.match(text) or _DECIMAL_COMMA.match(text):
        digits = re.sub(r"[. ]", "", text).replace(",", ".")
    elif any(sep in text for sep in ",._' ") and re.fullmatch(r"[\d,._' ]+", text):
        raise CoerceError(f"ambiguous number (separators do not form 3-digit groups): {_short(raw)}")
    else:
        raise CoerceError(f"not a number: {_short(raw)}")
    number = float(digits)
    if not math.isfinite(number):
        raise CoerceError(f"number out of range: {_short(raw)}")
    return -number if negative else number


# ------------------------------------------------------------------------------------------------ timestamps

_EPOCH_TEXT = re.compile(r"^[+-]?[0-9]+(?:\.[0-9]+)?$")
_ZONE_WORD = re.compile(r"\s*(?:UTC|GMT)$", re.IGNORECASE)


def to_timestamp(value: object) -> str:
    """`value` as `YYYY-MM-DDTHH:MM:SS.sssZ` in UTC. Raises CoerceError if it is not a plausible instant."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise CoerceError("missing timestamp (empty string)")
        if not text.isascii():
            raise CoerceError(f"not a timestamp (non-ASCII characters): {_short(value)}")
        if _EPOCH_TEXT.match(text) and not (len(text) == 8 and text.isdigit()):
            # before fromisoformat, which reads digit runs as basic-format dates with any separator
            # ("1701011200000" would become 1701-01-12T00:00)
            return _from_epoch(Decimal(text), value)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            return _format(moment, value)
        trimmed = _ZONE_WORD.sub("", text)
        if trimmed != text:
            try:
                moment = datetime.fromisoformat(trimmed)
            except ValueError:
                pass
            else:
                if moment.tzinfo is None:
                    return _format(moment, value)
        raise CoerceError(f"not a timestamp: {_short(value)}")
    if value is None:
        raise CoerceError("missing timestamp (None)")
    if isinstance(value, bool):
        raise CoerceError(f"a boolean is not a timestamp: {value!r}")
    if isinstance(value, datetime):
        return _format(value, value)
    if isinstance(value, date):
        return _format(datetime(value.year, value.month, value.day), value)
    if isinstance(value, (int, float, Decimal)):
        if isinstance(value, float) and not math.isfinite(value):
            raise CoerceError(f"non-finite epoch: {value!r}")
        return _from_epoch(Decimal(str(value)) if isinstance(value, float) else Decimal(value), value)
    raise CoerceError(f"not a timestamp: a {type(value).__name__} ({_short(value)})")


def parse_with_format(value: str, fmt: str) -> str:
    """`value` read with the strptime format `fmt` (declared or inferred), in the fixed-width UTC form."""
    text = value.strip()
    if not text.isascii():
        raise CoerceError(f"not a timestamp (non-ASCII characters): {_short(value)}")
    try:
        moment = datetime.strptime(text, fmt)
    except ValueError:
        raise CoerceError(f"{_short(value)} does not match the format {fmt}") from None
    return _format(moment, value)


def _from_epoch(number: Decimal, original: object) -> str:
    if not number.is_finite():
        raise CoerceError(f"non-finite epoch: {_short(original)}")
    if abs(number) < EPOCH_MIN:
        if abs(number) < 10_000:
            raise CoerceError(f"ambiguous: {_short(original)} looks like a year, not an epoch")
        raise CoerceError(f"ambiguous: {_short(original)} is too short for an epoch (seconds have 9-10 digits, "
                          "milliseconds 12-13)")
    try:
        millis = int((number if abs(number) > EPOCH_MS_CUTOFF else number * 1000).to_integral_value(ROUND_FLOOR))
        if abs(millis) > 10**14:  # beyond year ~5100 either way; keeps timedelta from overflowing
            raise OverflowError
        moment = _EPOCH + timedelta(milliseconds=millis)
    except (OverflowError, InvalidOperation):
        raise CoerceError(f"epoch out of range: {_short(original)}") from None
    return _format(moment, original)


def _format(moment: datetime, original: object) -> str:
    if moment.tzinfo is not None:
        try:
            moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
        except OverflowError:
            raise CoerceError(f"timestamp out of range: {_short(original)}") from None
    if not MIN_YEAR <= moment.year <= MAX_YEAR:
        raise CoerceError(f"timestamp year {moment.year} outside {MIN_YEAR}..{MAX_YEAR}: {_short(original)}")
    return moment.isoformat(timespec="milliseconds") + "Z"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
