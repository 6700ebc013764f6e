"""The normalize worker: when it starts (once normalizing has cost the run PREFETCH_AFTER_S in total, not after one
slow batch), and that a worker killed, stopped or failing at any moment costs only time: the batch is normalized
in-process, with the same result, and the run goes on without a worker."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest

from common import parallel
from common.batches import Mappers
from common.config import Settings
from common.normalize import Normalized
from common.store import RawBatch
from common.wiring import build_store
from tests.conftest import FakeClock, csv_lines

HEADER = ["SNo", "Name", "Symbol", "Date", "High", "Low", "Open", "Close", "Volume", "Marketcap"]


class FakeWorker:
    def __init__(self) -> None:
        self.submitted: list[str] = []

    def submit(self, fn, settings, batch, *args):
        self.submitted.append(batch.batch_id)
        return None

    def stop(self) -> None:
        pass


def test_the_worker_starts_once_normalizing_has_cost_enough_in_total(monkeypatch):
    ticks = iter(x * 0.06 for x in range(100))  # every normalize_batch takes 0.06 s
    monkeypatch.setattr(parallel.time, "perf_counter", lambda: next(ticks))
    monkeypatch.setattr(parallel, "Worker", FakeWorker)
    monkeypatch.setattr("common.batches.normalize_batch", lambda *args: Normalized())
    batch = lambda n: RawBatch(f"b{n}", "source_b", "r", "csv_lines", "", 0)  # noqa: E731
    with parallel.Normalizer(Settings(transform_workers=1), mappers=None, run_id="r") as normalizer:
        normalizer.result(batch(1), "now")
        normalizer.prefetch(batch(2), "now")
        assert normalizer.worker is None  # 0.06 s so far: not worth a process start
        normalizer.result(batch(2), "now")
        normalizer.prefetch(batch(3), "now")
        assert normalizer.worker is not None and normalizer.worker.submitted == ["b3"]  # 0.12 s in total


@pytest.fixture
def normalizer(tmp_path):
    """A real Normalizer on a real store, its worker allowed from the first batch; yields it with a batch and that
    batch normalized in-process (what the worker must match or be replaced by)."""
    settings = Settings(sqlite_path=str(tmp_path / "w.sqlite3"), transform_workers=1)
    store = build_store(settings)
    batch = RawBatch("source_b:f:0", "source_b", "r", "csv_lines", "".join(l + "\n" for l in csv_lines(2, 20)), 40,
                     header=HEADER)
    clock = FakeClock()
    with parallel.Normalizer(settings, Mappers(store, settings, "r", clock), "r", clock) as normalizer:
        expected = normalizer.result(batch, "now")
        normalizer.worth_it = True
        yield normalizer, batch, expected
    store.close()


def same(a: Normalized, b: Normalized) -> bool:
    return a.records == b.records and a.quarantine == b.quarantine and len(a.records) == 40


def worker_pid() -> int:
    [child] = [p for p in psutil.Process().children() if "spawn_main" in " ".join(p.cmdline())]
    return child.pid


def test_a_killed_worker_costs_nothing_but_time(normalizer):
    """SIGKILL the worker while it holds the next batch: normalized in-process, and no new worker for the run."""
    normalizer, batch, expected = normalizer
    normalizer.prefetch(batch, "now")
    assert same(normalizer.result(batch, "now"), expected)  # the worker is up and has done it once
    pid = worker_pid()
    os.kill(pid, signal.SIGSTOP)  # so that it cannot answer before the kill lands
    normalizer.prefetch(batch, "now")
    os.kill(pid, signal.SIGKILL)
    assert same(normalizer.result(batch, "now"), expected)
    assert normalizer.broken
    normalizer.prefetch(batch, "now")
    assert normalizer.ahead is None  # no new worker for the rest of the run
    assert not [p for p in psutil.Process().children() if "spawn_main" in " ".join(p.cmdline())]  # reaped


class DieWhenSent:
    """Pickled last in the worker's answer: SIGKILLs the worker 10 ms later, while the answer's bytes are still
    going through the pipe."""

    def __reduce__(self):
        threading.Thread(target=lambda: (time.sleep(0.01), os.kill(os.getpid(), signal.SIGKILL)), daemon=True).start()
        return DieWhenSent, ()


def answer_and_die_halfway(*args):
    return [b"x" * (256 << 20), DieWhenSent()], {}


@pytest.mark.timeout(60)
def test_a_worker_killed_halfway_through_its_answer_costs_nothing_but_time(normalizer, monkeypatch):
    """Python 3.11's ProcessPoolExecutor hung here for good (its manager thread waits on the rest of a half-sent
    result): the chaos harness's `kill_transform worker` trial saw the transform never finish."""
    normalizer, batch, expected = normalizer
    monkeypatch.setattr(parallel, "_normalize_in_worker", answer_and_die_halfway)
    normalizer.prefetch(batch, "now")
    started = time.monotonic()
    assert same(normalizer.result(batch, "now"), expected)
    assert normalizer.broken and time.monotonic() - started < 30


def fail(*args):
    raise ValueError("a bug in the worker")


def test_a_worker_that_fails_a_batch_is_replaced_by_this_process(normalizer, monkeypatch):
    """The batch is redone here, where an error is met and reported as without a worker."""
    normalizer, batch, expected = normalizer
    monkeypatch.setattr(parallel, "_normalize_in_worker", fail)
    normalizer.prefetch(batch, "now")
    assert same(normalizer.result(batch, "now"), expected)
    assert normalizer.broken


@pytest.mark.timeout(60)
def test_a_stopped_worker_is_waited_for_only_so_long(normalizer, monkeypatch):
    """SIGSTOP the worker before it answers: after WORKER_PATIENCE_S the batch is done here and the worker killed."""
    normalizer, batch, expected = normalizer
    monkeypatch.setattr(parallel, "WORKER_PATIENCE_S", 1.0)
    normalizer.prefetch(batch, "now")
    pid = worker_pid()
    os.kill(pid, signal.SIGSTOP)  # a spawned worker takes >100 ms to import: it cannot have answered yet
    started = time.monotonic()
    assert same(normalizer.result(batch, "now"), expected)
    assert normalizer.broken and 1.0 <= time.monotonic() - started < 20
    assert not psutil.pid_exists(pid)  # killed and reaped


def test_a_worker_that_cannot_start_costs_nothing_but_time(normalizer, monkeypatch):
    normalizer, batch, expected = normalizer

    def no_process():
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(parallel, "Worker", no_process)
    normalizer.prefetch(batch, "now")
    assert normalizer.broken and normalizer.ahead is None
    assert same(normalizer.result(batch, "now"), expected)
