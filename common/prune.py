"""Retention: keep the store bounded on a stack that runs for months (`etl prune`, and after every pass).

What goes, once older than its retention (Settings: RAW_RETENTION_DAYS, RUN_RETENTION_DAYS, QUARANTINE_RETENTION_DAYS):
- raw batches already transformed (`done`), by when they were first written. Never a pending batch, and never one
  an unresolved quarantine entry points at: `etl quarantine replay` re-reads rows from their batch. Nothing else
  reads a done batch: CSV corrections are detected from the checkpoint's chunk hashes, not from stored batches, and a
  batch read again after it was pruned is simply a new pending batch (its rows are upserts: loaded once);
- finished runs, by start. Never a `running` run, nor the newest run of each (stage, source, status) (health, alerts,
  /metrics' last-run gauges read those); the counts behind /metrics are kept apart and never go back;
- resolved quarantine entries, by resolution. Unresolved ones stay until they are resolved.
Normalized records are the product: they are kept.

Each step deletes at most `step` rows in one short transaction (so readers and writers wait for one step at most),
under the `prune` lease (two pruners never both run; a killed one is taken over after the TTL, and each step is
fenced, so a stalled one deletes nothing once taken over). Then the freed space is given back (SQLite: incremental
vacuum in short steps). Stops between steps at its deadline; the next prune goes on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from common.clock import Clock, Deadline, iso_utc
from common.config import Settings
from common.errors import EtlError, LeaseLost
from common.ids import new_run_id
from common.runs import LeaseKeeper
from common.store import Store

log = logging.getLogger(__name__)

LEASE = "prune"
STEP_ROWS = 1000
"""Rows per delete transaction: a 1M-row CSV's batches (50 of 20,000 rows, ~2.3 MB each) go in one step of a few ms
per batch; runs and quarantine entries are small rows."""
RECLAIM_BYTES = 8 << 20
"""Space given back per vacuum step (2,048 pages of 4 KB): each is one short write transaction."""
DAY_S = 86_400.0

OnStep = Callable[[str, int], None]


@dataclass(frozen=True)
class Retention:
    """How long each kind of housekeeping data is kept, in days."""

    raw_days: float
    run_days: float
    quarantine_days: float

    @classmethod
    def from_settings(cls, settings: Settings) -> "Retention":
        return cls(settings.raw_retention_days, settings.run_retention_days, settings.quarantine_retention_days)


def prune(store: Store, retention: Retention, *, clock: Clock, lease_ttl_s: float, deadline: Deadline,
          now: float | None = None, step: int = STEP_ROWS, on_step: OnStep | None = None,
          owner: str | None = None) -> dict:
    """Delete what retention allows, then give the space back; returns a summary (never raises for expected
    failures: `status` is succeeded, partial (deadline: the next prune goes on), skipped (another pruner holds the
    lease) or failed, with `error`). `now` moves the cutoffs (not the lease's clock): `etl prune --now`."""
    started = time.perf_counter()
    now = clock() if now is None else now
    summary: dict = {"status": "succeeded", "deleted": {"raw_batches": 0, "runs": 0, "quarantine": 0},
                     "reclaimed_bytes": 0, "size_bytes": {"before": None, "after": None}}
    keeper = LeaseKeeper(store, LEASE, owner or new_run_id("prune"), lease_ttl_s, clock,
                         hold_s=deadline.remaining() + lease_ttl_s)
    try:
        if not keeper.acquire():
            summary["status"] = "skipped"
            summary["warnings"] = [f"another prune holds the lease {LEASE}; nothing done"]
            return _finish(summary, started)
        summary["size_bytes"]["before"] = store.size_bytes()
        fenced = keeper.store
        kinds = (("raw_batches", fenced.prune_raw_batches, retention.raw_days),
                 ("runs", fenced.prune_runs, retention.run_days),
                 ("quarantine", fenced.prune_quarantine, retention.quarantine_days))
        for kind, delete, days in kinds:
            cutoff = iso_utc(now - days * DAY_S)
            while True:
                if deadline.near():
                    summary["status"] = "partial"
                    return _finish(summary, started, store)
                deleted = delete(cutoff, limit=step)
                summary["deleted"][kind] += deleted
                if deleted and on_step is not None:
                    on_step(kind, deleted)
                keeper.keep_alive()
                if deleted < step:
                    break
        while not deadline.near():
            reclaimed = store.reclaim_space(RECLAIM_BYTES)
            summary["reclaimed_bytes"] += reclaimed
            if not reclaimed:
                break
            if on_step is not None:
                on_step("reclaimed_bytes", reclaimed)
            keeper.keep_alive()
        return _finish(summary, started, store)
    except LeaseLost as exc:
        summary.update(status="failed", error=f"{exc.message}; another prune took over")
    except EtlError as exc:
        summary.update(status="failed", error=exc.message)
    finally:
        _release(keeper)
    return _finish(summary, started)


def _finish(summary: dict, started: float, store: Store | None = None) -> dict:
    if store is not None:
        summary["size_bytes"]["after"] = store.size_bytes()
    summary["duration_ms"] = round((time.perf_counter() - started) * 1000)
    return summary


def _release(keeper: LeaseKeeper) -> None:
    try:
        keeper.release()
    except EtlError as exc:  # the lease then expires on its own
        log.warning("could not release lease %s: %s", LEASE, exc.message)
