"""Source declarations: what each source is, where it lives, and the canonical fields it maps to."""

from __future__ import annotations

from dataclasses import dataclass

from common.config import Settings
from common.errors import InputError, SourceError

SOURCE_NAMES = ("source_a", "source_b", "source_c")
SHORT_NAMES = {"a": "source_a", "b": "source_b", "c": "source_c"}


@dataclass(frozen=True)
class Field:
    """One canonical field: its type, whether a record needs it, whether it is part of the record's key."""

    name: str
    type: str  # "text" | "number" | "timestamp"
    required: bool = False
    key: bool = False
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceSpec:
    name: str
    kind: str  # "csv" | "http_json"
    location: str
    fields: tuple[Field, ...]

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)


CSV_HISTORY_FIELDS = (
    Field("symbol", "text", required=True, key=True, aliases=("Symbol",)),
    Field("name", "text", aliases=("Name",)),
    Field("observed_at", "timestamp", required=True, key=True, aliases=("Date",)),
    Field("price_usd", "number", required=True, aliases=("Close",)),
    Field("open_usd", "number", aliases=("Open",)),
    Field("high_usd", "number", aliases=("High",)),
    Field("low_usd", "number", aliases=("Low",)),
    Field("volume_24h_usd", "number", aliases=("Volume",)),
    Field("market_cap_usd", "number", aliases=("Marketcap",)),
)


def source_spec(name: str, settings: Settings) -> SourceSpec:
    """The declaration of source `name` (`source_b` or its short form `b`)."""
    name = SHORT_NAMES.get(name, name)
    if name == "source_b":
        return SourceSpec("source_b", "csv", settings.source_b_path, CSV_HISTORY_FIELDS)
    if name in SOURCE_NAMES:
        raise NotImplementedError(f"{name} is not implemented yet")
    raise InputError(f"unknown source {name!r}; expected one of: {', '.join(SOURCE_NAMES)}")


def resolve_header(spec: SourceSpec, header: list[str]) -> dict[str, int]:
    """Column index of each canonical field found in `header` (case-insensitive name or alias match).

    Raises SourceError naming every required field that is missing.
    """
    positions: dict[str, int] = {}
    for index, column in enumerate(header):
        positions.setdefault(column.strip().lower(), index)
    mapping: dict[str, int] = {}
    for spec_field in spec.fields:
        for candidate in (spec_field.name, *spec_field.aliases):
            if candidate.lower() in positions:
                mapping[spec_field.name] = positions[candidate.lower()]
                break
    missing = [f for f in spec.fields if f.required and f.name not in mapping]
    if missing:
        wanted = ", ".join(f"{f.aliases[0] if f.aliases else f.name} ({f.name})" for f in missing)
        raise SourceError(
            f"{spec.name}: header lacks required column(s) {wanted}; header was: {','.join(header)[:300]}",
            source=spec.name,
        )
    return mapping
