"""GET /health (draft-inadarei-api-health-check) and GET /health/live."""

from __future__ import annotations

import time

import pytest

from common.api.app import create_app
from common.clock import iso_utc
from common.config import Settings
from common.schedule import TRIGGER_HEARTBEAT_KEY
from common.sources import SOURCE_NAMES
from common.store import Run
from common.wiring import Wiring, build_store
from tests.conftest import FakeClock
from tests.unit.test_api_store_outage import UNREACHABLE, counting, down_store

HOUR = 3600.0


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def settings(tmp_path):
    return Settings(sqlite_path=str(tmp_path / "etl.sqlite3"), etl_schedule="1h")


def api(store, settings, clock):
    return create_app(Wiring(settings=settings, store=store, clock=clock)).test_client()


def beat(store, at: float) -> None:
    _, version = store.get_state(TRIGGER_HEARTBEAT_KEY)
    assert store.cas_state(TRIGGER_HEARTBEAT_KEY, {"at": iso_utc(at), "pid": 1, "state": "idle",
                                                   "pass_run_id": None, "next_tick": iso_utc(at + HOUR)}, version)


def extracted(store, source: str, at: float, status: str = "succeeded") -> None:
    store.save_run(Run(run_id=f"e-{source}-{at}", stage="extract", source=source, status=status,
                       started_at=iso_utc(at - 5), finished_at=iso_utc(at)))


def health(client):
    response = client.get("/health")
    assert response.mimetype == "application/health+json"
    return response, response.get_json()


def test_everything_recent_is_pass(store, settings, clock):
    beat(store, clock.now - 5)
    for source in SOURCE_NAMES:
        extracted(store, source, clock.now - HOUR)
    response, body = health(api(store, settings, clock))
    assert response.status_code == 200 and body["status"] == "pass", body
    store_check = body["checks"]["store:responseTime"][0]
    assert store_check["status"] == "pass" and store_check["observedUnit"] == "ms"
    assert isinstance(store_check["observedValue"], (int, float)) and store_check["componentType"] == "datastore"
    assert body["checks"]["scheduler:heartbeat"][0]["observedValue"] == iso_utc(clock.now - 5)
    freshness = body["checks"]["source_b:freshness"][0]
    assert freshness["status"] == "pass" and freshness["observedValue"] == iso_utc(clock.now - HOUR)
    assert set(body["checks"]) == {"store:responseTime", "scheduler:heartbeat",
                                   *(f"{source}:freshness" for source in SOURCE_NAMES)}


def test_a_stale_or_absent_heartbeat_and_an_old_extract_warn_but_answer_200(store, settings, clock):
    client = api(store, settings, clock)
    response, body = health(client)
    assert response.status_code == 200 and body["status"] == "warn"
    assert body["checks"]["scheduler:heartbeat"][0]["status"] == "warn"
    assert all(body["checks"][f"{s}:freshness"][0]["status"] == "warn" for s in SOURCE_NAMES)  # never extracted
    beat(store, clock.now - 2 * HOUR - 60)  # older than 2x the schedule period
    for source in SOURCE_NAMES:
        extracted(store, source, clock.now - 10)
    extracted(store, "source_b", clock.now - 3 * HOUR)
    store.save_run(Run(run_id="newer-failure", stage="extract", source="source_b", status="failed",
                       started_at=iso_utc(clock.now - 1)))
    store.close()
    _, body = health(client)
    assert body["status"] == "warn" and body["checks"]["scheduler:heartbeat"][0]["status"] == "warn"
    assert "stale" in body["checks"]["scheduler:heartbeat"][0]["output"]
    assert body["checks"]["source_b:freshness"][0]["status"] == "pass"  # its newest good extract: 10 s ago
    beat(store, clock.now)
    clock.advance(2 * HOUR + 60)
    beat(store, clock.now)
    _, body = health(client)
    assert body["checks"]["scheduler:heartbeat"][0]["status"] == "pass"
    assert body["checks"]["source_b:freshness"][0]["status"] == "warn"
    assert "source_b" in body["checks"]["source_b:freshness"][0]["output"]


def test_a_store_outage_is_fail_503_after_one_store_call(settings, clock):
    store = down_store()
    response, body = health(api(store, settings, clock))
    assert response.status_code == 503 and body["status"] == "fail"
    assert body["checks"]["store:responseTime"][0]["status"] == "fail"
    assert body["error"]["code"] == "store_unavailable" and "10.1.2.3" not in response.get_data(as_text=True)
    assert store.calls == ["ping"]


@pytest.mark.timeout(60)
def test_an_unreachable_mongodb_fails_within_a_few_seconds(clock):
    settings = Settings(mongodb_uri=UNREACHABLE, store_timeout_s=3.0)
    inner = build_store(settings)
    started = time.perf_counter()
    try:
        response, body = health(api(inner, settings, clock))
    finally:
        inner.close()
    assert response.status_code == 503 and body["status"] == "fail"
    assert time.perf_counter() - started < 5


def test_live_answers_without_touching_the_store(settings, clock):
    store = down_store()
    response = api(store, settings, clock).get("/health/live")
    assert response.status_code == 200 and response.get_json()["status"] == "pass"
    assert response.mimetype == "application/health+json" and store.calls == []


def test_parameters_are_refused(store, settings, clock):
    client = api(store, settings, clock)
    assert client.get("/health?verbose=1").status_code == 400
    assert client.get("/health/live?x=1").status_code == 400
    assert counting(store).calls == []
