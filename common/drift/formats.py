"""Value formats per source and field: declared in `FIELD_FORMATS`, or inferred when the values make it unambiguous."""

from __future__ import annotations

import json

from common.errors import ConfigError


def parse_field_formats(text: str) -> dict[str, dict[str, str]]:
    """`FIELD_FORMATS` JSON: {"source_b": {"observed_at": "%d-%m-%y %H:%M"}} (validated at start-up)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"FIELD_FORMATS must be JSON such as {{\"source_b\": {{\"observed_at\": \"%d-%m-%y %H:%M\"}}}}: "
                          f"{exc}") from None
    if not isinstance(value, dict) or not all(
        isinstance(fields, dict) and all(isinstance(fmt, str) and fmt for fmt in fields.values())
        for fields in value.values()
    ):
        raise ConfigError("FIELD_FORMATS must map source -> canonical field -> format string")
    return value
