"""When the normalize worker starts: once the run has spent PREFETCH_AFTER_S normalizing in total, not only after
one batch happens to be slow (20,000-row batches take ~50 ms on an idle machine, under 0.1 s each)."""

from __future__ import annotations

from common import parallel
from common.config import Settings
from common.normalize import Normalized
from common.store import RawBatch


class FakePool:
    def __init__(self, *args, **kwargs) -> None:
        self.submitted: list[str] = []

    def submit(self, fn, settings, batch, *args):
        self.submitted.append(batch.batch_id)
        return None

    def shutdown(self, **kwargs) -> None:
        pass


def test_the_worker_starts_once_normalizing_has_cost_enough_in_total(monkeypatch):
    ticks = iter(x * 0.06 for x in range(100))  # every normalize_batch takes 0.06 s
    monkeypatch.setattr(parallel.time, "perf_counter", lambda: next(ticks))
    monkeypatch.setattr(parallel, "ProcessPoolExecutor", FakePool)
    monkeypatch.setattr("common.batches.normalize_batch", lambda *args: Normalized())
    batch = lambda n: RawBatch(f"b{n}", "source_b", "r", "csv_lines", "", 0)  # noqa: E731
    with parallel.Normalizer(Settings(transform_workers=1), mappers=None, run_id="r") as normalizer:
        normalizer.result(batch(1), "now")
        normalizer.prefetch(batch(2), "now")
        assert normalizer.pool is None  # 0.06 s so far: not worth a process start
        normalizer.result(batch(2), "now")
        normalizer.prefetch(batch(3), "now")
        assert normalizer.pool is not None and normalizer.pool.submitted == ["b3"]  # 0.12 s in total


def test_a_killed_worker_costs_nothing_but_time(tmp_path):
    """SIGKILL the normalize worker while it holds the next batch: that batch is normalized in-process, the run
    goes on without a worker, and the result is the same as without one."""
    import os
    import signal

    import psutil

    from common.batches import Mappers
    from common.wiring import build_store
    from tests.conftest import FakeClock, csv_lines

    settings = Settings(sqlite_path=str(tmp_path / "w.sqlite3"), transform_workers=1)
    store = build_store(settings)
    header = ["SNo", "Name", "Symbol", "Date", "High", "Low", "Open", "Close", "Volume", "Marketcap"]
    batch = RawBatch("source_b:f:0", "source_b", "r", "csv_lines", "".join(l + "\n" for l in csv_lines(2, 20)), 40,
                     header=header)
    clock = FakeClock()
    with parallel.Normalizer(settings, Mappers(store, settings, "r", clock), "r", clock) as normalizer:
        expected = normalizer.result(batch, "now")
        normalizer.worth_it = True
        normalizer.prefetch(batch, "now")
        normalizer.ahead[1].result(timeout=60)  # the worker is up and has done it once: now kill it mid-run
        normalizer.prefetch(batch, "now")
        [worker] = normalizer.pool._processes  # the pool's one worker process (pid)
        assert psutil.pid_exists(worker)
        os.kill(worker, signal.SIGKILL)
        again = normalizer.result(batch, "now")
        assert normalizer.pool is None and normalizer.broken
        normalizer.prefetch(batch, "now")
        assert normalizer.ahead is None  # no new worker for the rest of the run
    assert again.records == expected.records and again.quarantine == expected.quarantine
    store.close()
