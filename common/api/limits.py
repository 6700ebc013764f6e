"""Request size limits the application enforces itself, so the answer is JSON whichever server runs it.

The servers in front enforce their own framing limits first (see `common.api.server` and the README):
gunicorn under `etl serve` and under functions-framework rejects a header field over 8190 bytes, more than 100
header fields and malformed framing (CR/LF/NUL in a header, bare LF) before any application code runs.
functions-framework lets request lines of any length through, so the request target is bounded here.
"""

from __future__ import annotations

from typing import Mapping

from werkzeug.exceptions import RequestURITooLarge

MAX_TARGET_BYTES = 8192
"""Longest accepted request target (path + `?` + query), in bytes as sent."""


def target_size(environ: Mapping[str, object]) -> int:
    """Bytes of the request target: gunicorn's RAW_URI when it carries the query, else path + query."""
    raw = str(environ.get("RAW_URI") or "")
    query = str(environ.get("QUERY_STRING") or "")
    rebuilt = len(str(environ.get("PATH_INFO") or "")) + (len(query) + 1 if query else 0)
    return max(len(raw), rebuilt)


def check_target(environ: Mapping[str, object]) -> None:
    """Raise 414 when the request target is longer than `MAX_TARGET_BYTES`."""
    size = target_size(environ)
    if size > MAX_TARGET_BYTES:
        raise RequestURITooLarge(f"the request target is {size} bytes; at most {MAX_TARGET_BYTES} are accepted")
