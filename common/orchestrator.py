"""One pipeline pass — the only place that decides which stage runs when (the CLI, the trigger and the bench call it).

A pass is a run in the ledger (stage `pipeline`, single flight and fenced like every stage) whose summary lists the
stage runs it made. The extracts run side by side; transform/load starts as soon as an extract has written
something and again whenever more arrived meanwhile, so a source that fails or hangs in retries does not hold back
the others' data; every pass transforms at least once (batches an earlier pass left pending go in too).

Invoked again within the pass, while the pass budget (PASS_BUDGET_S) is not spent:
  - a `partial` stage that moved rows (a stage that moved nothing is stuck behind a rate-limit window or a failing
    page: the next pass tries again rather than spinning);
  - a `skipped` stage, once, after a lease TTL (a holder that died has lost its lease by then; a second skip means
    a live invocation is doing the work).
A new transform still starts after the budget is spent when an extract wrote something: what is extracted is
transformed in the same pass. So a pass can overrun its budget by at most one extract and one transform invocation.

Pass status: `succeeded` when every stage's last invocation succeeded; `failed` when the last transform failed or
no extract succeeded (or returned partial) and at least one failed — nothing new could be loaded; `partial`
otherwise (some source failed, was skipped or is unfinished, but what came in was loaded). A pass stopped from
outside (`cancel`, the trigger's SIGTERM) is `failed` and lists the stages it abandoned in summary["abandoned"].
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Iterable

from common.alerts import notify_after_pass
from common.alerts.redact import redactor_for
from common.clock import Deadline
from common.errors import EtlError
from common.invokers import StageInvoker, unreached
from common.prune import Retention, prune
from common.runs import LeaseKeeper, run_stage
from common.schedule import parse_schedule
from common.sources import SOURCE_NAMES, declared
from common.store import Run
from common.wiring import Wiring

log = logging.getLogger(__name__)

STAGE_KEYS = ("stage", "source", "run_id", "status", "duration_ms", "rows_in", "rows_out", "quarantined", "errors")
"""The keys of each entry of a pass's summary["stages"] (the alerts read them)."""
POLL_S = 0.25
"""How often the pass looks up from waiting: a stop request or a lost lease is noticed within this."""

Notify = Callable[..., dict]
Key = tuple[str, "str | None"]  # (stage, source)


def run_pass(wiring: Wiring, invoker: StageInvoker, *, sources: Iterable[str] | None = None,
             cancel: threading.Event | None = None, notify: Notify | None = None,
             on_start: Callable[[Run], None] | None = None) -> Run:
    """Run one pass under the `pipeline` lease and return its ledger entry (never raises for expected failures).

    `sources` defaults to every source in the registry; `cancel` stops the pass early (recorded as failed, with
    what it abandoned); `notify` is `common.alerts.notify_after_pass` unless a test injects another (it gets the
    pass's store view fenced by the `pipeline` lease, so a pass that lost it records no incident); `on_start`
    hears the pass's run once it holds the lease (the trigger's heartbeat names it)."""
    settings, clock = wiring.settings, wiring.clock
    names = tuple(declared(source).name for source in sources) if sources else SOURCE_NAMES
    cancel = cancel or threading.Event()

    def work(run: Run, keeper: LeaseKeeper) -> str:
        if on_start is not None:
            on_start(run)
        one_pass = _Pass(invoker, names, Deadline(clock, settings.pass_budget_s), cancel, settings.lease_ttl_s)
        run.status = one_pass.run(run, keeper)  # set before the alerts read it
        if "abandoned" in run.summary:
            run.summary["alerts"] = {"skipped": "the pass was stopped before it finished"}
            run.summary["prune"] = {"status": "skipped", "warnings": ["the pass was stopped before it finished"]}
        else:
            run.summary["alerts"] = _alerts(notify, keeper, wiring, run)
            run.summary["prune"] = _prune(wiring, run)
        return run.status

    return run_stage("pipeline", None, wiring.store, lease_ttl_s=settings.lease_ttl_s, clock=clock, work=work,
                     budget_s=settings.pass_budget_s + 2 * settings.invocation_budget_s)


