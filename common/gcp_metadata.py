"""Credentials on Google Cloud from the metadata server, the way a deployed function gets them without a key file.

Two kinds: an OAuth access token for Google APIs (reading Source B from Cloud Storage) and an OIDC identity token
for one audience (calling a private stage function, whose URL is the audience). Both are cached until a minute
before they expire, so a run makes one metadata request per token, not one per HTTP request. Nothing here runs at
import time, and the tokens never reach a log line or an error message.
"""

from __future__ import annotations

import base64
import functools
import json
import threading
import time
from typing import Callable

import requests

from common.errors import SourceUnavailable

DEFAULT_HOST = "metadata.google.internal"
ACCOUNT_PATH = "/computeMetadata/v1/instance/service-accounts/default"
REFRESH_EARLY_S = 60.0
TIMEOUT_S = 5.0


class MetadataServer:
    """Tokens of the service account the function runs as; `host` may be overridden (GCE_METADATA_HOST)."""

    def __init__(self, host: str = DEFAULT_HOST, clock: Callable[[], float] = time.time,
                 session: requests.Session | None = None) -> None:
        self.base = f"http://{host}{ACCOUNT_PATH}"
        self.clock, self.session = clock, session or requests.Session()
        self._cache: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def access_token(self) -> str:
        """An OAuth2 access token (scope: what the service account is granted; Cloud Storage reads need
        roles/storage.objectViewer on the bucket)."""
        return self._cached("access", self._fetch_access_token)

    def id_token(self, audience: str) -> str:
        """A Google-signed OIDC identity token whose `aud` is `audience` (the receiving function's URL)."""
        return self._cached(f"id:{audience}", lambda: self._fetch_id_token(audience))

    def _cached(self, key: str, fetch: Callable[[], tuple[str, float]]) -> str:
        with self._lock:
            token, expires_at = self._cache.get(key, ("", 0.0))
            if not token or self.clock() >= expires_at - REFRESH_EARLY_S:
                token, expires_at = fetch()
                self._cache[key] = (token, expires_at)
            return token

    def _fetch_access_token(self) -> tuple[str, float]:
        body = self._get("/token", {})
        try:
            answer = json.loads(body)
            return str(answer["access_token"]), self.clock() + float(answer.get("expires_in", 300))
        except (ValueError, KeyError, TypeError):
            raise SourceUnavailable("metadata server: unreadable access token answer") from None

    def _fetch_id_token(self, audience: str) -> tuple[str, float]:
        token = self._get("/identity", {"audience": audience, "format": "full"}).strip()
        return token, _expiry(token, default=self.clock() + 600)

    def _get(self, path: str, params: dict) -> str:
        try:
            response = self.session.get(self.base + path, params=params, timeout=TIMEOUT_S,
                                        headers={"Metadata-Flavor": "Google"})
        except requests.RequestException as exc:
            raise SourceUnavailable(f"metadata server unreachable ({type(exc).__name__}): not running on Google "
                                    "Cloud? Locally, use STORAGE_EMULATOR_HOST / STAGE_AUTH=none") from None
        if response.status_code != 200:
            raise SourceUnavailable(f"metadata server answered {response.status_code} for {path.strip('/')}")
        return response.text


def _expiry(token: str, default: float) -> float:
    """The `exp` claim of a JWT, read without verifying it (we only decide when to fetch a new one)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return default


@functools.lru_cache(maxsize=4)
def metadata_server(host: str = DEFAULT_HOST) -> MetadataServer:
    """The process's one client per host, so its token cache outlives a single run (built on first use)."""
    return MetadataServer(host)
