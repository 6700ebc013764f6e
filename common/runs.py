"""The run ledger and single flight: every stage invocation is one recorded run under one lease."""

from __future__ import annotations

import logging
import time
from typing import Callable

from common.clock import Clock, iso_utc
from common.errors import EtlError, LeaseLost
from common.ids import new_run_id
from common.store import Run, Store

log = logging.getLogger(__name__)

FINAL_STATUSES = ("succeeded", "partial", "failed", "skipped")


class LeaseKeeper:
    """Holds a stage's lease for one run and renews it as work progresses."""

    def __init__(self, store: Store, name: str, owner: str, ttl_s: float, clock: Clock) -> None:
        self.store, self.name, self.owner, self.ttl_s, self.clock = store, name, owner, ttl_s, clock
        self._renewed_at = clock()

    def acquire(self) -> bool:
        self._renewed_at = self.clock()
        return self.store.acquire_lease(self.name, self.owner, self.ttl_s, self._renewed_at)

    def keep_alive(self) -> None:
        """Renew once a fifth of the TTL has passed; raise LeaseLost if someone else owns it now."""
        now = self.clock()
        if now - self._renewed_at < self.ttl_s / 5:
            return
        if not self.store.renew_lease(self.name, self.owner, self.ttl_s, now):
            raise LeaseLost(f"lease {self.name} was lost (expired and taken over); stopping")
        self._renewed_at = now

    def release(self) -> None:
        self.store.release_lease(self.name, self.owner)


Work = Callable[[Run, LeaseKeeper], str]
"""A stage body: does the work, updates the run's counters and summary, returns its final status."""


def run_stage(stage: str, source: str | None, store: Store, *, lease_ttl_s: float, clock: Clock, work: Work) -> Run:
    """Run `work` under the stage's lease and record it in the ledger; never raises for expected failures."""
    started = time.perf_counter()
    run = Run(run_id=new_run_id(stage), stage=stage, source=source, started_at=iso_utc(clock()))
    keeper = LeaseKeeper(store, f"{stage}:{source}" if source else stage, run.run_id, lease_ttl_s, clock)
    try:
        if not keeper.acquire():
            run.status = "skipped"
            run.summary["warnings"].append(f"another invocation holds the lease {keeper.name}; nothing done")
            return _finish(store, run, started, clock)
        _fail_abandoned_runs(store, run)
        store.save_run(run)
    except EtlError as exc:
        run.status = "failed"
        run.summary["errors"].append(exc.message)
        return run  # the store itself is unavailable: nothing can be recorded
    try:
        run.status = work(run, keeper)
    except LeaseLost as exc:
        run.status = "partial"
        run.summary["warnings"].append(exc.message)
    except EtlError as exc:
        run.status = "failed"
        run.summary["errors"].append(exc.message)
    except Exception as exc:  # a bug: record it, do not leak a traceback to the caller
        log.exception("unexpected error in %s run %s", stage, run.run_id)
        run.status = "failed"
        run.summary["errors"].append(f"internal error: {type(exc).__name__}: {exc}")
    try:
        keeper.release()
        return _finish(store, run, started, clock)
    except EtlError as exc:
        run.status = "failed"
        run.summary["errors"].append(exc.message)
        return run


def _finish(store: Store, run: Run, started: float, clock: Clock) -> Run:
    run.finished_at = iso_utc(clock())
    run.duration_ms = round((time.perf_counter() - started) * 1000)
    store.save_run(run)
    log.info("run %s %s", run.run_id, run.status, extra={"run_id": run.run_id, "stage": run.stage,
                                                        "source": run.source, "rows_in": run.rows_in,
                                                        "rows_out": run.rows_out, "quarantined": run.quarantined})
    return run


def _fail_abandoned_runs(store: Store, current: Run) -> None:
    """Runs of this stage still `running` while we hold its lease died mid-way (crash, kill, timeout)."""
    for stale in store.list_runs(stage=current.stage, source=current.source, limit=20):
        if stale.status == "running" and stale.run_id != current.run_id:
            stale.status = "failed"
            stale.summary.setdefault("errors", []).append(
                f"abandoned: the invocation ended without finishing; resumed by run {current.run_id}"
            )
            store.save_run(stale)
