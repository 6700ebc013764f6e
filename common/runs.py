"""The run ledger and single flight: every stage invocation is one recorded run under one fenced lease."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from typing import Callable

from common.clock import Clock, iso_utc
from common.errors import EtlError, LeaseLost
from common.ids import new_run_id
from common.logs import log_context
from common.store import Fence, Run, Store
from common.store.fenced import FencedStore

log = logging.getLogger(__name__)

FINAL_STATUSES = ("succeeded", "partial", "failed", "skipped")


class LeaseKeeper:
    """Holds a stage's lease for one run: a heartbeat thread renews it every quarter TTL — through rate-limit
    waits, Retry-After sleeps, slow requests and long batches alike — until release, or until the invocation
    has overrun its budget (a hung run must not hold the stage forever). `store` is the run's fenced view."""

    def __init__(self, store: Store, name: str, owner: str, ttl_s: float, clock: Clock, *,
                 hold_s: float | None = None, heartbeat: bool = True) -> None:
        self.raw_store, self.name, self.owner, self.ttl_s, self.clock = store, name, owner, ttl_s, clock
        self.hold_s, self.heartbeat = hold_s, heartbeat
        self.fence: Fence | None = None
        self.store: Store = store
        self._renewed_at = clock()
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        self._renewed_at = self.clock()
        self.fence = self.raw_store.acquire_lease(self.name, self.owner, self.ttl_s, self._renewed_at)
        if self.fence is None:
            return False
        self.store = FencedStore(self.raw_store, self.fence)  # type: ignore[assignment]
        if self.heartbeat:
            context = contextvars.copy_context()  # its log lines carry the run's run_id too
            self._thread = threading.Thread(target=context.run, args=(self._beat,), name=f"lease-{self.name}",
                                            daemon=True)
            self._thread.start()
        return True

    def _beat(self) -> None:
        hold_until = self.clock() + self.hold_s if self.hold_s is not None else None
        while not self._stop.wait(self.ttl_s / 4):
            if hold_until is not None and self.clock() > hold_until:
                log.warning("lease %s: invocation overran its budget; no longer renewing", self.name)
                return
            try:
                if not self.raw_store.renew_lease(self.fence, self.ttl_s, self.clock()):
                    self._lost.set()
                    return
            except EtlError as exc:  # a slow or failing store: try again next beat
                log.warning("lease %s: heartbeat renewal failed: %s", self.name, exc.message)

    def keep_alive(self) -> None:
        """Raise LeaseLost if the lease was taken over; renew once a fifth of the TTL has passed on our clock."""
        if self._lost.is_set():
            raise LeaseLost(f"lease {self.name} was lost (expired and taken over); stopping", lease=self.name)
        now = self.clock()
        if now - self._renewed_at < self.ttl_s / 5:
            return
        if not self.raw_store.renew_lease(self.fence, self.ttl_s, now):
            self._lost.set()
            raise LeaseLost(f"lease {self.name} was lost (expired and taken over); stopping", lease=self.name)
        self._renewed_at = now

    def sleep(self, seconds: float, sleep: Callable[[float], None] = time.sleep) -> None:
        """Wait, then fail fast if the lease was lost meanwhile."""
        sleep(seconds)
        self.keep_alive()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl_s)
        if self.fence is not None:
            self.raw_store.release_lease(self.fence)


Work = Callable[[Run, LeaseKeeper], str]
"""A stage body: does the work (writing through `keeper.store`), updates the run's counters and summary,
returns its final status."""


def run_stage(stage: str, source: str | None, store: Store, *, lease_ttl_s: float, clock: Clock, work: Work,
              budget_s: float | None = None, heartbeat: bool = True) -> Run:
    """Run `work` under the stage's lease and record it in the ledger; never raises for expected failures.

    Order matters: the final status is saved (fenced) before the lease is released, so a finished run can never
    be mistaken for an abandoned one; a run that lost its lease writes nothing more, its entry stays as the new
    owner marked it."""
    started = time.perf_counter()
    run = Run(run_id=new_run_id(stage), stage=stage, source=source, started_at=iso_utc(clock()))
    with log_context(run_id=run.run_id):  # every line logged for this run, the lease's heartbeat included
        return _run_under_lease(run, store, started, lease_ttl_s=lease_ttl_s, clock=clock, work=work,
                                budget_s=budget_s, heartbeat=heartbeat)


def _run_under_lease(run: Run, store: Store, started: float, *, lease_ttl_s: float, clock: Clock, work: Work,
                     budget_s: float | None, heartbeat: bool) -> Run:
    stage, source = run.stage, run.source
    keeper = LeaseKeeper(store, f"{stage}:{source}" if source else stage, run.run_id, lease_ttl_s, clock,
                         hold_s=None if budget_s is None else budget_s + lease_ttl_s, heartbeat=heartbeat)
    try:
        if not keeper.acquire():
            run.status = "skipped"
            run.summary["warnings"].append(f"another invocation holds the lease {keeper.name}; nothing done")
            return _finish(store, run, started, clock)
        _fail_abandoned_runs(keeper.store, run)
        keeper.store.save_run(run)
    except EtlError as exc:
        _release(keeper)
        run.status = "failed"
        run.summary["errors"].append(exc.message)
        return run  # the store itself is unavailable: nothing can be recorded
    try:
        run.status = work(run, keeper)
    except LeaseLost as exc:
        run.status = "failed"
        run.summary["errors"].append(f"{exc.message}; another invocation took the stage over and goes on")
    except EtlError as exc:
        run.status = "failed"
        run.summary["errors"].append(exc.message)
    except Exception as exc:  # a bug: record it, do not leak a traceback to the caller
        log.exception("unexpected error in %s run %s", stage, run.run_id)
        run.status = "failed"
        run.summary["errors"].append(f"internal error: {type(exc).__name__}: {exc}")
    try:
        return _finish(keeper.store, run, started, clock)
    except LeaseLost as exc:
        run.status = "failed"
        run.summary["errors"].append(f"{exc.message}: the ledger keeps what the new owner recorded")
        return run
    except EtlError as exc:
        run.status = "failed"
        run.summary["errors"].append(exc.message)
        return run
    finally:
        _release(keeper)


def _release(keeper: LeaseKeeper) -> None:
    try:
        keeper.release()
    except EtlError as exc:  # the lease then expires on its own
        log.warning("could not release lease %s: %s", keeper.name, exc.message)


def _finish(store: Store, run: Run, started: float, clock: Clock) -> Run:
    run.finished_at = iso_utc(clock())
    run.duration_ms = round((time.perf_counter() - started) * 1000)
    if not store.save_run(run):
        log.warning("run %s: the ledger already holds a final status; %s not recorded", run.run_id, run.status)
    log.info("run %s %s", run.run_id, run.status, extra={"run_id": run.run_id, "stage": run.stage,
                                                        "source": run.source, "rows_in": run.rows_in,
                                                        "rows_out": run.rows_out, "quarantined": run.quarantined})
    return run


def _fail_abandoned_runs(store: Store, current: Run) -> None:
    """Every run of this stage still `running` while we hold its lease died or stalled mid-way (crash, kill,
    timeout, pause): however many runs came after it, it is marked. A stalled one that wakes is fenced off."""
    for stale in store.running_runs(current.stage, current.source):
        if stale.run_id != current.run_id:
            stale.status = "failed"
            stale.finished_at = stale.finished_at or current.started_at  # when it was found dead
            stale.summary.setdefault("errors", []).append(
                f"abandoned: the invocation ended without finishing; resumed by run {current.run_id}"
            )
            store.save_run(stale)
