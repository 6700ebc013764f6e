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
    monkeypatch.setattr("common.transform.normalize_batch", lambda *args: Normalized())
    batch = lambda n: RawBatch(f"b{n}", "source_b", "r", "csv_lines", "", 0)  # noqa: E731
    with parallel.Normalizer(Settings(transform_workers=1), mappers=None, run_id="r") as normalizer:
        normalizer.result(batch(1), "now")
        normalizer.prefetch(batch(2), "now")
        assert normalizer.pool is None  # 0.06 s so far: not worth a process start
        normalizer.result(batch(2), "now")
        normalizer.prefetch(batch(3), "now")
        assert normalizer.pool is not None and normalizer.pool.submitted == ["b3"]  # 0.12 s in total
