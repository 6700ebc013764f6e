"""GET /stats: per-source and overall figures from the store."""

from __future__ import annotations

import pytest

from common.api.app import create_app
from common.clock import iso_utc
from common.store import RawBatch, Run
from common.wiring import Wiring
from tests.conftest import FakeClock

DAY = 86400.0


@pytest.fixture
def clock():
    return FakeClock()


def save(store, run_id, at, stage="extract", source="source_b", status="succeeded", duration_ms=1000):
    store.save_run(Run(run_id=run_id, stage=stage, source=source, status=status, started_at=iso_utc(at),
                       finished_at=iso_utc(at + duration_ms / 1000), duration_ms=duration_ms))


def record(source, source_id, minute):
    return ("k", source, source_id, "BTC", f"2026-01-01T00:{minute:02d}:00.000Z", "btc-bitcoin", "Bitcoin",
            1.0, 1.0, 1.0, 1.0, 1.0, 1.0, "2026-01-01T00:00:00.000Z", "r")


def test_stats_per_source_and_overall(store, settings, clock):
    now = clock.now
    for index in range(20):  # durations 100..2000 ms; two failures, one 2 days ago
        status = "failed" if index in (3, 18) else "succeeded"
        save(store, f"b{index:02d}", now - (1 if index == 3 else 0) * 2 * DAY - 3600 + index,
             status=status, duration_ms=(index + 1) * 100)
    save(store, "b-skip", now - 10, status="skipped", duration_ms=0)
    save(store, "c-old", now - 10 * DAY, source="source_c", status="failed")
    save(store, "t1", now - 50, stage="transform_load", source=None, duration_ms=4000)
    save(store, "p1", now - 60, stage="pipeline", source=None, status="partial", duration_ms=9000)
    save(store, "p2", now - 30, stage="pipeline", source=None, status="failed", duration_ms=3000)
    store.commit_transformed(None, [record("source_b", "btc", m) for m in range(5)], [
        {"id": "q1", "source": "source_b", "run_id": "t1", "reason": "bad"},
        {"id": "q2", "source": "source_b", "run_id": "t1", "reason": "bad"}], [])
    store.resolve_quarantine(["q2"], "t2")
    for index, batch_source in enumerate(("source_b", "source_b", "source_c")):
        store.put_raw_batch(RawBatch(batch_id=f"x{index}", source=batch_source, run_id="b0", format="csv_lines",
                                     payload="p", row_count=1))
    store.commit_transformed(store.get_raw_batch("x0"), [], [], [])
    response = create_app(Wiring(settings=settings, store=store, clock=clock)).test_client().get("/stats")
    assert response.status_code == 200
    body = response.get_json()
    b = body["sources"]["source_b"]
    assert b["records"] == 5 and b["raw_batches"] == {"pending": 1, "done": 1} and b["quarantine_unresolved"] == 1
    assert b["runs"] == 21 and b["failed_runs"] == 2 and b["error_rate"] == pytest.approx(2 / 20)
    assert b["duration_ms"] == {"avg": 1050, "p95": 1900, "runs": 20}  # finished runs: skipped and running aside
    assert b["last_success"]["run_id"] == "b19" and b["last_success"]["at"] == iso_utc(now - 3600 + 19 + 2.0)
    c = body["sources"]["source_c"]
    assert c["records"] == 0 and c["raw_batches"] == {"pending": 1, "done": 0} and c["last_success"] is None
    assert c["error_rate"] == 1.0 and c["failed_runs"] == 1
    a = body["sources"]["source_a"]
    assert a["runs"] == 0 and a["error_rate"] is None and a["duration_ms"] == {"avg": None, "p95": None, "runs": 0}
    assert body["stages"]["transform_load"]["duration_ms"]["avg"] == 4000
    overall = body["overall"]
    assert overall["last_successful_pass"] == {"run_id": "p1", "at": iso_utc(now - 51)}
    assert overall["pass_duration_ms"] == {"avg": 6000, "p95": 9000, "runs": 2}
    # stage runs (passes aside): last 24 h: 19 extracts (one failed) + 1 transform; 7 d adds the failure 2 days ago
    assert overall["error_rate_24h"] == pytest.approx(1 / 20)
    assert overall["error_rate_7d"] == pytest.approx(2 / 21)
    assert body["window"]["runs_per_stage_and_source"] == 500


def test_an_empty_store_and_bad_parameters(store, settings, clock):
    client = create_app(Wiring(settings=settings, store=store, clock=clock)).test_client()
    body = client.get("/stats").get_json()
    assert body["overall"]["last_successful_pass"] is None and body["overall"]["error_rate_24h"] is None
    response = client.get("/stats?source=x")
    assert response.status_code == 400 and "source" in response.get_json()["error"]["message"]


def test_the_answer_is_kept_for_five_seconds(store, settings, clock):
    client = create_app(Wiring(settings=settings, store=store, clock=clock)).test_client()
    assert client.get("/stats").get_json()["sources"]["source_b"]["runs"] == 0
    save(store, "b1", clock.now)
    clock.advance(4.9)
    assert client.get("/stats").get_json()["sources"]["source_b"]["runs"] == 0
    clock.advance(0.2)
    body = client.get("/stats").get_json()
    assert body["sources"]["source_b"]["runs"] == 1 and body["generated_at"] == iso_utc(clock.now)


def test_while_one_caller_recomputes_the_others_get_the_previous_answer(store, settings, clock, monkeypatch):
    import threading

    from common.api import stats as stats_module

    client = create_app(Wiring(settings=settings, store=store, clock=clock)).test_client()
    assert client.get("/stats").get_json()["sources"]["source_b"]["runs"] == 0
    save(store, "b1", clock.now)
    clock.advance(6)
    computing, release = threading.Event(), threading.Event()
    real = stats_module.collect_stats

    def slow(store_, now):
        computing.set()
        assert release.wait(10)
        return real(store_, now)

    monkeypatch.setattr(stats_module, "collect_stats", slow)
    answers = []
    worker = threading.Thread(target=lambda: answers.append(client.get("/stats").get_json()))
    worker.start()
    assert computing.wait(10)
    assert client.get("/stats").get_json()["sources"]["source_b"]["runs"] == 0  # previous answer, no waiting
    release.set()
    worker.join(10)
    assert answers[0]["sources"]["source_b"]["runs"] == 1
    assert client.get("/stats").get_json()["sources"]["source_b"]["runs"] == 1
