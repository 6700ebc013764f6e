"""The hourly trigger (Cloud Scheduler stand-in): POST each extract, then transform_load, and report.

    python -m local.trigger --base-url http://127.0.0.1 --every 3600
Stage URLs come from EXTRACT_SOURCE_B_URL, TRANSFORM_LOAD_URL, ... or are derived from --base-url/--port.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable

import requests

EXTRACTS = ("extract_source_a", "extract_source_b", "extract_source_c")
"""Extract stages the trigger runs, in order, before transform_load."""
STAGES = (*EXTRACTS, "transform_load")


@dataclass(frozen=True)
class Endpoints:
    urls: dict[str, str]

    @classmethod
    def from_urls(cls, urls: dict[str, str]) -> "Endpoints":
        return cls({name: urls[name] for name in STAGES})

    @classmethod
    def from_env(cls, base_url: str, base_port: int) -> "Endpoints":
        derived = {name: f"{base_url}:{base_port + 1 + i}" for i, name in enumerate(EXTRACTS)}  # as run_local
        derived["transform_load"] = f"{base_url}:{base_port + 4}"
        return cls({name: os.environ.get(f"{name.upper()}_URL", derived[name]) for name in STAGES})


def wait_until_up(urls: Iterable[str], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    for url in urls:
        while True:
            try:
                requests.get(url, timeout=2)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not come up within {timeout_s:.0f}s") from None
                time.sleep(0.2)


def call_stage(name: str, url: str, timeout_s: float = 600.0) -> dict:
    try:
        response = requests.post(url, timeout=timeout_s)
        body = response.json()
    except (requests.RequestException, ValueError) as exc:
        return {"stage": name, "http": None, "status": "failed", "error": str(exc)}
    run = body.get("run") or {}
    summary = run.get("summary") or {}
    reason = (summary.get("errors") or summary.get("warnings") or [None])[0] or body.get("error")
    return {"stage": name, "http": response.status_code, "status": run.get("status", "failed"),
            "run_id": run.get("run_id"), "rows_in": run.get("rows_in"), "rows_out": run.get("rows_out"),
            "quarantined": run.get("quarantined"), "reason": reason}


def run_pipeline(endpoints: Endpoints) -> bool:
    """One pipeline pass: the extracts side by side (each has its own lease and rate budget), then
    transform_load. True when every stage succeeded or returned partial."""
    with ThreadPoolExecutor(max_workers=len(EXTRACTS)) as pool:
        results = list(pool.map(lambda name: call_stage(name, endpoints.urls[name]), EXTRACTS))
    results.append(call_stage("transform_load", endpoints.urls["transform_load"]))
    for result in results:
        print(json.dumps({k: v for k, v in result.items() if v is not None}), flush=True)
    return all(result["status"] in ("succeeded", "partial") for result in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="port of the API; stages follow it")
    parser.add_argument("--every", type=float, default=3600.0)
    parser.add_argument("--once", action="store_true")
    args = parser.parse_args()
    endpoints = Endpoints.from_env(args.base_url, args.port)
    wait_until_up(endpoints.urls.values(), timeout_s=120)
    while True:
        ok = run_pipeline(endpoints)
        if args.once:
            return 0 if ok else 1
        time.sleep(args.every)


if __name__ == "__main__":
    sys.exit(main())
