"""One pass: the extracts side by side, transform/load as data arrives, partial stages again, one `pipeline` run.

The stages here are a hand-written StageInvoker (scripted answers, real threads); the store is real SQLite."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from common.invokers import StageInvoker
from common.orchestrator import STAGE_KEYS, run_pass
from common.store.sqlite import SqliteStore
from common.wiring import Wiring
from tests.conftest import FakeClock

SOURCES = ("source_a", "source_b", "source_c")


def stage_run(stage: str, source: str | None, status: str, rows: int = 0, errors: tuple[str, ...] = ()) -> dict:
    return {"run_id": f"{stage}-{source}-{status}-{time.perf_counter_ns()}", "stage": stage, "source": source,
            "status": status, "started_at": "", "finished_at": "", "duration_ms": 3, "rows_in": rows,
            "rows_out": rows, "quarantined": 0, "checkpoint": None,
            "summary": {"warnings": [], "errors": list(errors), "batches": 1 if rows else 0}}


class ScriptedStages(StageInvoker):
    """Answers each stage from a script (the last answer repeats); records every call in order."""

    def __init__(self, script: dict[str, list[tuple]], *, on_call=None) -> None:
        self.script = {key: list(answers) for key, answers in script.items()}
        self.calls: list[str] = []
        self.lock = threading.Lock()
        self.on_call = on_call or {}

    def _answer(self, key: str, stage: str, source: str | None) -> dict:
        with self.lock:
            self.calls.append(key)
            answers = self.script.get(key, [("succeeded", 0)])
            status, rows, *errors = answers.pop(0) if len(answers) > 1 else answers[0]
        if key in self.on_call:
            self.on_call[key]()
        return stage_run(stage, source, status, rows, tuple(errors))

    def extract(self, source: str) -> dict:
        return self._answer(source, "extract", source)

    def transform(self) -> dict:
        return self._answer("transform", "transform_load", None)


@pytest.fixture
def store(tmp_path):
    store = SqliteStore(str(tmp_path / "etl.sqlite3"))
    yield store
    store.close()


@pytest.fixture
def wiring(settings, store):
    return Wiring(settings=dataclasses.replace(settings, lease_ttl_s=5), store=store)


def quiet(*_args, **_kwargs) -> dict:
    return {"sent": []}


def test_a_pass_is_one_pipeline_run_listing_its_stage_runs(wiring, store):
    barrier = threading.Barrier(3, timeout=5)  # only extracts running side by side get past it
    stages = ScriptedStages({s: [("succeeded", 10)] for s in SOURCES} | {"transform": [("succeeded", 10)]},
                            on_call={s: barrier.wait for s in SOURCES})
    run = run_pass(wiring, stages, notify=quiet)
    assert run.stage == "pipeline" and run.status == "succeeded"
    entries = run.summary["stages"]
    assert all(tuple(entry) == STAGE_KEYS for entry in entries)
    assert sorted((e["stage"], e["source"], e["status"]) for e in entries if e["stage"] == "extract") == [
        ("extract", s, "succeeded") for s in SOURCES]
    assert entries[-1]["stage"] == "transform_load"  # as often as extracts brought data in, the last one after all
    transforms = [e for e in entries if e["stage"] == "transform_load"]
    assert 1 <= len(transforms) <= 3 and (run.rows_in, run.rows_out) == (30, 10 * len(transforms))
    recorded = store.get_run(run.run_id)
    assert recorded.status == "succeeded" and recorded.summary["stages"] == entries
    assert recorded.summary["sources"] == {s: "succeeded" for s in SOURCES}


def test_partial_stages_are_invoked_again_until_done(wiring):
    stages = ScriptedStages({"source_b": [("partial", 40), ("partial", 40), ("succeeded", 5)],
                             "transform": [("partial", 50), ("succeeded", 35)]})
    run = run_pass(wiring, stages, notify=quiet)
    assert stages.calls.count("source_b") == 3 and stages.calls.count("source_a") == 1
    assert run.status == "succeeded"
    assert [e["status"] for e in run.summary["stages"] if e["source"] == "source_b"] == ["partial"] * 2 + [
        "succeeded"]


def test_no_new_invocation_once_the_pass_budget_is_spent(wiring):
    clock = FakeClock()
    settings = dataclasses.replace(wiring.settings, pass_budget_s=250)
    stages = ScriptedStages({"source_b": [("partial", 40)]}, on_call={"source_b": lambda: clock.advance(100)})
    run = run_pass(Wiring(settings=settings, store=wiring.store, clock=clock), stages, notify=quiet)
    assert stages.calls.count("source_b") == 3  # at 0, 100 and 200 s; at 300 s the budget is spent
    assert run.status == "partial" and run.summary["sources"]["source_b"] == "partial"


def test_a_partial_invocation_that_moved_nothing_is_not_repeated(wiring):
    stages = ScriptedStages({"source_c": [("partial", 0, "source_c: next slot beyond the deadline")]})
    run = run_pass(wiring, stages, notify=quiet)
    assert stages.calls.count("source_c") == 1 and run.status == "partial"


def test_a_failing_source_does_not_hold_back_the_others(wiring, store):
    transformed = threading.Event()
    stages = ScriptedStages(
        {"source_a": [("failed", 0, "source_a: cannot resolve host api.coinpaprika.com")],
         "source_c": [("failed", 0, "source_c: cannot connect")], "source_b": [("succeeded", 40)],
         "transform": [("succeeded", 40)]},
        on_call={"source_a": lambda: transformed.wait(5), "transform": transformed.set})
    run = run_pass(wiring, stages, notify=quiet)
    assert transformed.is_set()  # B's rows went in while A was still trying
    finished = [entry["source"] or entry["stage"] for entry in run.summary["stages"]]
    assert finished.index("transform_load") < finished.index("source_a") and finished.count("transform_load") == 1
    assert run.status == "partial"
    assert run.summary["sources"] == {"source_a": "failed", "source_b": "succeeded", "source_c": "failed"}
    assert any("source_a: cannot resolve host" in warning for warning in run.summary["warnings"])


@pytest.mark.parametrize("script, expected", [
    ({s: [("failed", 0, "down")] for s in SOURCES}, "failed"),
    ({"transform": [("failed", 0, "store full")], "source_b": [("succeeded", 3)]}, "failed"),
    ({"source_c": [("failed", 0, "down")], "source_b": [("succeeded", 3)]}, "partial"),
    ({"source_b": [("succeeded", 3)]}, "succeeded"),
])
def test_the_pass_status(wiring, script, expected):
    assert run_pass(wiring, ScriptedStages(script), notify=quiet).status == expected


def test_every_pass_transforms_at_least_once(wiring):
    stages = ScriptedStages({})  # nothing new anywhere: batches left pending by an earlier pass still go in
    run_pass(wiring, stages, notify=quiet)
    assert stages.calls.count("transform") == 1


def test_a_skipped_stage_is_tried_once_more_after_a_lease_ttl(wiring):
    settings = dataclasses.replace(wiring.settings, lease_ttl_s=0.2)
    stages = ScriptedStages({"source_b": [("skipped", 0), ("succeeded", 4)], "source_c": [("skipped", 0)]})
    run = run_pass(dataclasses.replace(wiring, settings=settings), stages, notify=quiet)
    assert stages.calls.count("source_b") == 2 and stages.calls.count("source_c") == 2
    assert run.summary["sources"]["source_b"] == "succeeded" and run.summary["sources"]["source_c"] == "skipped"
    assert run.status == "partial"


def test_passes_are_single_flight(wiring, store):
    assert store.acquire_lease("pipeline", "another-pass", 30, time.time())
    stages = ScriptedStages({})
    run = run_pass(wiring, stages, notify=quiet)
    assert run.status == "skipped" and stages.calls == []


def test_a_stopped_pass_is_recorded_with_what_it_abandoned(wiring, store):
    cancel, forever = threading.Event(), threading.Event()
    stages = ScriptedStages({}, on_call={"source_c": lambda: forever.wait(30),
                                         "source_b": lambda: threading.Timer(0.3, cancel.set).start()})
    started = time.monotonic()
    run = run_pass(wiring, stages, cancel=cancel, notify=quiet)
    forever.set()
    assert time.monotonic() - started < 3
    assert run.status == "failed" and run.summary["abandoned"] == [{"stage": "extract", "source": "source_c"}]
    assert "stopped" in run.summary["errors"][0] and store.get_run(run.run_id).status == "failed"
    assert store.acquire_lease("pipeline", "next", 30, time.time())  # released


def test_alerts_see_the_finished_pass_and_never_fail_it(wiring):
    seen = {}

    def notify(store, settings, pass_run, *, clock, schedule_period_s):
        seen.update(status=pass_run.status, stages=len(pass_run.summary["stages"]), period=schedule_period_s)
        return {"sent": ["pass_failed"]}

    run = run_pass(wiring, ScriptedStages({"source_b": [("failed", 0, "gone")]}), notify=notify)
    assert seen == {"status": "partial", "stages": 4, "period": 3600.0}
    assert run.summary["alerts"] == {"sent": ["pass_failed"]}

    def broken(*_args, **_kwargs):
        raise OSError("smtp.example: connection refused")

    run = run_pass(wiring, ScriptedStages({}), notify=broken)
    assert run.status == "succeeded" and "connection refused" in run.summary["alerts"]["error"]


def test_a_crashing_invoker_is_a_failed_stage_not_a_crashed_pass(wiring):
    class Broken(ScriptedStages):
        def extract(self, source):
            if source == "source_a":
                raise RuntimeError("bug in the invoker")
            return super().extract(source)

    run = run_pass(wiring, Broken({"source_b": [("succeeded", 2)]}), notify=quiet)
    failed = next(e for e in run.summary["stages"] if e["source"] == "source_a")
    assert failed["status"] == "failed" and "bug in the invoker" in failed["errors"][0]
    assert run.status == "partial"
