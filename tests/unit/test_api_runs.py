"""GET /runs and GET /runs/<id>: the run ledger over HTTP, filtered and keyset-paginated, every parameter checked."""

from __future__ import annotations

import base64
import json

import pytest

from common.api.app import create_app
from common.config import Settings
from common.store import Run
from common.wiring import Wiring, build_store


@pytest.fixture
def store(tmp_path):
    store = build_store(Settings(sqlite_path=str(tmp_path / "etl.sqlite3")))
    yield store
    store.close()


@pytest.fixture
def client(store, tmp_path):
    return create_app(Wiring(settings=Settings(sqlite_path=str(tmp_path / "etl.sqlite3")), store=store)).test_client()


def save(store, run_id, stage="extract", source="source_b", status="succeeded", minute=0, **extra) -> Run:
    run = Run(run_id=run_id, stage=stage, source=source, status=status,
              started_at=f"2026-01-01T00:{minute:02d}:00.000Z", **extra)
    store.save_run(run)
    return run


def assert_400(response, name: str) -> None:
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == "invalid_input" and name in error["message"] and error["message"].isascii()


def test_runs_are_newest_first_and_filtered(client, store):
    save(store, "e-b", minute=1)
    save(store, "e-a", source="source_a", status="failed", minute=2)
    save(store, "t", stage="transform_load", source=None, minute=3)
    save(store, "p", stage="pipeline", source=None, status="partial", minute=4,
         summary={"warnings": [], "errors": [], "stages": [{"stage": "extract", "source": "source_b",
                                                          "run_id": "e-b", "status": "succeeded"}]})
    body = client.get("/runs").get_json()
    assert [r["run_id"] for r in body["runs"]] == ["p", "t", "e-a", "e-b"]
    assert "next_cursor" not in body["pagination"] and body["pagination"]["limit"] == 50
    assert "summary" not in body["runs"][0] and body["runs"][0]["status"] == "partial"
    ids = lambda query: [r["run_id"] for r in client.get(f"/runs?{query}").get_json()["runs"]]  # noqa: E731
    assert ids("stage=extract") == ["e-a", "e-b"]
    assert ids("source=source_b") == ["e-b"]
    assert ids("status=failed") == ["e-a"]
    assert ids("stage=extract&status=succeeded&source=source_b") == ["e-b"]
    assert ids("stage=pipeline") == ["p"]


def test_a_cursor_walk_returns_every_run_once_even_while_runs_are_added(client, store):
    for index in range(25):
        save(store, f"r{index:02d}", minute=index // 2)  # start times shared by two runs: run_id breaks the tie
    seen, cursor, pages = [], None, 0
    while True:
        response = client.get("/runs?limit=4" + (f"&cursor={cursor}" if cursor else ""))
        assert response.status_code == 200
        body = response.get_json()
        seen += [r["run_id"] for r in body["runs"]]
        pages += 1
        if pages == 2:
            save(store, "newer", minute=59)  # newer than the walk's start: not in this walk, nothing skipped
        cursor = body["pagination"].get("next_cursor")
        if cursor is None:
            break
    assert seen == [f"r{index:02d}" for index in reversed(range(25))]
    assert pages == 7


def test_one_run_in_full_and_an_unknown_one_is_a_json_404(client, store):
    stages = [{"stage": "extract", "source": "source_b", "run_id": "e-1", "status": "succeeded"}]
    save(store, "pass-1", stage="pipeline", source=None, summary={"warnings": [], "errors": [], "stages": stages,
                                                                  "drift": [{"field": "px", "mapped_to": "price_usd"}]})
    body = client.get("/runs/pass-1").get_json()
    assert body["run"]["summary"]["stages"] == stages and body["run"]["summary"]["drift"][0]["field"] == "px"
    missing = client.get("/runs/nope")
    assert missing.status_code == 404 and missing.mimetype == "application/json"
    assert missing.get_json()["error"]["code"] == "not_found" and "nope" in missing.get_json()["error"]["message"]
    assert client.get("/runs/%E2%98%83").status_code == 404
    assert client.get("/runs/pass-1?x=1").status_code == 400


@pytest.mark.parametrize("query, name", [
    ("stage=load", "stage"), ("source=source_z", "source"), ("status=done", "status"), ("limit=0", "limit"),
    ("limit=201", "limit"), ("limit=%D9%A3", "limit"), ("limit=1.5", "limit"), ("cursor=%%%", "cursor"),
    ("cursor=" + base64.urlsafe_b64encode(b"[1, 2]").decode(), "cursor"),
    ("cursor=" + base64.urlsafe_b64encode(b"not json").decode(), "cursor"),
    ("cursor=" + base64.urlsafe_b64encode(json.dumps(["2026", "x" * 300]).encode()).decode(), "cursor"),
    ("cursor=" + "A" * 600, "cursor"), ("stage=extract&stage=pipeline", "stage"), ("page=2", "page"),
])
def test_every_invalid_parameter_is_a_400_naming_it(client, query, name):
    assert_400(client.get(f"/runs?{query}"), name)
