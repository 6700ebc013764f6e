"""How the orchestrator reaches a stage: in this process, or over HTTP to the stage's own function.

Both answer with the stage's run as a dict (the ledger entry `Run.to_dict()` gives, as the stage functions return
it under `"run"`), so the orchestrator neither knows nor cares where a stage ran. A stage that could not be reached
at all is reported as a failed run with the reason and no run id: there is no ledger entry to point to.

Deployed on Google Cloud, the stage functions are private (`--no-allow-unauthenticated`): with `STAGE_AUTH=oidc`
each POST carries `Authorization: Bearer <identity token>`, minted by the metadata server for the stage's URL (its
audience) under the caller's service account, which needs `roles/run.invoker` on the stage.
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Callable, Mapping
from urllib.parse import urlsplit

import requests

from common.config import Settings
from common.errors import ConfigError, EtlError
from common.logs import current_log_context
from common.pipeline import run_extract, run_transform
from common.sources import REGISTRY, TRANSFORM_FUNCTION, declared
from common.wiring import Wiring

if TYPE_CHECKING:
    from common.gcp_metadata import MetadataServer

ANSWERED = (200, 409, 500)
"""Statuses a stage function answers with its run (done or partial, skipped, failed: see STATUS_CODES)."""


class StageInvoker(ABC):
    """Invoke one stage once; the answer is that invocation's run (a dict), whatever happened."""

    @abstractmethod
    def extract(self, source: str) -> dict:
        """One extract invocation of `source` (a registry name)."""

    @abstractmethod
    def transform(self) -> dict:
        """One transform/load invocation."""


def invoker_for(wiring: Wiring) -> StageInvoker:
    """Over HTTP when every stage URL is set (the API's /refresh in a deployment where each stage is its own
    function), else in this process."""
    settings = wiring.settings
    urls = [source.url(settings) for source in REGISTRY] + [settings.transform_load_url]
    return HttpInvoker.from_settings(settings) if all(urls) else InProcessInvoker(wiring)


def unreached(stage: str, source: str | None, reason: str, started: float) -> dict:
    """The run dict of an invocation that never produced a run of its own."""
    return {"run_id": None, "stage": stage, "source": source, "status": "failed", "started_at": None,
            "finished_at": None, "duration_ms": round((time.perf_counter() - started) * 1000), "rows_in": 0,
            "rows_out": 0, "quarantined": 0, "checkpoint": None, "summary": {"warnings": [], "errors": [reason]}}


class InProcessInvoker(StageInvoker):
    """Runs the stage functions' use cases in this process (the CLI, tests, the bench)."""

    def __init__(self, wiring: Wiring) -> None:
        self.wiring = wiring

    def extract(self, source: str) -> dict:
        return run_extract(source, self.wiring).to_dict()

    def transform(self) -> dict:
        return run_transform(self.wiring).to_dict()


class HttpInvoker(StageInvoker):
    """POSTs to each stage's function (the trigger, and deployments where the stages are separate functions).

    `timeout_s` bounds one call: a stage stops itself at its invocation budget, so an answer that takes longer than
    that (plus slack for a cold start) is not coming; the stage is reported failed and its lease runs out."""

    def __init__(self, urls: Mapping[str, str], timeout_s: float, connect_timeout_s: float = 10.0,
                 id_token: Callable[[str], str] | None = None) -> None:
        """`id_token(audience)`: an OIDC identity token for a stage URL (None: requests carry no credentials)."""
        self.urls, self.timeout_s, self.connect_timeout_s = dict(urls), timeout_s, connect_timeout_s
        self.id_token = id_token

    @classmethod
    def from_settings(cls, settings: Settings, slack_s: float = 60.0,
                      metadata: "MetadataServer | None" = None) -> "HttpInvoker":
        """Stage URLs from EXTRACT_SOURCE_A_URL ... TRANSFORM_LOAD_URL; every one must be set. With STAGE_AUTH=oidc,
        identity tokens come from `metadata` (default: this process's metadata-server client)."""
        urls = {source.function: source.url(settings) for source in REGISTRY}
        urls[TRANSFORM_FUNCTION] = settings.transform_load_url
        missing = [f"{function.upper()}_URL" for function, url in urls.items() if not url]
        if missing:
            raise ConfigError(f"the HTTP stage invoker needs every stage URL; not set: {', '.join(missing)}")
        id_token = None
        if settings.stage_auth == "oidc":
            from common.gcp_metadata import metadata_server

            id_token = (metadata or metadata_server()).id_token
        return cls(urls, timeout_s=settings.invocation_budget_s + slack_s, id_token=id_token)

    def extract(self, source: str) -> dict:
        source_name = declared(source).name
        return self._post(declared(source).function, "extract", source_name)

    def transform(self) -> dict:
        return self._post(TRANSFORM_FUNCTION, "transform_load", None)

    def _post(self, function: str, stage: str, source: str | None) -> dict:
        url, started = self.urls[function], time.perf_counter()
        where = _origin(url)  # a URL's path or query may carry a token: only its origin goes into a reason
        context = current_log_context()  # the stage's log lines and answer carry the caller's request (or pass) id
        headers = {"X-Request-ID": str(context.get("request_id") or context.get("run_id") or uuid.uuid4().hex)}
        if self.id_token:
            try:
                headers["Authorization"] = f"Bearer {self.id_token(_audience(url))}"
            except EtlError as exc:
                return unreached(stage, source, f"{function}: no identity token to call {where}: {exc}", started)
        try:
            response = requests.post(url, headers=headers, timeout=(self.connect_timeout_s, self.timeout_s))
        except requests.Timeout:
            return unreached(stage, source, f"{function}: no answer from {where} within {self.timeout_s:.0f}s; "
                                            "the stage may still be running", started)
        except requests.RequestException as exc:
            return unreached(stage, source, f"{function}: cannot reach {where}: {_short(exc)}", started)
        try:
            body = response.json()
        except ValueError:
            body = None
        run = body.get("run") if isinstance(body, dict) else None
        if response.status_code in ANSWERED and isinstance(run, dict) and run.get("status"):
            return run
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else (response.text or "")[:200]
        if response.status_code in (401, 403):
            message += (" (a private stage: set STAGE_AUTH=oidc and grant the caller's service account "
                        "roles/run.invoker on it)")
        return unreached(stage, source, f"{function}: HTTP {response.status_code} from {where}: {message}", started)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _audience(url: str) -> str:
    """The audience an identity token is minted for: the stage URL without query or fragment."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _short(exc: Exception) -> str:
    text = str(exc)
    return (text.rsplit(": ", 1)[-1] if "Caused by" in text else text)[:200]
