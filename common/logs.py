"""Logging configured once per process at the edge: JSON lines for machines, one readable line for a person.

Every record carries `service` (which process: `run_local`, `trigger`, a function's name) and, when known, `run_id`
and `request_id` — given per call (`extra={"run_id": ...}`) or for a whole stretch of work with `log_context(...)`
(a request, a pass), which the records of that thread inherit. `LOG_FORMAT`: `json`, `text`, or `auto` (the
default): text when stderr is a terminal (`make run` in a shell), JSON otherwise (containers, files, pipes, `make
logs`), so a person reads lines and a collector parses them.

Known secret values (API keys, the JWT secret, the Mongo URI, passwords, the webhook URL) and anything shaped like a
bearer token or a JWT are replaced by `[redacted]` in every line, whatever logged them.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import time
from typing import Iterable, Iterator

_CONTEXT_KEYS = ("run_id", "request_id", "stage", "source", "rows_in", "rows_out", "quarantined", "status",
                 "exit_status", "function", "url")
_TOKENS = re.compile(r"(?i)\bbearer\s+[\w.~+/=-]+|\beyJ[\w-]+\.[\w-]+\.[\w-]*")
REDACTED = "[redacted]"
_context: contextvars.ContextVar[dict] = contextvars.ContextVar("log_context", default={})
_configured = False


@contextlib.contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Records logged by this thread inside the block carry `fields` (None values are left out)."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def current_log_context() -> dict:
    """The fields this thread's records carry now (e.g. to pass a request id on to a called service)."""
    return dict(_context.get())


def set_log_context(**fields: object) -> None:
    """Like `log_context`, for the rest of this thread's life (a worker thread that serves one pass)."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})


class Redactor:
    """Replaces secret values and token-shaped strings in a line."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self.secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return _TOKENS.sub(REDACTED, text)


def _fields(record: logging.LogRecord) -> dict:
    fields = dict(_context.get())
    fields.update({key: getattr(record, key) for key in _CONTEXT_KEYS if hasattr(record, key)})
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, service, logger, message, context fields, exception."""

    converter = time.gmtime

    def __init__(self, service: str | None = None, redact: Redactor | None = None) -> None:
        super().__init__()
        self.service, self.redact = service, redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return self.redact(json.dumps(entry, default=str))


class TextFormatter(logging.Formatter):
    """`18:08:15 INFO  extract_source_b common.runs: run … succeeded  run_id=…` (local time, for a terminal)."""

    def __init__(self, service: str | None = None, redact: Redactor | None = None) -> None:
        super().__init__()
        self.service, self.redact = service, redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        context = "  ".join(f"{key}={value}" for key, value in _fields(record).items()
                            if key in ("run_id", "request_id", "exit_status"))
        line = (f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {self.service or '-'} "
                f"{record.name}: {record.getMessage()}{'  ' + context if context else ''}")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return self.redact(line)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (test runners swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def formatter_for(fmt: str = "auto", service: str | None = None,
                  secrets: Iterable[str | None] = ()) -> logging.Formatter:
    """The formatter `LOG_FORMAT` asks for (`auto`: text on a terminal, else JSON)."""
    if fmt == "auto":
        fmt = "text" if _is_terminal(sys.stderr) else "json"
    kind = TextFormatter if fmt == "text" else JsonFormatter
    return kind(service, Redactor(secrets))


def configure_logging(level: str = "INFO", fmt: str = "auto", service: str | None = None,
                      secrets: Iterable[str | None] = ()) -> None:
    """Install the handler on the root logger once per process (later calls change nothing)."""
    global _configured
    if _configured:
        return
    handler = _StderrHandler()
    handler.setFormatter(formatter_for(fmt, service, secrets))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    _configured = True


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def secret_values(settings) -> list[str]:
    """The values of the settings kept out of repr (API keys, passwords, the JWT secret, URIs with credentials)."""
    import dataclasses

    return [value for f in dataclasses.fields(settings) if not f.repr
            and isinstance(value := getattr(settings, f.name), str) and value]