def describe_pass(run: dict) -> str:
    """The pass as a person reads it: one line per stage run (with its first errors), then the pass's own."""
    lines = [f"pass {run['run_id']}: {run['status']} in {(run['duration_ms'] or 0) / 1000:.1f}s"]
    for entry in run["summary"].get("stages", []):
        name = " ".join(filter(None, (entry["stage"], entry["source"])))
        lines.append(f"  {name:<24} {entry['status']:<9} {entry['rows_in']:>9,} in {entry['rows_out']:>9,} out "
                     f"{entry['quarantined']:>6,} quarantined {(entry['duration_ms'] or 0) / 1000:6.1f}s  "
                     f"{entry['run_id'] or '-'}")
        lines += [f"      {error}" for error in entry["errors"][:3]]
    lines += [f"  ! {message}" for message in run["summary"].get("errors", [])]
    return "\n".join(lines) + "\n"


def stage_entry(answer: dict) -> dict:
    """A stage run as the pass lists it."""
    errors = (answer.get("summary") or {}).get("errors") or []
    entry = {key: answer.get(key) for key in STAGE_KEYS if key != "errors"}
    for counter in ("rows_in", "rows_out", "quarantined"):
        entry[counter] = entry[counter] or 0
    entry["errors"] = list(errors)
    return entry


class _Pass:
    """The coordination of one pass: one thread per stage loop, this thread deciding and recording."""

    def __init__(self, invoker: StageInvoker, sources: tuple[str, ...], deadline: Deadline,
                 cancel: threading.Event, retry_skipped_after_s: float) -> None:
        self.invoker, self.sources, self.deadline, self.cancel = invoker, sources, deadline, cancel
        self.retry_skipped_after_s = retry_skipped_after_s
        self.events: queue.Queue = queue.Queue()
        self.in_flight: set[Key] = set()
        self.last: dict[Key, dict] = {}

    def run(self, run: Run, keeper: LeaseKeeper) -> str:
        run.summary.update(stages=[], sources={}, transform=None)
        for source in self.sources:
            self._start(("extract", source), lambda source=source: self.invoker.extract(source))
        extracting, transforming, fresh, transforms = set(self.sources), False, False, 0
        while True:
            if self.cancel.is_set():
                return self._abandon(run)
            if not transforming and (fresh or (not extracting and not transforms)):
                transforming, fresh, transforms = True, False, transforms + 1
                self._start(("transform_load", None), self.invoker.transform)
            if not extracting and not transforming:
                return self._verdict(run)
            try:
                kind, key, answer = self.events.get(timeout=POLL_S)
            except queue.Empty:
                keeper.keep_alive()  # LeaseLost ends the pass: another pass took over
                continue
            if kind == "invoking":  # everything extracted before this is in what that transform will read
                fresh = False
                continue
            if kind == "done":
                self.in_flight.discard(key)
                if key[0] == "extract":
                    extracting.discard(key[1])
                else:
                    transforming = False
                continue
            self._record(run, keeper, key, answer)
            if key[0] == "extract" and _wrote(answer):
                fresh = True

    # --- one stage, invoked until it is done -----------------------------------------------------------------
    def _start(self, key: Key, call: Callable[[], dict]) -> None:
        self.in_flight.add(key)
        threading.Thread(target=self._loop, args=(key, call), name=f"pass-{key[0]}-{key[1] or ''}",
                         daemon=True).start()  # daemon: a stopped pass does not wait for a stage to answer

    def _loop(self, key: Key, call: Callable[[], dict]) -> None:
        retried_skip = False
        try:
            while True:
                if key[0] == "transform_load":
                    self.events.put(("invoking", key, None))
                answer = self._invoke(key, call)
                self.events.put(("run", key, answer))
                status, time_left = answer.get("status"), self.deadline.remaining() > 0
                if self.cancel.is_set() or not time_left:
                    return
                if status == "partial" and _moved(answer):
                    continue
                if status == "skipped" and not retried_skip:
                    retried_skip = True
                    if self.cancel.wait(self.retry_skipped_after_s):
                        return
                    continue
                return
        finally:
            self.events.put(("done", key, None))

    @staticmethod
    def _invoke(key: Key, call: Callable[[], dict]) -> dict:
        started = time.perf_counter()
        try:
            return call()
        except Exception as exc:  # a bug in an invoker: a failed stage, not a crashed pass
            log.exception("pass: invoking %s %s failed", *key)
            return unreached(key[0], key[1], f"internal error: {type(exc).__name__}: {exc}", started)

    # --- recording and the verdict --------------------------------------------------------------------------
    def _record(self, run: Run, keeper: LeaseKeeper, key: Key, answer: dict) -> None:
        entry = stage_entry(answer)
        entry["stage"], entry["source"] = key  # as invoked, whatever an unreachable stage answered
        self.last[key] = entry
        run.summary["stages"].append(entry)
        if key[0] == "extract":
            run.summary["sources"][key[1]] = entry["status"]
            run.rows_in += entry["rows_in"]
        else:
            run.summary["transform"] = entry["status"]
            run.rows_out += entry["rows_out"]
        run.quarantined += entry["quarantined"]
        log.info("pass %s: %s %s (run %s)", run.run_id, " ".join(filter(None, key)), entry["status"],
                 entry["run_id"], extra={"run_id": run.run_id})
        try:
            keeper.store.save_run(run)  # progress visible in the ledger, and kept if this process dies
        except EtlError as exc:
            if exc.code == "lease_lost":
                raise
            log.warning("pass %s: progress not saved: %s", run.run_id, exc.message)

    def _verdict(self, run: Run) -> str:
        summary = run.summary
        for source in self.sources:
            entry = self.last.get(("extract", source))
            if entry and entry["status"] != "succeeded":
                summary["warnings"].append(f"{source} {entry['status']}: {_reason(entry)}")
        transform = self.last.get(("transform_load", None))
        if transform and transform["status"] != "succeeded":
            summary["warnings"].append(f"transform_load {transform['status']}: {_reason(transform)}")
        statuses = [summary["sources"].get(source) for source in self.sources]
        if summary["transform"] == "failed":
            summary["errors"].append(f"transform_load failed: {_reason(transform)}")
            return "failed"
        if "failed" in statuses and not {"succeeded", "partial"} & set(statuses):
            summary["errors"].append("no source could be extracted: " + "; ".join(
                f"{source}: {_reason(self.last[('extract', source)])}" for source in self.sources))
            return "failed"
        if summary["transform"] == "succeeded" and all(status == "succeeded" for status in statuses):
            return "succeeded"
        return "partial"

    def _abandon(self, run: Run) -> str:
        abandoned = sorted(self.in_flight, key=lambda key: (key[0], key[1] or ""))
        run.summary["abandoned"] = [{"stage": stage, "source": source} for stage, source in abandoned]
        what = ", ".join(f"{stage} {source}" if source else stage for stage, source in abandoned) or "nothing"
        message = (f"pass stopped before it finished; abandoned: {what} (a stage still running finishes or is "
                   "taken over on its own; the next pass picks up what is left)")
        run.summary["errors"].append(message)
        log.warning("pass %s: %s", run.run_id, message, extra={"run_id": run.run_id})
        return "failed"


