"""POST /refresh: the JWT matrix, the pass it runs (real stages, the emulator on loopback, real SQLite), 409 while a
pass holds the pipeline lease, 429 within REFRESH_MIN_S, 503 when no secret is set; the secret never leaks."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import threading
import time

import jwt
import pytest

from common.api.app import create_app
from common.clock import iso_utc, system_clock
from common.config import Settings
from common.errors import ConfigError
from common.store import Run
from common.wiring import Wiring, build_store
from tests.conftest import SleepingClock, csv_lines, write_csv
from tests.e2e.emulator_fixture import source_emulator  # noqa: F401 (fixture)

SECRET = "s3cret-for-tests-only-0123456789-abcdef-" + "k" * 24  # 64 bytes: HS512 needs that much
OTHER_SECRET = "another-secret-of-enough-length-987654321" + "q" * 24


def token(secret: str = SECRET, algorithm: str = "HS256", headers: dict | None = None, **claims) -> str:
    claims.setdefault("exp", int(time.time()) + 600)
    claims = {key: value for key, value in claims.items() if value is not None}
    return jwt.encode(claims, secret, algorithm=algorithm, headers=headers)


def unsigned(claims: dict, header: dict) -> str:
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}."


@pytest.fixture
def env(tmp_path, source_emulator):
    emulator = source_emulator(snapshot_every=0, coins=5)
    write_csv(tmp_path / "Historical_Data.csv", csv_lines(coins=2, days=5))
    return Settings(sqlite_path=str(tmp_path / "etl.sqlite3"), source_b_path=str(tmp_path / "Historical_Data.csv"),
                    source_a_url=f"{emulator.url}/v1/tickers", source_c_url=f"{emulator.url}/api/v3/coins/markets",
                    source_a_rate="1000/1s", source_c_rate="1000/1s", source_c_per_page=10, source_c_max_pages=1,
                    lease_ttl_s=5, jwt_secret=SECRET, refresh_min_s=60)


@pytest.fixture
def made(env):
    """Factory: (client, wiring) for these settings with overrides, on a SleepingClock; stores closed at teardown."""
    stores = []

    def make(clock=None, **overrides):
        settings = dataclasses.replace(env, **overrides)
        clock = clock or SleepingClock()
        store = build_store(settings)
        stores.append(store)
        wiring = Wiring(settings=settings, store=store, clock=clock, sleep=getattr(clock, "sleep", time.sleep))
        return create_app(wiring).test_client(), wiring

    yield make
    for store in stores:
        store.close()


def post(client, bearer: str | None, raw: str | None = None):
    headers = {"Authorization": raw if raw is not None else f"Bearer {bearer}"} if (bearer or raw) else {}
    return client.post("/refresh", headers=headers)


def no_pass_threads_left() -> bool:
    """On a FaaS platform nothing may run after the answer: no stage loop nor lease heartbeat of the pass."""
    return not [t.name for t in threading.enumerate() if t.name.startswith(("pass-", "lease-"))]


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert set(error) == {"code", "message", "request_id"}
    assert error["request_id"] == response.headers["X-Request-ID"]
    assert code is None or error["code"] == code
    return error


BAD_TOKENS = {
    "not a JWT": lambda: "not-a-jwt",
    "three dots of garbage": lambda: "a.b.c",
    "alg none": lambda: unsigned({"exp": int(time.time()) + 600}, {"alg": "none", "typ": "JWT"}),
    "alg none, signature kept": lambda: unsigned({"exp": int(time.time()) + 600}, {"alg": "none"})
    + token().rsplit(".", 1)[1],
    "HS512 with the right secret": lambda: token(algorithm="HS512"),
    "HS384 with the right secret": lambda: token(algorithm="HS384"),
    "RS256 header, HMAC signature": lambda: _with_header(token(), {"alg": "RS256", "typ": "JWT"}),
    "signed with another secret": lambda: token(secret=OTHER_SECRET),
    "expired": lambda: token(exp=int(time.time()) - 5),
    "without exp": lambda: token(exp=None, sub="x"),
    "unknown crit header": lambda: token(headers={"crit": ["urn:example:must"], "urn:example:must": 1}),
    "crit b64 (detached payload)": lambda: token(headers={"crit": ["b64"], "b64": True}),
    "tampered payload": lambda: _tamper(token()),
    "not yet valid (nbf)": lambda: token(nbf=int(time.time()) + 600),
}


def _with_header(good: str, header: dict) -> str:
    _, payload, signature = good.split(".")
    head = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    return f"{head}.{payload}.{signature}"


def _tamper(good: str) -> str:
    head, _, signature = good.split(".")
    payload = base64.urlsafe_b64encode(json.dumps({"exp": int(time.time()) + 10**6, "sub": "root"}).encode())
    return f"{head}.{payload.rstrip(b'=').decode()}.{signature}"


@pytest.mark.parametrize("name", list(BAD_TOKENS))
def test_every_bad_token_is_a_401_with_a_bearer_challenge(made, name, caplog):
    caplog.set_level(logging.DEBUG)
    client, wiring = made()
    response = post(client, BAD_TOKENS[name]())
    assert_error(response, 401, "invalid_token")
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge
    assert wiring.store.list_runs(stage="pipeline") == []  # nothing ran
    assert SECRET not in response.get_data(as_text=True) + str(response.headers) + caplog.text


@pytest.mark.parametrize("raw", [None, "", "Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "bearer a b", "Token abc"])
def test_a_missing_or_malformed_authorization_is_a_401(made, raw):
    client, _ = made()
    response = post(client, None, raw=raw)
    assert_error(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer realm=")


@pytest.mark.parametrize("claims", [{"aud": "someone-else", "iss": "etl"}, {"aud": "etl-api", "iss": "mallory"},
                                    {"iss": "etl"}, {"aud": "etl-api"}])
def test_audience_and_issuer_are_checked_when_set(made, claims):
    client, _ = made(jwt_audience="etl-api", jwt_issuer="etl")
    assert_error(post(client, token(**claims)), 401, "invalid_token")


def test_a_valid_token_runs_one_pass_and_answers_it_with_its_stages(made, caplog):
    caplog.set_level(logging.DEBUG)
    client, wiring = made(jwt_audience="etl-api", jwt_issuer="etl")
    response = post(client, token(aud="etl-api", iss="etl", sub="ops"))
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    run = body["pass"]
    assert body["pass_id"] == run["run_id"] and run["stage"] == "pipeline" and run["status"] == "succeeded"
    stages = {(entry["stage"], entry["source"]): entry["status"] for entry in run["summary"]["stages"]}
    assert stages == {("extract", "source_a"): "succeeded", ("extract", "source_b"): "succeeded",
                      ("extract", "source_c"): "succeeded", ("transform_load", None): "succeeded"}
    assert wiring.store.get_run(run["run_id"]).status == "succeeded"
    assert wiring.store.count_normalized() > 0
    assert no_pass_threads_left()
    assert SECRET not in response.get_data(as_text=True) + str(response.headers) + caplog.text


def test_a_second_refresh_within_refresh_min_s_is_429_with_retry_after(made):
    clock = SleepingClock()
    client, _ = made(clock=clock)
    assert post(client, token()).status_code == 200
    clock.advance(20)
    response = post(client, token())
    assert_error(response, 429, "too_many_requests")
    assert 39 <= int(response.headers["Retry-After"]) <= 41
    other_process, _ = made(clock=clock)  # the same store seen from another process: the limit is shared
    assert_error(post(other_process, token()), 429)
    clock.advance(45)
    assert post(other_process, token()).status_code == 200


def test_a_refresh_while_a_pass_holds_the_pipeline_lease_is_409_with_its_id(made):
    clock = SleepingClock()
    client, wiring = made(clock=clock)
    store = wiring.store
    running = Run(run_id="pipeline-running-elsewhere", stage="pipeline", source=None, started_at=iso_utc(clock()))
    fence = store.acquire_lease("pipeline", running.run_id, 30, clock())
    store.save_run(running)
    response = post(client, token())
    assert_error(response, 409, "pass_running")
    assert response.get_json()["pass_id"] == "pipeline-running-elsewhere"
    assert response.headers["Location"] == "/runs/pipeline-running-elsewhere"
    store.release_lease(fence)
    assert post(client, token()).status_code == 200  # a refresh that ran nothing did not use up the rate limit


def test_a_tiny_budget_answers_202_with_the_pass_id_and_location(tmp_path, made):
    write_csv(tmp_path / "big.csv", csv_lines(coins=40, days=1500))  # 3,000 chunks: never done within 1 s
    client, wiring = made(clock=system_clock, invocation_budget_s=1.0, source_b_path=str(tmp_path / "big.csv"),
                          csv_chunk_rows=20, lease_ttl_s=0.5, alert_timeout_s=0.1)
    started = time.monotonic()
    response = post(client, token())
    assert time.monotonic() - started < 5
    assert response.status_code == 202, response.get_data(as_text=True)
    body = response.get_json()
    assert response.headers["Location"] == f"/runs/{body['pass_id']}"
    assert wiring.store.get_run(body["pass_id"]).status == "partial"
    assert "partial" in {entry["status"] for entry in body["pass"]["summary"]["stages"]}
    assert no_pass_threads_left()


def test_no_secret_means_refresh_disabled_503_even_with_a_token(made):
    client, wiring = made(jwt_secret=None)
    for bearer in (None, token()):
        error = assert_error(post(client, bearer), 503, "refresh_disabled")
        assert "refresh disabled" in error["message"]
    assert wiring.store.list_runs(stage="pipeline") == []


def test_a_short_secret_is_refused_at_start_up():
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        Settings.from_env({"JWT_SECRET": "x" * 31})


def test_get_refresh_is_405(made):
    client, _ = made()
    assert_error(client.get("/refresh"), 405)


# --- etl token ---------------------------------------------------------------------------------------------------
def test_etl_token_mints_a_token_the_api_accepts(made, monkeypatch, capsys):
    from common.cli import main

    client, wiring = made(jwt_audience="etl-api", jwt_issuer="etl")
    monkeypatch.setenv("JWT_SECRET", SECRET)
    monkeypatch.setenv("JWT_AUDIENCE", "etl-api")
    monkeypatch.setenv("JWT_ISSUER", "etl")
    monkeypatch.setenv("SQLITE_PATH", wiring.settings.sqlite_path)
    assert main(["token", "--ttl", "120", "--sub", "alice"]) == 0
    out, err = capsys.readouterr()
    minted = out.strip()
    assert SECRET not in out + err
    claims = jwt.decode(minted, SECRET, algorithms=["HS256"], audience="etl-api", issuer="etl")
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 120
    assert jwt.get_unverified_header(minted)["alg"] == "HS256"
    assert post(client, minted).status_code == 200


@pytest.mark.parametrize("args", [["token"], ["token", "--ttl", "0"], ["token", "--ttl", "-5"]])
def test_etl_token_refuses_without_a_secret_or_a_positive_ttl(monkeypatch, capsys, args):
    from common.cli import main

    monkeypatch.delenv("JWT_SECRET", raising=False)
    if len(args) > 1:
        monkeypatch.setenv("JWT_SECRET", SECRET)
    assert main(args) != 0
    out, err = capsys.readouterr()
    assert out == "" and SECRET not in err
    assert ("JWT_SECRET" in err) if len(args) == 1 else ("ttl" in err)
