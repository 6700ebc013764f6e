"""The answers schemathesis's random examples do not reach, held to /openapi.json with the same checks.

Random requests never name an existing run, never find the store down and never hold a valid token; so these
answers are produced on purpose here (a stored run, a store that raises StoreError on every call, refresh
disabled, rate-limited, or blocked by a running pass) and each is validated by schemathesis against the document:
status documented, content type, headers (the trace headers, WWW-Authenticate, Retry-After, Location) and body.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error, positive_data_acceptance

from common.api.app import create_app
from common.api.auth import mint_token
from common.clock import iso_utc, system_clock
from common.config import Settings
from common.store import Run
from common.store.state import update_state
from common.wiring import Wiring
from tests.conftest import csv_lines, write_csv
from tests.e2e.emulator_fixture import source_emulator  # noqa: F401 (fixture of `made`)
from tests.unit.test_api_refresh import env, made  # noqa: F401 (fixtures)
from tests.unit.test_api_store_outage import Clock, down_store

SECRET = "k" * 32
DELIBERATE_5XX = [not_a_server_error, positive_data_acceptance]  # a documented 503 is the answer under test


def operation(app, path: str, method: str = "GET"):
    return schemathesis.openapi.from_wsgi("/openapi.json", app)[path][method]


def check(app, path: str, method: str = "GET", excluded=(positive_data_acceptance,), **case_args) -> int:
    case = operation(app, path, method).Case(**case_args)
    response = case.call()
    case.validate_response(response, excluded_checks=list(excluded))
    return response.status_code


@pytest.fixture
def app(settings, store):
    store.save_run(Run(run_id="pass-1", stage="pipeline", source=None, status="succeeded",
                       started_at="2026-01-01T00:00:00.000Z", finished_at="2026-01-01T00:00:05.000Z",
                       duration_ms=5000, summary={"warnings": [], "errors": [], "stages": []}))
    return create_app(Wiring(settings=dataclasses.replace(settings, jwt_secret=SECRET), store=store))


def test_an_existing_run_conforms(app):
    assert check(app, "/runs/{run_id}", path_parameters={"run_id": "pass-1"}) == 200
    assert check(app, "/runs", query={"stage": "pipeline", "limit": 1}) == 200


@pytest.mark.parametrize("path", ["/data", "/runs", "/stats", "/health"])
def test_a_store_outage_answers_a_documented_503(path):
    app = create_app(Wiring(settings=Settings(sqlite_path=":memory:"), store=down_store(), clock=Clock()))
    assert check(app, path, excluded=DELIBERATE_5XX) == 503


def test_metrics_with_the_store_down_still_conform():
    app = create_app(Wiring(settings=Settings(sqlite_path=":memory:"), store=down_store(), clock=Clock()))
    assert check(app, "/metrics") == 200


def test_refresh_disabled_is_a_documented_503(settings, store):
    app = create_app(Wiring(settings=settings, store=store))
    assert check(app, "/refresh", "POST", excluded=DELIBERATE_5XX) == 503


def test_refresh_rate_limited_is_429_with_retry_after(app, settings, store):
    now = time.time()
    update_state(store, "refresh:last", lambda last: {"at": now, "claim": "other", "previous": None})
    token = mint_token(dataclasses.replace(settings, jwt_secret=SECRET), 600, "test", now)
    assert check(app, "/refresh", "POST", headers={"Authorization": f"Bearer {token}"}) == 429


def test_refresh_while_a_pass_runs_is_409_with_its_id(app, settings, store):
    now = time.time()
    running = Run(run_id="pass-elsewhere", stage="pipeline", source=None, started_at=iso_utc(now))
    fence = store.acquire_lease("pipeline", running.run_id, 30, now)
    store.save_run(running)
    token = mint_token(dataclasses.replace(settings, jwt_secret=SECRET), 600, "test", now)
    assert check(app, "/refresh", "POST", headers={"Authorization": f"Bearer {token}"}) == 409
    store.release_lease(fence)


def test_a_bad_token_is_401_with_a_bearer_challenge(app):
    assert check(app, "/refresh", "POST", headers={"Authorization": "Bearer not.a.token"}) == 401


def test_a_refresh_that_runs_a_pass_answers_a_documented_200(made):
    """A real pass (sources from the local emulator and a small CSV, as in test_api_refresh) with a valid token."""
    client, wiring = made()
    token = mint_token(wiring.settings, 600, "test", time.time())  # PyJWT checks exp against the wall clock
    assert check(client.application, "/refresh", "POST", headers={"Authorization": f"Bearer {token}"}) == 200


def test_a_refresh_out_of_budget_answers_a_documented_202(tmp_path, made):
    write_csv(tmp_path / "big.csv", csv_lines(coins=40, days=1500))  # 3,000 chunks: never done within 1 s
    client, wiring = made(clock=system_clock, invocation_budget_s=1.0, source_b_path=str(tmp_path / "big.csv"),
                          csv_chunk_rows=20, lease_ttl_s=0.5, alert_timeout_s=0.1)
    token = mint_token(wiring.settings, 600, "test", time.time())
    assert check(client.application, "/refresh", "POST", headers={"Authorization": f"Bearer {token}"}) == 202
