"""Settings from the environment, adapter selection, and the `etl` console script."""

from __future__ import annotations

import json

import pytest

from common.cli import main
from common.config import Settings
from common.errors import ConfigError, StoreError
from common.store import SCHEMA_VERSION
from common.store.mongo import MongoStore
from common.store.sqlite import SqliteStore
from common.wiring import build_store
from tests.conftest import csv_lines, write_csv


def test_defaults_and_overrides():
    assert Settings.from_env({}) == Settings()
    settings = Settings.from_env({"SQLITE_PATH": "/x/db", "CSV_CHUNK_ROWS": "5", "INVOCATION_BUDGET_S": "60.5"})
    assert (settings.sqlite_path, settings.csv_chunk_rows, settings.invocation_budget_s) == ("/x/db", 5, 60.5)


@pytest.mark.parametrize("env, message", [
    ({"CSV_CHUNK_ROWS": "many"}, "CSV_CHUNK_ROWS must be a int"),
    ({"CSV_CHUNK_ROWS": "0"}, "CSV_CHUNK_ROWS must be >= 1"),
    ({"LEASE_TTL_S": "-1"}, "LEASE_TTL_S must be >= 0.1"),
    ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL must be"),
])
def test_invalid_settings_are_a_clear_config_error(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_secrets_stay_out_of_repr():
    settings = Settings.from_env({"MONGODB_URI": "mongodb://user:hunter2@db/etl"})
    assert "hunter2" not in repr(settings) and settings.store_kind == "mongo"


def test_mongo_is_chosen_when_mongodb_uri_is_set(tmp_path):
    assert isinstance(build_store(Settings(sqlite_path=str(tmp_path / "x.db"))), SqliteStore)
    store = build_store(Settings(mongodb_uri="mongodb://127.0.0.1:1/etl_test?serverSelectionTimeoutMS=50"))
    assert isinstance(store, MongoStore)
    try:
        with pytest.raises(StoreError):  # nothing listens there: a translated error, not a pymongo one
            store.ping()
    finally:
        store.close()


def test_etl_run_prints_a_json_summary_and_exits_by_outcome(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SQLITE_PATH", str(tmp_path / "etl.sqlite3"))
    monkeypatch.setenv("SOURCE_B_PATH", str(tmp_path / "h.csv"))
    assert main(["run", "--source", "b", "--quiet"]) == 1  # the file does not exist yet
    failed = json.loads(capsys.readouterr().out)
    assert failed["ok"] is False and "not found" in failed["runs"][0]["summary"]["errors"][0]

    write_csv(tmp_path / "h.csv", csv_lines(coins=1, days=12))
    assert main(["run", "--source", "b"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [run["stage"] for run in summary["runs"]] == ["extract", "transform_load"]
    assert summary["runs"][1]["rows_out"] == 12


def test_etl_run_reports_an_unreachable_source_as_a_failed_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SQLITE_PATH", str(tmp_path / "etl.sqlite3"))
    monkeypatch.setenv("SOURCE_A_URL", "http://127.0.0.1:9/v1/tickers")  # discard port: nothing listens
    monkeypatch.setenv("HTTP_MAX_ATTEMPTS", "1")
    assert main(["run", "--source", "a", "--stage", "extract"]) == 1
    run = json.loads(capsys.readouterr().out)["runs"][0]
    assert run["status"] == "failed" and "source_a: cannot connect" in run["summary"]["errors"][0]


@pytest.mark.parametrize("value", ["10", "10/", "ten/1m", "0/1m", "5/0s", "5/2d", "5/2 minutes"])
def test_bad_rate_strings_are_rejected_at_start_up(value):
    with pytest.raises(ConfigError, match="SOURCE_C_RATE must look like"):
        Settings.from_env({"SOURCE_C_RATE": value})


def test_etl_migrate_upgrades_a_first_release_store_in_place(tmp_path, monkeypatch, capsys):
    import sqlite3

    from tests.contract.test_store_contract import write_v1_sqlite

    path = write_v1_sqlite(tmp_path / "old.sqlite3")
    monkeypatch.setenv("SQLITE_PATH", str(path))
    monkeypatch.delenv("MONGODB_URI", raising=False)
    assert main(["migrate"]) == 0
    assert json.loads(capsys.readouterr().out)["schema_version"] == {"found": 1, "now": SCHEMA_VERSION}
    assert main(["migrate"]) == 0
    assert json.loads(capsys.readouterr().out)["schema_version"] == {"found": SCHEMA_VERSION, "now": SCHEMA_VERSION}
    with sqlite3.connect(path) as conn:
        ids = sorted(r[0] for r in conn.execute("SELECT source_id FROM normalized WHERE source = 'source_b'"))
    conn.close()
    assert ids == ["btc-bitcoin", "uni-uniswap"]


def test_a_bad_alert_recipient_list_stops_start_up():
    with pytest.raises(ConfigError, match="ALERT_EMAIL_TO"):
        Settings.from_env({"ALERT_EMAIL_TO": "ops@example.com, nobody"})
    assert Settings.from_env({"ALERT_EMAIL_TO": "a@x.io, b@y.io"}).alert_email_to == "a@x.io, b@y.io"


@pytest.mark.parametrize("schedule", ["every hour", "61 * * * *", "0 * * *", "0s"])
def test_a_bad_schedule_stops_start_up(schedule):
    with pytest.raises(ConfigError, match="ETL_SCHEDULE"):
        Settings.from_env({"ETL_SCHEDULE": schedule})


def test_a_short_jwt_secret_stops_start_up_and_names_no_value():
    with pytest.raises(ConfigError, match="JWT_SECRET must be at least 32 bytes") as raised:
        Settings.from_env({"JWT_SECRET": "too-short-secret"})
    assert "too-short-secret" not in raised.value.message
    settings = Settings.from_env({"JWT_SECRET": "x" * 32})
    assert settings.jwt_secret == "x" * 32 and "x" * 32 not in repr(settings)
    assert Settings.from_env({}).jwt_secret is None  # unset: refresh is disabled, never a default secret
