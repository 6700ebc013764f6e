"""Schema drift through the real pipeline (SQLite): header drift, learned mappings, missing required fields,
bad headers, and quarantine replay exactly once."""

from __future__ import annotations

import dataclasses
import json

import pytest
import responses

from common.config import Settings
from common.pipeline import run_extract, run_replay, run_transform
from common.store import DataQuery
from common.wiring import Wiring, build_store
from tests.conftest import csv_lines, write_csv
from tests.conftest import SleepingClock
from tests.unit.test_http_sources import C_URL, coin


def drifted(lines: list[str]) -> list[str]:
    """Kaggle lines re-cut to the drifted header below: reordered, Low dropped, Exchange added."""
    out = []
    for line in lines:
        _sno, name, symbol, date, high, _low, open_, close, volume, cap = line.split(",")
        out.append(",".join([symbol, name, date.replace(" ", "T") + "+00:00", open_, high, close, volume, cap,
                             "binance"]))
    return out


DRIFTED_HEADER = "Symbol,Name,Date,Open,High,close_price,Volume24h,MarketCap,Exchange"


def by_field(run) -> dict[str, dict]:
    return {d["field"]: d for d in run.summary["drift"]}


def test_a_header_that_drifts_between_runs_loads_and_every_decision_is_recorded(wiring):
    path = wiring.settings.source_b_path
    write_csv(path, csv_lines(coins=2, days=20))
    _, first = run_extract("b", wiring), run_transform(wiring)
    assert first.summary["drift"] == [] and first.summary["warnings"] == []

    later = [line for i, line in enumerate(csv_lines(coins=2, days=30)) if i % 30 >= 20]
    write_csv(path, drifted(later), header=DRIFTED_HEADER)  # the file is replaced
    run_extract("b", wiring)
    second = run_transform(wiring)
    assert second.status == "succeeded" and second.rows_out == 20 and second.quarantined == 0
    decisions = by_field(second)
    assert decisions["close_price"] | {"confidence": 0} == {
        "source": "source_b", "field": "close_price", "mapped_to": "price_usd", "confidence": 0,
        "action": "mapped", "method": "normalized"}
    assert decisions["Volume24h"]["mapped_to"] == "volume_24h_usd" and decisions["Volume24h"]["action"] == "mapped"
    assert decisions["MarketCap"]["method"] == "alias" and decisions["MarketCap"]["mapped_to"] == "market_cap_usd"
    assert decisions["Exchange"]["action"] == "skipped" and decisions["Exchange"]["mapped_to"] is None
    assert any("'Exchange' skipped" in warning for warning in second.summary["warnings"])
    page = wiring.store.query_normalized(DataQuery(symbol="BTC", sort_by="observed_at", descending=True, limit=1))
    latest = page.items[0]
    assert latest["observed_at"] == "2018-01-30T23:59:59.000Z" and latest["low_usd"] is None
    assert latest["price_usd"] > 0 and latest["market_cap_usd"] > 0
    assert wiring.store.count_normalized() == 60

    learned, _ = wiring.store.get_state("mapping:source_b")
    assert learned["fields"]["close_price"]["mapped_to"] == "price_usd"
    assert learned["fields"]["close_price"]["first_seen_run"] == second.run_id

    latest = [line for i, line in enumerate(csv_lines(coins=2, days=35)) if i % 35 >= 30]
    write_csv(path, drifted(latest), header=DRIFTED_HEADER)
    run_extract("b", wiring)
    third = run_transform(wiring)
    assert by_field(third)["close_price"]["learned_in_run"] == second.run_id  # applied without re-scoring


def test_a_required_field_missing_from_the_file_fails_with_the_closest_candidates(wiring):
    write_csv(wiring.settings.source_b_path, ["BTC,Bitcoin,2018-01-01,1,2"], header="Symbol,Name,Date,Settlement,Qty")
    run = run_extract("b", wiring)
    assert run.status == "failed"
    message = run.summary["errors"][0]
    assert message.startswith("source_b: missing required field(s): price_usd (Close); closest:")


