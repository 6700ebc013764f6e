"""The API's edge under hostile input: every answer is JSON in one shape, nothing hostile is echoed."""

from __future__ import annotations

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from common.api.app import create_app
from common.config import Settings
from common.api.envelope import request_id_of
from common.wiring import Wiring, build_store


@pytest.fixture
def client(tmp_path):
    settings = Settings(sqlite_path=str(tmp_path / "etl.sqlite3"))
    store = build_store(settings)
    yield create_app(Wiring(settings=settings, store=store)).test_client()
    store.close()


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert set(error) == {"code", "message", "request_id"} and error["code"] == code
    return error


@pytest.mark.parametrize("value", ["²", "٣", "５", "1²", "𝟗", "9" * 5000, "+5", "-1", "5.0", "0x10", "1_0", "\u00a05"])
@pytest.mark.parametrize("name", ["limit", "page"])
def test_only_ascii_digits_make_a_number(client, name, value):
    error = assert_error(client.get("/data", query_string={name: value}), 400, "invalid_input")
    assert f"{name} must be an integer" in error["message"] and len(error["message"]) < 200


@pytest.mark.parametrize("query", ["symbol=BTC%0A", "asset_id=btc-bitcoin%0A", "symbol=%00", "symbol=%FF%FE",
                                   "sort_by=symbol%0A", "order=desc%0A%0D"])
def test_control_characters_and_broken_encodings_are_400(client, query):
    response = client.get(f"/data?{query}")
    if response.status_code == 200:  # a value that strips to a valid one is a valid one
        assert query.endswith(("%0A", "%0A%0D"))
    else:
        assert_error(response, 400, "invalid_input")


def test_a_request_target_over_the_limit_is_a_json_414_before_any_parsing(client):
    from common.api.limits import MAX_TARGET_BYTES

    long_query = "symbol=" + "A" * (MAX_TARGET_BYTES + 10)
    error = assert_error(client.get(f"/data?{long_query}"), 414, "request_uri_too_long")
    assert str(MAX_TARGET_BYTES) in error["message"]
    at_limit = "/data?symbol=BTC&x=" + "a" * (MAX_TARGET_BYTES - len("/data?symbol=BTC&x="))
    assert_error(client.get(at_limit), 400, "invalid_input")  # exactly at the limit: parsed, then refused as usual


@pytest.mark.parametrize("given", ["", "a" * 65, "abc\n", "abc\r\nSet-Cookie: x=1", "é", "a b", "<script>", "x" * 10_000])
def test_a_hostile_or_oversized_request_id_is_never_echoed(client, given):
    environ = EnvironBuilder(path="/health").get_environ()
    environ["HTTP_X_REQUEST_ID"] = given
    chosen = request_id_of(Request(environ))
    assert chosen != given and len(chosen) == 32 and chosen.isalnum()
    response = client.get("/nope", environ_overrides={"HTTP_X_REQUEST_ID": given})
    error = assert_error(response, 404, "not_found")
    assert error["request_id"] == response.headers["X-Request-ID"] != given


def test_a_safe_request_id_is_echoed(client):
    response = client.get("/health", headers={"X-Request-ID": "trace-1.2_3"})
    assert response.headers["X-Request-ID"] == "trace-1.2_3"
