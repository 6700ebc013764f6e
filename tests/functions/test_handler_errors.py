"""Every function answers JSON in one shape, whatever goes wrong: bad settings, a store that cannot be built,
a wrong method or path, a request target over the limit, a bug in a stage."""

from __future__ import annotations

import flask
import pytest

from common.api.inbound import stage_response
from tests.functions.test_handlers import client

STAGES = ("extract_source_a", "extract_source_b", "extract_source_c", "transform_load")
FUNCTIONS = ("http_api", *STAGES)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("SQLITE_PATH", str(tmp_path / "etl.sqlite3"))
    monkeypatch.setenv("SOURCE_B_PATH", str(tmp_path / "Historical_Data.csv"))
    for source in ("A", "C"):  # nothing here may reach the internet: a stage that runs fails at once
        monkeypatch.setenv(f"SOURCE_{source}_URL", "http://127.0.0.1:1/")
        monkeypatch.setenv("HTTP_MAX_ATTEMPTS", "1")
    return tmp_path


def json_error(response, statuses: tuple[int, ...], code: str | None = None) -> dict:
    text = response.get_data(as_text=True)
    assert response.status_code in statuses, text
    assert response.mimetype == "application/json", text
    assert "Traceback" not in text and "<html" not in text.lower()
    error = response.get_json()["error"]
    assert {"code", "message", "request_id"} <= set(error)
    assert response.headers["X-Request-ID"] == error["request_id"]
    if code:
        assert error["code"] == code
    return error


def call(name: str, path: str = "/", method: str | None = None, **kwargs):
    method = method or ("GET" if name == "http_api" else "POST")
    return client(name).open(path, method=method, **kwargs)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_invalid_settings_are_a_json_500_naming_no_value(env, monkeypatch, name):
    monkeypatch.setenv("SOURCE_C_PER_PAGE", "999")
    error = json_error(call(name, "/health" if name == "http_api" else "/"), (500,), "config_error")
    assert "999" not in error["message"]


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("uri", ["mongodb://", "mongodb://user:pw@", "mongodb://h:notaport/x", "mysql://h/x"])
def test_a_malformed_mongodb_uri_is_a_clean_json_error(env, monkeypatch, name, uri):
    monkeypatch.setenv("MONGODB_URI", uri)
    monkeypatch.setenv("STORE_TIMEOUT_S", "0.2")
    path = "/data" if name == "http_api" else "/"
    error = json_error(call(name, path), (500, 503))
    assert error["code"] in ("config_error", "store_unavailable")
    assert "pw" not in error["message"] and "notaport" not in error["message"]


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("path", ["/favicon.ico", "/robots.txt"])
def test_the_frameworks_own_routes_answer_json(env, name, path):
    json_error(call(name, path, method="GET"), (404,), "not_found")


@pytest.mark.parametrize("name", STAGES)
def test_a_stage_runs_only_at_its_root(env, name):
    json_error(call(name, "/run/now"), (404,), "not_found")
    assert call("http_api", "/data").get_json()["pagination"]["total"] == 0


@pytest.mark.parametrize("name", STAGES)
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_a_stage_answers_a_wrong_method_in_json(env, name, method):
    json_error(call(name, method=method), (405,), "method_not_allowed")


@pytest.mark.parametrize("name", FUNCTIONS)
def test_a_request_target_over_the_limit_is_a_json_414(env, name):
    from common.api.limits import MAX_TARGET_BYTES

    json_error(call(name, "/?pad=" + "a" * MAX_TARGET_BYTES), (414,), "request_uri_too_long")


def test_a_bug_in_a_stage_is_a_json_500_not_the_frameworks_page(env, caplog):
    def broken(_wiring):
        raise TypeError("release_lease() takes 2 positional arguments but 3 were given")

    app = flask.Flask(__name__)
    with app.test_request_context("/", method="POST", headers={"X-Request-ID": "bug-1"}):
        response = stage_response(flask.request, broken)
    error = json_error(response, (500,), "internal_error")
    assert error["request_id"] == "bug-1" and "release_lease" not in error["message"]
    assert any("bug-1" in record.getMessage() and record.exc_info for record in caplog.records)


def test_the_api_reads_its_settings_once_it_could_build_and_retries_until_then(env, monkeypatch):
    from common.config import Settings

    reads = []
    real = Settings.from_env.__func__
    monkeypatch.setattr(Settings, "from_env", classmethod(lambda cls: reads.append(1) or real(cls)))
    monkeypatch.setenv("SOURCE_A_RATE", "ten per minute")
    api = client("http_api")
    json_error(api.get("/health/live"), (500, 503), "config_error")
    json_error(api.get("/health/live"), (500, 503), "config_error")  # still broken: tried again, still JSON
    monkeypatch.setenv("SOURCE_A_RATE", "10/1m")
    assert api.get("/health/live").status_code == 200
    before = len(reads)
    for _ in range(5):
        assert api.get("/health/live").status_code == 200
    assert len(reads) == before  # built once: no per-request parse of the environment
