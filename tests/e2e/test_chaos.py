"""The crash-and-stall matrix (bench/chaos.py) as a test: two trials per fault kind must each end exactly like a
clean run, with a truthful ledger; and the matrix's own checks must catch a doctored store and ledger."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SPEC = importlib.util.spec_from_file_location("chaos", ROOT / "bench" / "chaos.py")
chaos = sys.modules["chaos"] = importlib.util.module_from_spec(SPEC)  # dataclasses look their module up
SPEC.loader.exec_module(chaos)


def test_two_trials_per_fault_kind_end_like_a_clean_run():
    """SIGKILL an extract, the transform or its worker; SIGSTOP past the lease; stall the store's write lock."""
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "chaos.py"), "--trials", "8", "--seed", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert result.returncode in (0, 1), result.stdout + result.stderr  # 2: the harness itself could not run
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0 and report["ok"], result.stdout
    assert set(report["by_kind"]) == set(chaos.KINDS)
    # a fault that arrives after the work is done proves nothing: at least one of each kind must land mid-work
    assert all(figures["landed"] >= 1 for figures in report["by_kind"].values()), report["by_kind"]


def run_doc(run_id, stage="extract", source="source_b", status="succeeded", started="2026-01-01T00:00:00.000Z",
            finished="2026-01-01T00:00:02.000Z", rows_in=20, errors=()):
    return {"run_id": run_id, "stage": stage, "source": source, "status": status, "started_at": started,
            "finished_at": finished, "rows_in": rows_in, "summary": {"errors": list(errors), "warnings": []}}


def test_the_ledger_check_flags_overlaps_unfinished_runs_abandoned_successes_and_false_answers(tmp_path):
    out = tmp_path / "inv.out"
    out.write_text(json.dumps({"runs": [run_doc("r5", status="partial")]}))
    answered = chaos.Invocation("extract:b", subprocess.Popen([sys.executable, "-c", ""]), out)
    answered.proc.wait()
    answered.finish()
    runs = [
        run_doc("r1"), run_doc("r2", started="2026-01-01T00:00:01.000Z", finished="2026-01-01T00:00:03.000Z"),
        run_doc("r3", stage="transform_load", source=None, status="running", finished=None),
        run_doc("r4", stage="transform_load", source=None, errors=["abandoned: resumed by run r9"],
                started="2026-01-02T00:00:00.000Z", finished="2026-01-02T00:00:01.000Z"),
        run_doc("r5", status="failed", started="2026-01-03T00:00:00.000Z", finished="2026-01-03T00:00:01.000Z"),
        run_doc("r6", started="2026-01-01T00:00:03.000Z", finished="2026-01-01T00:00:04.000Z"),  # after r2: fine
        run_doc("r7", source="source_a"),  # marked abandoned while the harness looked, then overwritten
    ]
    anomalies, other = chaos.ledger_anomalies(runs, [answered], frozenset({"r7"}))
    assert len(anomalies) == 5 and not other, anomalies
    assert "left 'running'" in anomalies[0] and "r4 is succeeded and is marked abandoned" in anomalies[1]
    assert "r7 is succeeded and was marked abandoned" in anomalies[2]
    assert "r1" in anomalies[3] and "r2" in anomalies[3] and "overlapped" in anomalies[3]
    assert "answered 'partial', the ledger says 'failed'" in anomalies[4]
    assert chaos.ledger_anomalies([run_doc("r1"), run_doc("r6", started="2026-01-01T00:00:03.000Z")], []) == ([], [])


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "etl.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE normalized (source TEXT, source_id TEXT, observed_at TEXT, idempotency_key TEXT,
                price_usd REAL, ingested_at TEXT, run_id TEXT, PRIMARY KEY (source, source_id, observed_at));
            CREATE TABLE quarantine (id TEXT PRIMARY KEY, row_number INTEGER, raw TEXT, reason TEXT);
            CREATE TABLE raw_batches (batch_id TEXT PRIMARY KEY, source TEXT, status TEXT);
            INSERT INTO normalized VALUES ('b', 'BTC', 'd1', 'k1', 1.0, 'i', 'r'),
                ('b', 'BTC', 'd2', 'k2', 2.0, 'i', 'r'), ('b', 'ETH', 'd1', 'k3', 3.0, 'i', 'r');
            INSERT INTO quarantine VALUES ('q1', 7, 'x,y', 'bad close');
            INSERT INTO raw_batches VALUES ('b1', 'source_b', 'done');
        """)
    return path


def test_the_store_comparison_counts_lost_duplicated_and_wrong_rows_ignoring_run_metadata(store):
    db = chaos.Db(store)
    normalized, quarantine, _ = db.snapshot()
    clean = {"normalized": normalized, "quarantine": quarantine}
    with sqlite3.connect(store) as conn:
        conn.executescript("""
            UPDATE normalized SET ingested_at = 'later', run_id = 'other';  -- per-run metadata: not compared
            DELETE FROM normalized WHERE source_id = 'ETH';
            UPDATE normalized SET price_usd = 9.0 WHERE observed_at = 'd2';
            INSERT INTO normalized VALUES ('b', 'BTC', 'd1 ', 'k1', 1.0, 'i', 'r');
            UPDATE quarantine SET reason = 'other reason';
            INSERT INTO raw_batches VALUES ('b2', 'source_b', 'pending');
        """)
    trial = type("FakeTrial", (), {"db": chaos.Db(store), "outcome": chaos.Outcome(1, "kill_extract", "extract:b")})
    chaos.compare(trial, clean)
    outcome = trial.outcome
    assert (outcome.lost, outcome.duplicated, outcome.wrong) == (1, 2, 2)  # the extra row also repeats key k1
    assert outcome.other == ["1 raw batch(es) still pending after every stage succeeded"]
    assert outcome.failed
