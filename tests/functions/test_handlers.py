"""Each function's handler through functions-framework's own app (create_app(...).test_client())."""

from __future__ import annotations

import functions_framework
import pytest
import responses

from tests.conftest import ROOT, csv_lines, write_csv


def client(name: str):
    app = functions_framework.create_app(target=name, source=str(ROOT / "functions" / name / "main.py"))
    return app.test_client()


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("SQLITE_PATH", str(tmp_path / "etl.sqlite3"))
    monkeypatch.setenv("SOURCE_B_PATH", str(tmp_path / "Historical_Data.csv"))
    monkeypatch.setenv("CSV_CHUNK_ROWS", "25")
    return tmp_path


def test_extract_then_transform_then_data(env):
    write_csv(env / "Historical_Data.csv", csv_lines(coins=2, days=30) + ["31,Bitcoin,BTC,bad-date,1,1,1,1,1,1"])
    extract = client("extract_source_b").post("/", headers={"X-Request-ID": "req-1"})
    assert extract.status_code == 200
    body = extract.get_json()["run"]
    assert body["status"] == "succeeded" and body["rows_in"] == 61 and body["stage"] == "extract"
    assert extract.headers["X-Run-ID"] == body["run_id"] and extract.headers["X-Request-ID"] == "req-1"

    transform = client("transform_load").post("/")
    assert transform.status_code == 200
    assert transform.get_json()["run"]["rows_out"] == 60 and transform.get_json()["run"]["quarantined"] == 1

    api = client("http_api")
    data = api.get("/data?limit=5&symbol=eth&sort_by=price_usd&order=asc")
    assert data.status_code == 200
    payload = data.get_json()
    assert {**payload["pagination"], "next_cursor": "x"} == {"page": 1, "limit": 5, "total": 30, "pages": 6,
                                                            "next_cursor": "x"}
    prices = [item["price_usd"] for item in payload["data"]]
    assert prices == sorted(prices) and {item["symbol"] for item in payload["data"]} == {"ETH"}
    assert data.headers["X-Run-ID"] == transform.get_json()["run"]["run_id"]
    assert float(data.headers["X-API-Latency-Ms"]) >= 0 and data.headers["X-Request-ID"]
    health = api.get("/health")
    assert health.status_code == 200 and health.get_json()["status"] in ("pass", "warn")
    assert health.get_json()["checks"]["store:responseTime"][0]["status"] == "pass"


def test_a_failed_run_is_a_500_with_the_reason(env):
    response = client("extract_source_b").post("/")
    assert response.status_code == 500
    run = response.get_json()["run"]
    assert run["status"] == "failed" and "Historical_Data.csv" in run["summary"]["errors"][0]


def test_stage_functions_only_accept_post(env):
    response = client("transform_load").get("/")
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"


@responses.activate
def test_source_c_extracts_pages_and_source_a_reports_a_bad_key(env, monkeypatch):
    monkeypatch.setenv("SOURCE_C_URL", "https://c.example/api/v3/coins/markets")
    monkeypatch.setenv("SOURCE_C_PER_PAGE", "2")
    monkeypatch.setenv("SOURCE_A_URL", "https://a.example/v1/tickers")
    monkeypatch.setenv("SOURCE_A_API_KEY", "wrong-key")
    coin = {"id": "bitcoin", "symbol": "btc", "name": "Bitcoin", "current_price": 1.5,
            "last_updated": "2025-10-10T14:25:20.000Z"}
    responses.get("https://c.example/api/v3/coins/markets", json=[coin, {**coin, "id": "b2", "symbol": "b2"}])
    responses.get("https://c.example/api/v3/coins/markets", json=[])
    responses.get("https://a.example/v1/tickers", status=401, json={"error": "invalid api key"})

    c = client("extract_source_c").post("/")
    assert c.status_code == 200
    run = c.get_json()["run"]
    assert (run["status"], run["rows_in"], run["summary"]["pages"]) == ("succeeded", 2, 2)
    assert responses.calls[0].request.params["page"] == "1" and responses.calls[1].request.params["page"] == "2"

    a = client("extract_source_a").post("/")
    assert a.status_code == 500
    assert a.get_json()["run"]["summary"]["errors"] == ["source_a: 401 — check SOURCE_A_API_KEY"]
    assert "wrong-key" not in a.get_data(as_text=True)


@pytest.mark.parametrize("query, message", [
    ("limit=0", "limit must be an integer from 1 to 1000"),
    ("limit=5000", "limit must be an integer from 1 to 1000"),
    ("page=-1", "page must be an integer"),
    ("sort_by=name;drop", "sort_by must be one of"),
    ("symbol=%27%20OR%201=1", "symbol must be a ticker symbol"),
    ("source=x", "source must be one of"),
    ("bogus=1", "unknown query parameter(s): bogus"),
    ("limit=1&limit=2", "more than once"),
])
def test_bad_query_parameters_are_400_with_one_error_shape(env, query, message):
    response = client("http_api").get(f"/data?{query}")
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "invalid_input" and message in error["message"] and error["request_id"]


def test_unknown_paths_and_methods_are_json_errors(env):
    api = client("http_api")
    missing = api.get("/nope")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"
    wrong = api.post("/data")
    assert wrong.status_code == 405 and wrong.get_json()["error"]["code"] == "method_not_allowed"