def _moved(answer: dict) -> bool:
    return bool(answer.get("rows_in") or answer.get("rows_out"))


def _wrote(answer: dict) -> bool:
    """Whether an extract invocation left something for transform/load."""
    return bool(answer.get("rows_out") or (answer.get("summary") or {}).get("batches"))


def _reason(entry: dict | None) -> str:
    errors = (entry or {}).get("errors")
    return errors[0] if errors else "no error reported"


def _prune(wiring: Wiring, run: Run) -> dict:
    """Retention after the pass, once its stages and alerts are done (outside its budget: an invocation budget of
    its own); whatever happens here never changes the pass's outcome."""
    settings = wiring.settings
    try:
        return prune(wiring.store, Retention.from_settings(settings), clock=wiring.clock,
                     lease_ttl_s=settings.lease_ttl_s, deadline=Deadline(wiring.clock, settings.invocation_budget_s),
                     owner=f"{run.run_id}:prune")
    except Exception as exc:  # noqa: BLE001 - pruning never fails a pass
        error = redactor_for(settings)(f"{type(exc).__name__}: {exc}")
        log.warning("pass %s: prune failed: %s", run.run_id, error, extra={"run_id": run.run_id})
        return {"status": "failed", "error": error}


def _alerts(notify: Notify | None, keeper: LeaseKeeper, wiring: Wiring, run: Run) -> dict:
    """Tell a person if this pass calls for it; whatever happens here never changes the pass's outcome."""
    notify = notify or notify_after_pass
    try:
        period = parse_schedule(wiring.settings.etl_schedule).period_s
        outcome = notify(keeper.store, wiring.settings, run, clock=wiring.clock, schedule_period_s=period)
        return outcome if isinstance(outcome, dict) else {"outcome": outcome}
    except Exception as exc:  # noqa: BLE001 - alerts never fail a pass
        error = redactor_for(wiring.settings)(f"{type(exc).__name__}: {exc}")
        log.warning("pass %s: alerts failed: %s", run.run_id, error)
        return {"error": error}
