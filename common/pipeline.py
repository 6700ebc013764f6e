"""Use cases the functions, the CLI and the trigger call: extract one source, transform/load, or both."""

from __future__ import annotations

import requests

from common.clock import Deadline
from common.config import parse_rate
from common.extract import Progress, extract_csv
from common.extract_http import extract_http
from common.runs import LeaseKeeper, run_stage
from common.sources import SourceSpec, source_spec
from common.sources.http_client import PageFetcher
from common.sources.ratelimit import SourceLimiter
from common.store import Run
from common.transform import transform_load
from common.wiring import Wiring


def run_extract(source: str, wiring: Wiring, progress: Progress | None = None) -> Run:
    """One extract invocation for `source`, under its lease, within the invocation budget."""
    settings, store, clock = wiring.settings, wiring.store, wiring.clock
    spec = source_spec(source, settings)
    deadline = Deadline(clock, settings.invocation_budget_s)

    def work(run: Run, keeper: LeaseKeeper) -> str:
        if spec.kind == "csv":
            return extract_csv(spec, keeper.store, settings, run, keeper, deadline, progress, sleep=wiring.sleep)
        with requests.Session() as session:
            return extract_http(spec, keeper.store, run, keeper, deadline,
                                http_fetcher(spec, wiring, deadline, session),
                                pass_interval_s=settings.source_pass_interval_s)

    return run_stage("extract", spec.name, store, lease_ttl_s=settings.lease_ttl_s, clock=clock, work=work,
                     budget_s=settings.invocation_budget_s)


def http_fetcher(spec: SourceSpec, wiring: Wiring, deadline: Deadline, session: requests.Session) -> PageFetcher:
    """A page fetcher drawing on the source's shared budget."""
    cap = wiring.settings.max_server_wait_s
    limiter = SourceLimiter(wiring.store, spec.name, parse_rate(spec.http.rate), wiring.clock, wiring.sleep,
                            max_blocked_s=cap)
    return PageFetcher(spec, session, limiter, deadline, wiring.clock, wiring.sleep, max_server_wait_s=cap)


def run_transform(wiring: Wiring) -> Run:
    """One transform/load invocation over every pending raw batch."""
    settings, store, clock = wiring.settings, wiring.store, wiring.clock
    deadline = Deadline(clock, settings.invocation_budget_s)
    return run_stage(
        "transform_load", None, store, lease_ttl_s=settings.lease_ttl_s, clock=clock,
        budget_s=settings.invocation_budget_s,
        work=lambda run, keeper: transform_load(keeper.store, settings, run, keeper, deadline, clock),
    )


def run_replay(wiring: Wiring, source: str | None = None) -> Run:
    """Replay unresolved quarantine entries (of one source, or all) with the mappings in force now."""
    from common.replay import replay_quarantine

    settings, store, clock = wiring.settings, wiring.store, wiring.clock
    source = source_spec(source, settings).name if source else None
    deadline = Deadline(clock, settings.invocation_budget_s)
    return run_stage(
        "quarantine_replay", source, store, lease_ttl_s=settings.lease_ttl_s, clock=clock,
        budget_s=settings.invocation_budget_s,
        work=lambda run, keeper: replay_quarantine(keeper.store, settings, run, keeper, deadline, clock, source),
    )
