"""Use cases the functions, the CLI and the trigger call: extract one source, transform/load, or both."""

from __future__ import annotations

from common.clock import Deadline
from common.extract import Progress, extract_csv
from common.runs import run_stage
from common.sources import source_spec
from common.store import Run
from common.transform import transform_load
from common.wiring import Wiring


def run_extract(source: str, wiring: Wiring, progress: Progress | None = None) -> Run:
    """One extract invocation for `source`, under its lease, within the invocation budget."""
    settings, store, clock = wiring.settings, wiring.store, wiring.clock
    spec = source_spec(source, settings)
    deadline = Deadline(clock, settings.invocation_budget_s)
    return run_stage(
        "extract", spec.name, store, lease_ttl_s=settings.lease_ttl_s, clock=clock,
        work=lambda run, keeper: extract_csv(spec, store, settings, run, keeper, deadline, progress),
    )


def run_transform(wiring: Wiring) -> Run:
    """One transform/load invocation over every pending raw batch."""
    settings, store, clock = wiring.settings, wiring.store, wiring.clock
    deadline = Deadline(clock, settings.invocation_budget_s)
    return run_stage(
        "transform_load", None, store, lease_ttl_s=settings.lease_ttl_s, clock=clock,
        work=lambda run, keeper: transform_load(store, settings, run, keeper, deadline, clock),
    )
