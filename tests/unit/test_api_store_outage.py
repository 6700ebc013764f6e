"""A store outage answers one clean 503: the store is asked at most once per request and nothing of its
address, port or timeouts reaches the caller (the detail goes to the log with the request id)."""

from __future__ import annotations

import logging

import pytest

from common.api.app import create_app
from common.config import Settings
from common.errors import StoreError
from common.store import Run, Store
from common.wiring import Wiring, build_store

DETAIL = "MongoDB ping failed: 10.1.2.3:27017: [Errno 111] Connection refused, Timeout: 30s, Topology Description"
PUBLIC = {"code": "store_unavailable", "message": "the data store is unavailable; retry later"}
UNREACHABLE = "mongodb://127.0.0.1:1/x?serverSelectionTimeoutMS=200&connectTimeoutMS=200"


def _port_double(name: str, behaviour) -> type[Store]:
    """A concrete subclass of the real port: every abstract method records its name, then `behaviour` answers."""

    def method_for(method: str):
        def method_(self, *args, **kwargs):
            self.calls.append(method)
            return behaviour(self, method, *args, **kwargs)

        method_.__name__ = method
        return method_

    return type(name, (Store,), {method: method_for(method) for method in Store.__abstractmethods__})


def _down(self, method, *args, **kwargs):
    raise StoreError(DETAIL, operation=method)


def _forward(self, method, *args, **kwargs):
    return getattr(self.inner, method)(*args, **kwargs)


DownStore = _port_double("DownStore", _down)
CountingStore = _port_double("CountingStore", _forward)


def down_store() -> Store:
    store = DownStore()
    store.calls = []
    return store


def counting(inner: Store) -> Store:
    store = CountingStore()
    store.calls, store.inner = [], inner
    return store


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def api(store: Store, settings: Settings | None = None, clock=None):
    wiring = Wiring(settings=settings or Settings(sqlite_path=":memory:"), store=store, clock=clock or Clock())
    return create_app(wiring).test_client()


@pytest.mark.parametrize("path", ["/health", "/data", "/data?symbol=BTC&limit=5"])
def test_a_store_outage_is_one_store_call_and_a_clean_503(path, caplog):
    store = down_store()
    with caplog.at_level(logging.ERROR):
        response = api(store).get(path, headers={"X-Request-ID": "outage-1"})
    assert response.status_code == 503
    error = response.get_json()["error"]
    assert {k: error[k] for k in ("code", "message")} == PUBLIC and error["request_id"] == "outage-1"
    assert "context" not in error
    assert len(store.calls) == 1, store.calls
    assert "10.1.2.3" not in response.get_data(as_text=True) and "27017" not in str(response.headers)
    assert response.headers["X-Request-ID"] == "outage-1" and response.headers["X-Run-ID"]
    logged = [r for r in caplog.records if "outage-1" in r.getMessage()]
    assert logged and DETAIL in logged[0].getMessage()


def test_a_request_that_does_not_need_the_store_asks_it_at_most_once_and_still_answers():
    store = down_store()
    client = api(store)
    missing = client.get("/nope")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"
    assert len(store.calls) <= 1
    assert missing.headers["X-Run-ID"] == "unknown"


def test_the_run_id_is_read_once_per_interval_not_once_per_request(tmp_path):
    settings = Settings(sqlite_path=str(tmp_path / "etl.sqlite3"))
    inner = build_store(settings)
    inner.save_run(Run(run_id="run-1", stage="transform_load", source=None, status="succeeded",
                       started_at="2026-01-01T00:00:00.000Z"))
    store, clock = counting(inner), Clock()
    client = api(store, settings, clock)
    first = client.get("/runs/no-such-run")  # one get_run; the X-Run-ID lookup is the only latest_runs
    assert first.status_code == 404 and first.headers["X-Run-ID"] == "run-1"
    lookups = store.calls.count("latest_runs")
    assert lookups == 1
    for _ in range(5):
        assert client.get("/runs/no-such-run").headers["X-Run-ID"] == "run-1"
    assert store.calls.count("latest_runs") == lookups
    inner.save_run(Run(run_id="run-2", stage="transform_load", source=None, status="succeeded",
                       started_at="2026-01-01T01:00:00.000Z"))
    clock.now += 60
    assert client.get("/runs/no-such-run").headers["X-Run-ID"] == "run-2"
    assert store.calls.count("latest_runs") == lookups + 1
    inner.close()


def test_a_cached_run_id_survives_the_outage_that_follows():
    healthy = counting(None)
    run = Run(run_id="run-9", stage="transform_load", source=None, status="succeeded")
    state = {"down": False}

    class Inner:
        def __getattr__(self, method):
            def answer(*args, **kwargs):
                if state["down"]:
                    raise StoreError(DETAIL)
                return {"last_run": run, "latest_runs": [run]}.get(method)
            return answer

    healthy.inner = Inner()
    client = api(healthy)
    assert client.get("/health").headers["X-Run-ID"] == "run-9"
    state["down"] = True
    healthy.calls.clear()
    response = client.get("/health")
    assert response.status_code == 503 and response.headers["X-Run-ID"] == "run-9"
    assert healthy.calls == ["ping"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["/health", "/data"])
def test_an_unreachable_mongodb_answers_a_clean_503_after_one_store_call(path):
    settings = Settings(mongodb_uri=UNREACHABLE, store_timeout_s=0.2)
    inner = build_store(settings)
    store = counting(inner)
    response = api(store, settings).get(path)
    inner.close()
    assert response.status_code == 503
    error = response.get_json()["error"]
    assert {k: error[k] for k in ("code", "message")} == PUBLIC
    text = response.get_data(as_text=True) + str(response.headers)
    assert "127.0.0.1" not in text and ":1" not in text and "Timeout" not in text
    assert len(store.calls) == 1, store.calls
