"""Normalize the next raw batch in a worker process while the current one is written (uses a spare core).

Only normalization moves: writes, checkpoints and the lease stay in the invocation's own process, in order, so
crash safety is unchanged. The worker starts only once normalizing has cost the run `PREFETCH_AFTER_S` in total
(not per batch: a 20,000-row batch takes ~50 ms on an idle machine, so a per-batch test started the worker only
when the machine happened to be busy), so small runs never pay for a process start; `TRANSFORM_WORKERS=0` turns
it off.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from common import batches
from common.clock import Clock, system_clock
from common.config import Settings
from common.normalize import Normalized
from common.store import RawBatch

log = logging.getLogger(__name__)
PREFETCH_AFTER_S = 0.1
_worker: dict = {}


def _normalize_in_worker(settings: Settings, batch: RawBatch, run_id: str, ingested_at: str, now: float):
    """Runs in the worker process: its own store connection and mappers for this run, on the run's clock (`now`
    is the invocation's time: date-format inference judges "in the future" by it)."""
    from common.wiring import build_store

    if _worker.get("run_id") != run_id:
        store = _worker.get("store") or build_store(settings)
        offset = now - system_clock()
        _worker.update(run_id=run_id, store=store,
                       mappers=batches.Mappers(store, settings, run_id, lambda: system_clock() + offset))
    result = batches.normalize_batch(batch, _worker["mappers"], run_id, ingested_at)
    return result, _worker["mappers"].decisions()


class Normalizer:
    """`result(batch)` for the batch about to be written; `prefetch(batch)` for the one after it."""

    def __init__(self, settings: Settings, mappers, run_id: str, clock: Clock = system_clock) -> None:
        self.settings, self.mappers, self.run_id, self.clock = settings, mappers, run_id, clock
        self.pool: ProcessPoolExecutor | None = None
        self.ahead: tuple[tuple[str, int], Future] | None = None
        self.worth_it = False
        self.spent_s = 0.0  # normalizing in this process so far
        self.broken = False  # a worker died in this run: no new one

    def __enter__(self) -> "Normalizer":
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)  # reaped: its CPU and memory show in rusage

    def result(self, batch: RawBatch, ingested_at: str) -> Normalized:
        if self.ahead is not None:
            key, future = self.ahead
            self.ahead = None
            if key == (batch.batch_id, batch.version):  # still the batch we prefetched (not rewritten since)
                try:
                    result, decisions = future.result()
                except BrokenProcessPool:  # the worker died (killed, out of memory): do the batch here instead
                    log.warning("normalize worker died; normalizing batch %s in-process and going on without it",
                                batch.batch_id)
                    self.pool.shutdown(wait=False, cancel_futures=True)
                    self.pool, self.broken = None, True
                else:
                    self.mappers.merge(decisions)
                    return result
        started = time.perf_counter()
        result = batches.normalize_batch(batch, self.mappers, self.run_id, ingested_at)
        self.spent_s += time.perf_counter() - started
        self.worth_it = self.spent_s >= PREFETCH_AFTER_S
        return result

    def prefetch(self, batch: RawBatch, ingested_at: str) -> None:
        if not (self.worth_it or self.pool) or self.settings.transform_workers < 1 or self.broken:
            return
        if self.pool is None:
            self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        future = self.pool.submit(_normalize_in_worker, self.settings, batch, self.run_id, ingested_at, self.clock())
        self.ahead = ((batch.batch_id, batch.version), future)