@pytest.mark.parametrize("header, expected_skip", [
    ("SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap,Close", "duplicate column"),
    ("SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap,", "empty name"),
])
def test_duplicate_and_empty_column_names_are_skipped_with_a_reason(wiring, header, expected_skip):
    lines = [line + ",7" for line in csv_lines(coins=1, days=5)]
    write_csv(wiring.settings.source_b_path, lines, header=header)
    run_extract("b", wiring)
    run = run_transform(wiring)
    assert run.status == "succeeded" and run.rows_out == 5
    assert any(d["action"] == "skipped" and expected_skip in d.get("reason", "") for d in run.summary["drift"])
    prices = {item["price_usd"] for item in wiring.store.query_normalized(DataQuery()).items}
    assert 7.0 not in prices  # the first Close column is the one loaded


def test_a_header_with_hundreds_of_columns(wiring):
    extra = [f"metric_{i}" for i in range(400)]
    lines = [line + "," + ",".join("1" for _ in extra) for line in csv_lines(coins=1, days=3)]
    write_csv(wiring.settings.source_b_path, lines, header="SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap,"
              + ",".join(extra))
    run_extract("b", wiring)
    run = run_transform(wiring)
    assert run.status == "succeeded" and run.rows_out == 3
    assert sum(d["action"] == "skipped" for d in run.summary["drift"]) == 400


@pytest.fixture
def api(tmp_path):
    clock = SleepingClock()
    settings = Settings(sqlite_path=str(tmp_path / "etl.sqlite3"), source_c_url=C_URL, source_c_per_page=10,
                        source_c_rate="100/1m")
    store = build_store(settings, clock)
    yield Wiring(settings=settings, store=store, clock=clock, sleep=clock.sleep)
    store.close()


def with_alias(wiring: Wiring, name: str) -> Wiring:
    aliases = json.dumps({"source_c": {"price_usd": [name]}})
    return dataclasses.replace(wiring, settings=dataclasses.replace(wiring.settings, field_aliases=aliases))


@responses.activate
def test_a_page_without_a_required_field_fails_the_run_and_replays_exactly_once_after_an_alias(api):
    renamed = [{k if k != "current_price" else "settlement": v for k, v in coin(n).items()} for n in range(4)]
    responses.get(C_URL, json=renamed)
    run_extract("c", api)
    failed = run_transform(api)
    assert failed.status == "failed" and "missing required field(s): price_usd (current_price)" in \
        failed.summary["errors"][0]
    assert api.store.count_normalized() == 0 and api.store.count_quarantine(unresolved_only=True) == 1

    fixed = with_alias(api, "settlement")
    replay = run_replay(fixed, "c")
    assert replay.status == "succeeded" and replay.rows_out == 4 and replay.summary["replay"]["resolved"] == 1
    assert api.store.count_normalized() == 4 and api.store.count_quarantine(unresolved_only=True) == 0
    again = run_replay(fixed, "c")
    assert again.rows_out == 0 and again.summary["replay"]["entries"] == 0
    assert api.store.count_normalized() == 4


@responses.activate
def test_records_missing_a_mapped_field_replay_one_by_one(api):
    page = [coin(n) for n in range(5)]
    for record in page[3:]:
        record["price_now"] = record.pop("current_price")
    responses.get(C_URL, json=page)
    run_extract("c", api)
    first = run_transform(api)
    assert first.status == "succeeded" and first.rows_out == 3 and first.quarantined == 2
    not_yet = run_replay(api, "c")
    assert not_yet.rows_out == 0 and not_yet.summary["replay"]["still_quarantined"] == 2

    replay = run_replay(with_alias(api, "price_now"), "c")
    assert replay.rows_out == 2 and replay.summary["replay"]["resolved"] == 2
    assert api.store.count_normalized() == 5
    assert run_replay(with_alias(api, "price_now"), "c").rows_out == 0
    prices = sorted(item["price_usd"] for item in api.store.query_normalized(DataQuery()).items)
    assert prices == [10.0, 11.0, 12.0, 13.0, 14.0]


def test_field_aliases_are_validated_at_start_up():
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="FIELD_ALIASES"):
        Settings.from_env({"FIELD_ALIASES": "{not json"})
    with pytest.raises(ConfigError, match="FIELD_ALIASES"):
        Settings.from_env({"FIELD_ALIASES": '{"source_b": ["x"]}'})
    with pytest.raises(ConfigError, match="DRIFT_THRESHOLD"):
        Settings.from_env({"DRIFT_THRESHOLD": "1.5"})
