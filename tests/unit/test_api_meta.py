"""Traceability: X-Request-ID, X-Run-ID (the last good pass) and X-API-Latency-Ms on every answer, and the same
three in a `meta` block of every JSON object body, errors included."""

from __future__ import annotations

import pytest

from common.api.app import create_app
from common.store import Run
from common.wiring import Wiring


@pytest.fixture
def client(settings, store):
    store.save_run(Run(run_id="t-1", stage="transform_load", source=None, status="succeeded",
                       started_at="2026-01-01T00:00:00.000Z"))
    store.save_run(Run(run_id="pass-1", stage="pipeline", source=None, status="partial",
                       started_at="2026-01-01T00:00:01.000Z"))
    store.save_run(Run(run_id="t-2", stage="transform_load", source=None, status="succeeded",
                       started_at="2026-01-01T00:00:02.000Z"))
    return create_app(Wiring(settings=settings, store=store)).test_client()


@pytest.mark.parametrize("path, status", [("/data?limit=2", 200), ("/runs", 200), ("/health", 200),
                                          ("/data?limit=0", 400), ("/runs/nope", 404), ("/nowhere", 404)])
def test_every_json_body_carries_the_same_meta_as_the_headers(client, path, status):
    response = client.get(path, headers={"X-Request-ID": "trace-me.1"})
    assert response.status_code == status
    meta = response.get_json()["meta"]
    assert meta == {"request_id": "trace-me.1", "run_id": "pass-1",  # the last good pass, not the newer stage run
                    "latency_ms": float(response.headers["X-API-Latency-Ms"])}
    assert response.headers["X-Request-ID"] == "trace-me.1" and response.headers["X-Run-ID"] == "pass-1"


def test_without_any_pass_the_run_id_is_the_last_good_transform(settings, store):
    store.save_run(Run(run_id="t-9", stage="transform_load", source=None, status="succeeded",
                       started_at="2026-01-01T00:00:00.000Z"))
    response = create_app(Wiring(settings=settings, store=store)).test_client().get("/runs")
    assert response.headers["X-Run-ID"] == "t-9" and response.get_json()["meta"]["run_id"] == "t-9"


def test_a_non_json_answer_is_left_alone(client):
    response = client.get("/metrics")
    assert response.status_code == 200 and b'"meta"' not in response.get_data()
    assert response.headers["X-Run-ID"] == "pass-1"
