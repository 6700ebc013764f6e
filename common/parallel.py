"""Normalize the next raw batch in a worker process while the current one is written (uses a spare core).

Only normalization moves: writes, checkpoints and the lease stay in the invocation's own process, in order, so
crash safety is unchanged. The worker starts only once normalizing has cost the run `PREFETCH_AFTER_S` in total
(not per batch: a 20,000-row batch takes ~50 ms on an idle machine, so a per-batch test started the worker only
when the machine happened to be busy), so small runs never pay for a process start; `TRANSFORM_WORKERS=0` turns
it off.

A worker that dies, stalls or fails costs only time: the batch is normalized in-process and the run goes on without
a worker. The worker is one `spawn` process with a pipe each way of which this process keeps only its own ends, so
a worker killed halfway through an answer reads here as end-of-file. (Python 3.11's ProcessPoolExecutor keeps both
ends of its result pipe and waits forever on a half-sent result: a SIGKILL at that moment hung the transform.)
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from concurrent.futures import Future

from common import batches
from common.clock import Clock, system_clock
from common.config import Settings
from common.normalize import Normalized
from common.store import RawBatch

log = logging.getLogger(__name__)
PREFETCH_AFTER_S = 0.1
WORKER_PATIENCE_S = 30.0  # a 20,000-row batch takes 0.05-0.3 s: a worker this late is stopped, not waited for
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


def _serve(tasks, answers) -> None:
    """The worker's loop: `fn(*args)` for each task until the task pipe closes; a failure is answered, not raised
    (the invocation redoes that batch itself and meets the error where it can report it)."""
    while True:
        try:
            fn, args = tasks.recv()
        except EOFError:
            return
        try:
            answer = ("ok", fn(*args))
        except Exception as exc:  # noqa: BLE001 - reported to the invocation, which redoes the batch in-process
            answer = ("failed", f"{type(exc).__name__}: {exc}")
        answers.send(answer)


class Worker:
    """One worker process and at most one task in flight; `submit` returns a Future that ends with the answer,
    or with the reason there is none (EOFError: the worker died; BrokenPipeError: it was gone already)."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        their_tasks, self.tasks = context.Pipe(duplex=False)
        self.answers, their_answers = context.Pipe(duplex=False)
        self.process = context.Process(target=_serve, args=(their_tasks, their_answers), daemon=True,
                                       name="normalize-worker")
        self.process.start()
        their_tasks.close()  # the worker holds these now; keeping a copy would turn its death into a hang
        their_answers.close()
        self.busy, self.courier = False, None

    def submit(self, fn, *args) -> Future:
        """Hand the task over and wait for the answer on a courier thread: neither a large task nor a worker that
        stops mid-answer can block the invocation, which waits on the Future with a timeout."""
        assert not self.busy, "one task at a time: the next is submitted after the last answer was taken"
        self.busy, future = True, Future()

        def courier() -> None:
            try:
                self.tasks.send((fn, args))
                answer = self.answers.recv()
            except BaseException as exc:  # noqa: BLE001 - EOF, a broken pipe, an unpicklable answer: no answer
                future.set_exception(exc)
            else:
                future.set_result(answer)

        self.courier = threading.Thread(target=courier, name="normalize-courier", daemon=True)
        self.courier.start()
        return future

    def take(self, future: Future, timeout: float):
        """The task's value; raises when the worker died, failed it or took longer than `timeout`."""
        status, value = future.result(timeout)
        self.busy = False
        if status != "ok":
            raise RuntimeError(f"the worker failed the batch: {value}")
        return value

    def stop(self) -> None:
        """Let an idle worker exit on its own (reaped: its CPU and memory show in rusage); kill a busy one."""
        self.tasks.close()
        if self.busy:
            self.process.kill()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        if self.courier is not None:
            self.courier.join(5)  # the worker is gone, so its answer pipe reads end-of-file by now
        self.answers.close()


class Normalizer:
    """`result(batch)` for the batch about to be written; `prefetch(batch)` for the one after it."""

    def __init__(self, settings: Settings, mappers, run_id: str, clock: Clock = system_clock) -> None:
        self.settings, self.mappers, self.run_id, self.clock = settings, mappers, run_id, clock
        self.worker: Worker | None = None
        self.ahead: tuple[tuple[str, int], Future] | None = None
        self.worth_it = False
        self.spent_s = 0.0  # normalizing in this process so far
        self.broken = False  # a worker died or stalled in this run: no new one

    def __enter__(self) -> "Normalizer":
        return self

    def __exit__(self, *exc) -> None:
        if self.worker is not None:
            self.worker.stop()

    def result(self, batch: RawBatch, ingested_at: str) -> Normalized:
        if self.ahead is not None:
            key, future = self.ahead
            self.ahead = None
            try:  # taken even when the batch was rewritten since: the worker is free for the next one then
                result, decisions = self.worker.take(future, WORKER_PATIENCE_S)
            except Exception as exc:  # noqa: BLE001 - killed, stalled, out of memory, failed: do it here instead
                log.warning("normalize worker gave no answer (%s); normalizing batch %s in-process and going on "
                            "without it", f"{type(exc).__name__}: {exc}".rstrip(": "), batch.batch_id)
                self.worker.stop()
                self.worker, self.broken = None, True
            else:
                if key == (batch.batch_id, batch.version):  # still the batch we prefetched (not rewritten since)
                    self.mappers.merge(decisions)
                    return result
        started = time.perf_counter()
        result = batches.normalize_batch(batch, self.mappers, self.run_id, ingested_at)
        self.spent_s += time.perf_counter() - started
        self.worth_it = self.spent_s >= PREFETCH_AFTER_S
        return result

    def prefetch(self, batch: RawBatch, ingested_at: str) -> None:
        if not (self.worth_it or self.worker) or self.settings.transform_workers < 1 or self.broken:
            return
        if self.worker is None:
            try:
                self.worker = Worker()
            except OSError as exc:  # no process to be had (EAGAIN, ENOMEM): the run goes on in-process
                log.warning("normalize worker could not start (%s); normalizing in-process", exc)
                self.broken = True
                return
        future = self.worker.submit(_normalize_in_worker, self.settings, batch, self.run_id, ingested_at,
                                    self.clock())
        self.ahead = ((batch.batch_id, batch.version), future)
