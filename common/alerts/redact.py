"""Scrubbing of text that leaves the process (messages, summaries, logs): error text quotes URLs, and URLs carry
credentials — the configured secrets themselves, `user:password@` parts, key and token parameters."""

from __future__ import annotations

import re
from typing import Iterable
from urllib.parse import urlsplit

from common.config import Settings

MASK = "***"
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
_SECRET_PARAMS = re.compile(
    r"(?i)\b((?:[a-z0-9_-]*api[_-]?key|key|token|access_token|secret|password|passwd|pwd|sig|signature)=)"
    r"[^&\s'\"]+")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[a-z0-9._~+/=-]+")


class Redactor:
    """Replaces every known secret (and, for a URL secret, its path: a Slack webhook's token lives there) and
    everything that looks like a credential with `***`."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        known: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            known.add(secret)
            if secret.startswith(("http://", "https://")):
                path = urlsplit(secret).path
                if len(path) > 8:  # a token-bearing path; "/" or "/hook" would mask ordinary words
                    known.add(path)
        self._known = sorted(known, key=len, reverse=True)  # longest first: a URL before its own path

    def __call__(self, text: str) -> str:
        for secret in self._known:
            text = text.replace(secret, MASK)
        text = _URL_USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)
        text = _SECRET_PARAMS.sub(lambda m: m.group(1) + MASK, text)
        return _BEARER.sub(lambda m: m.group(1) + " " + MASK, text)


def redactor_for(settings: Settings) -> Redactor:
    """A redactor that knows every secret the settings hold."""
    return Redactor([settings.alert_email_pass, settings.alert_webhook_url, settings.source_a_api_key,
                     settings.source_c_api_key, settings.mongodb_uri])
