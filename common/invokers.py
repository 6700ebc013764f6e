"""How the orchestrator reaches a stage: in this process, or over HTTP to the stage's own function.

Both answer with the stage's run as a dict (the ledger entry `Run.to_dict()` gives, as the stage functions return
it under `"run"`), so the orchestrator neither knows nor cares where a stage ran. A stage that could not be reached
at all is reported as a failed run with the reason and no run id: there is no ledger entry to point to.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Mapping
from urllib.parse import urlsplit

import requests

from common.config import Settings
from common.errors import ConfigError
from common.pipeline import run_extract, run_transform
from common.sources import REGISTRY, TRANSFORM_FUNCTION, declared
from common.wiring import Wiring

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

    def __init__(self, urls: Mapping[str, str], timeout_s: float, connect_timeout_s: float = 10.0) -> None:
        self.urls, self.timeout_s, self.connect_timeout_s = dict(urls), timeout_s, connect_timeout_s

    @classmethod
    def from_settings(cls, settings: Settings, slack_s: float = 60.0) -> "HttpInvoker":
        """Stage URLs from EXTRACT_SOURCE_A_URL ... TRANSFORM_LOAD_URL; every one must be set."""
        urls = {source.function: source.url(settings) for source in REGISTRY}
        urls[TRANSFORM_FUNCTION] = settings.transform_load_url
        missing = [f"{function.upper()}_URL" for function, url in urls.items() if not url]
        if missing:
            raise ConfigError(f"the HTTP stage invoker needs every stage URL; not set: {', '.join(missing)}")
        return cls(urls, timeout_s=settings.invocation_budget_s + slack_s)

    def extract(self, source: str) -> dict:
        source_name = declared(source).name
        return self._post(declared(source).function, "extract", source_name)

    def transform(self) -> dict:
        return self._post(TRANSFORM_FUNCTION, "transform_load", None)

    def _post(self, function: str, stage: str, source: str | None) -> dict:
        url, started = self.urls[function], time.perf_counter()
        where = _origin(url)  # a URL's path or query may carry a token: only its origin goes into a reason
        try:
            response = requests.post(url, timeout=(self.connect_timeout_s, self.timeout_s))
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
        return unreached(stage, source, f"{function}: HTTP {response.status_code} from {where}: {message}", started)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _short(exc: Exception) -> str:
    text = str(exc)
    return (text.rsplit(": ", 1)[-1] if "Caused by" in text else text)[:200]
