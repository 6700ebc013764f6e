"""Value formats drift like names do: a file re-saved by a spreadsheet (`31-12-20 23:59`) is read once its values
make the date order unambiguous, never guessed; the decision is recorded, learned, declarable and replayable; and a
run that quarantines most of its rows fails instead of succeeding quietly."""

from __future__ import annotations

import dataclasses
import json
from datetime import date

import pytest
import responses

from common.config import Settings
from common.pipeline import run_extract, run_replay, run_transform
from common.store import DataQuery
from common.wiring import Wiring, build_store
from tests.conftest import FakeClock, csv_lines, write_csv
from tests.conftest import SleepingClock
from tests.unit.test_http_sources import C_URL, coin

DAY_FIRST = "%d-%m-%y %H:%M"
FIX = 'FIELD_FORMATS=\'{"source_b": {"observed_at": "%d-%m-%y %H:%M"}}\''
NOW = FakeClock().now  # 2027-01-15: a YY-MM-DD reading of 28-01-18 (2028-01-18) lies in the future


def resaved(lines: list[str]) -> list[str]:
    """Kaggle lines as a spreadsheet re-saves them: `2018-01-31 23:59:59` -> `31-01-18 23:59`."""
    out = []
    for line in lines:
        cells = line.split(",")
        day = date.fromisoformat(cells[3][:10])
        cells[3] = day.strftime("%d-%m-%y") + " " + cells[3][11:16]
        out.append(",".join(cells))
    return out


@pytest.fixture
def wiring(wiring):
    return dataclasses.replace(wiring, clock=FakeClock())


@pytest.fixture
def api(tmp_path):
    clock = SleepingClock()
    settings = Settings(sqlite_path=str(tmp_path / "etl.sqlite3"), source_c_url=C_URL, source_c_rate="100/1m")
    store = build_store(settings, clock)
    yield Wiring(settings=settings, store=store, clock=clock, sleep=clock.sleep)
    store.close()


def with_formats(wiring: Wiring, formats: dict) -> Wiring:
    settings = dataclasses.replace(wiring.settings, field_formats=json.dumps(formats))
    return dataclasses.replace(wiring, settings=settings)


def format_decision(run) -> dict:
    return next(d for d in run.summary["drift"] if d.get("format") is not None or d["action"] == "ambiguous")


# ------------------------------------------------------------------------------------------ through the pipeline

def test_a_day_first_file_is_inferred_from_all_its_values_recorded_and_learned(wiring):
    lines = csv_lines(coins=1, days=12) + csv_lines(coins=1, days=28, first_coin=1)  # one batch of 40 rows
    assert all(int(line.split(",")[3][8:10]) <= 12 for line in lines[:20])  # more than a sample: all <= 12
    write_csv(wiring.settings.source_b_path, resaved(lines))
    run_extract("b", wiring)
    run = run_transform(wiring)
    assert run.status == "succeeded" and run.rows_out == 40 and run.quarantined == 0
    decision = format_decision(run)
    assert decision | {"evidence": None} == {
        "source": "source_b", "field": "observed_at", "column": "Date", "format": DAY_FIRST, "action": "inferred",
        "method": "inferred from values", "evidence": None, "held_back": False}
    assert set(decision["evidence"]["ruled_out"]) == {"%m-%d-%y %H:%M", "%y-%m-%d %H:%M"}
    eth = wiring.store.query_normalized(DataQuery(symbol="ETH", sort_by="observed_at", descending=False)).items
    assert (eth[0]["observed_at"], eth[-1]["observed_at"]) == ("2018-01-01T23:59:00.000Z", "2018-01-28T23:59:00.000Z")
    learned, _ = wiring.store.get_state("formats:source_b")
    assert learned["fields"]["observed_at"]["format"] == DAY_FIRST
    assert learned["fields"]["observed_at"]["first_seen_run"] == run.run_id

    write_csv(wiring.settings.source_b_path, resaved(csv_lines(coins=1, days=5, first_coin=3)), mode="a")
    run_extract("b", wiring)  # five more rows, every day <= 12: loaded with the learned format
    later = run_transform(wiring)
    assert later.status == "succeeded" and later.rows_out == 5
    applied = format_decision(later)
    assert (applied["action"], applied["method"], applied["learned_in_run"]) == ("applied", "inferred from values",
                                                                                 run.run_id)


def test_ambiguous_dates_wait_in_quarantine_with_the_fix_and_the_run_fails_then_replay_loads_them_once(wiring):
    write_csv(wiring.settings.source_b_path, resaved(csv_lines(coins=2, days=12)))  # every day <= 12
    run_extract("b", wiring)
    run = run_transform(wiring)
    assert run.rows_out == 0 and run.quarantined == 24
    assert run.status == "failed"
    assert "quarantined 24 of 24 rows (100%), more than QUARANTINE_MAX_RATIO=0.5" in run.summary["errors"][0]
    reason = wiring.store.list_quarantine(source="source_b", limit=1)[0]["reason"]
    assert reason.startswith("unparsable timestamp in Date: ambiguous date format: '01-01-18 23:59' reads as "
                             "%d-%m-%y %H:%M, %m-%d-%y %H:%M or %y-%m-%d %H:%M")
    assert FIX in reason and "etl quarantine replay --source source_b" in reason
    assert format_decision(run)["action"] == "ambiguous"
    assert any(FIX in warning for warning in run.summary["warnings"])

    declared = with_formats(wiring, {"source_b": {"observed_at": DAY_FIRST}})
    replay = run_replay(declared, "b")
    assert replay.status == "succeeded" and replay.rows_out == 24 and replay.summary["replay"]["resolved"] == 24
    assert format_decision(replay) | {"learned_in_run": None} == {
        "source": "source_b", "field": "observed_at", "column": "Date", "format": DAY_FIRST, "action": "applied",
        "method": "declared (FIELD_FORMATS)", "held_back": False, "learned_in_run": None}
    stamps = sorted(i["observed_at"] for i in wiring.store.query_normalized(DataQuery(symbol="ETH", limit=50)).items)
    assert stamps[0] == "2018-01-01T23:59:00.000Z" and stamps[-1] == "2018-01-12T23:59:00.000Z"
    again = run_replay(declared, "b")
    assert again.rows_out == 0 and again.summary["replay"]["entries"] == 0
    assert wiring.store.count_normalized() == 24 and wiring.store.count_quarantine(unresolved_only=True) == 0


def test_evidence_in_a_later_batch_pins_the_format_and_replay_loads_what_was_held_back(wiring):
    wiring = dataclasses.replace(wiring, settings=dataclasses.replace(wiring.settings, csv_chunk_rows=12))
    lines = resaved(csv_lines(coins=1, days=12) + csv_lines(coins=1, days=40, first_coin=1))
    write_csv(wiring.settings.source_b_path, lines)
    run_extract("b", wiring)
    run = run_transform(wiring)
    # batches of 12: days 1-12 (twice) and 13-24 leave YY-MM-DD open (2013-01-18 is a date); 25-36 rule it out
    assert run.quarantined == 36 and run.rows_out == 16 and run.status == "failed"
    decision = format_decision(run)
    assert (decision["action"], decision["format"], decision["held_back"]) == ("inferred", DAY_FIRST, True)
    assert any("held back" in w and "etl quarantine replay --source source_b" in w for w in run.summary["warnings"])

    replay = run_replay(wiring, "b")  # nothing declared: the learned format reads them now
    assert replay.status == "succeeded" and replay.rows_out == 36
    assert wiring.store.count_normalized() == 52 and wiring.store.count_quarantine(unresolved_only=True) == 0


def test_a_worker_process_that_pins_the_format_reports_it_and_what_the_main_process_held_back(
        wiring, monkeypatch, sent_to_worker):
    from common import parallel

    monkeypatch.setattr(parallel, "PREFETCH_AFTER_S", 0.0)  # batches 2.. are normalized in the worker
    settings = dataclasses.replace(wiring.settings, csv_chunk_rows=12, transform_workers=1)
    wiring = dataclasses.replace(wiring, settings=settings)
    write_csv(settings.source_b_path, resaved(csv_lines(coins=1, days=12) + csv_lines(coins=1, days=40, first_coin=1)))
    run_extract("b", wiring)
    run = run_transform(wiring)
    assert len(sent_to_worker) == 4 and (run.quarantined, run.rows_out) == (36, 16)  # exactly what one process does
    [decision] = [d for d in run.summary["drift"] if d["field"] == "observed_at"]
    assert (decision["action"], decision["format"], decision["held_back"]) == ("inferred", DAY_FIRST, True)


def test_a_declared_format_wins_over_epoch_reading_of_digit_runs(wiring):
    lines = [line.replace("2018-01-0", "2018010").replace(" 23:59:59", "2359") for line in csv_lines(coins=1, days=9)]
    write_csv(wiring.settings.source_b_path, lines)  # Date 201801012359: 12 digits, an epoch in ms would be 1976
    declared = with_formats(wiring, {"source_b": {"observed_at": "%Y%m%d%H%M"}})
    run_extract("b", declared)
    run = run_transform(declared)
    assert run.status == "succeeded" and run.rows_out == 9
    stamps = {i["observed_at"] for i in wiring.store.query_normalized(DataQuery(limit=50)).items}
    assert "2018-01-09T23:59:00.000Z" in stamps


def test_values_that_do_not_match_the_learned_format_are_quarantined_naming_it(wiring):
    write_csv(wiring.settings.source_b_path, resaved(csv_lines(coins=1, days=40)))
    run_extract("b", wiring)
    assert run_transform(wiring).rows_out == 40
    write_csv(wiring.settings.source_b_path, ["41,Bitcoin,BTC,02/10/2018 23:59,1,1,1,1,1,1"], mode="a")
    run_extract("b", wiring)
    later = run_transform(wiring)
    assert later.quarantined == 1
    reason = wiring.store.list_quarantine(source="source_b")[0]["reason"]
    assert "does not match the format %d-%m-%y %H:%M learned in run" in reason and "FIELD_FORMATS" in reason


def test_field_formats_are_validated_at_start_up():
    from common.errors import ConfigError

    assert Settings.from_env({"FIELD_FORMATS": json.dumps({"source_b": {"observed_at": DAY_FIRST}})}
                             ).formats_for("source_b") == {"observed_at": DAY_FIRST}
    for bad in ("{not json", '{"source_b": "x"}', '{"source_b": {"observed_at": ""}}',
                '{"source_b": {"observed_at": "%d-%m"}}', '{"source_b": {"observed_at": "no directives"}}'):
        with pytest.raises(ConfigError, match="FIELD_FORMATS"):
            Settings.from_env({"FIELD_FORMATS": bad})


# ----------------------------------------------------------------------------------------- the quarantine ratio

@pytest.mark.parametrize(("bad", "status"), [(5, "succeeded"), (6, "failed")])
def test_a_run_that_quarantines_more_than_the_ratio_fails_with_the_reason(wiring, bad, status):
    good = csv_lines(coins=1, days=5)
    broken = [f"{n},Bitcoin,BTC,2019-01-0{n} 23:59:59,1,1,1,abc,1,1" for n in range(1, bad + 1)]
    write_csv(wiring.settings.source_b_path, good + broken)
    run_extract("b", wiring)
    run = run_transform(wiring)
    assert run.status == status and run.quarantined == bad
    assert run.summary["quarantine_ratio"] == pytest.approx(bad / (bad + 5), abs=1e-3)
    if status == "failed":
        assert run.summary["errors"] == [
            f"quarantined {bad} of {bad + 5} rows (55%), more than QUARANTINE_MAX_RATIO=0.5; first reason: "
            "bad number in Close: not a number: 'abc'; see `etl quarantine list`"]
    stored = wiring.store.get_run(run.run_id)
    assert stored.status == status



@responses.activate
def test_json_sources_share_the_coercion_path_and_the_date_formats(api):
    odd = [coin(0), coin(1, current_price="1_0"), coin(2, last_updated="2018"), coin(3, current_price="١٢٣"),
           coin(4, last_updated="31-12-20 23:59"), coin(5, last_updated="28-01-18 23:59")]
    responses.get(C_URL, json=odd)
    run_extract("c", api)
    run = run_transform(api)
    assert run.rows_out == 3 and run.quarantined == 3  # 0, and 4 and 5 read day-first (inferred from both)
    reasons = {e["row_number"]: e["reason"] for e in api.store.list_quarantine("source_c")}
    assert reasons[2].startswith("bad number in current_price: ambiguous number")
    assert reasons[3] == "unparsable timestamp in last_updated: ambiguous: '2018' looks like a year, not an epoch"
    assert reasons[4].startswith("bad number in current_price: not a number")
    stamps = {i["source_id"]: i["observed_at"] for i in api.store.query_normalized(DataQuery(source="source_c")).items}
    assert stamps == {"coin-0": "2025-10-10T14:25:20.000Z", "coin-4": "2020-12-31T23:59:00.000Z",
                      "coin-5": "2018-01-28T23:59:00.000Z"}
    assert format_decision(run)["source"] == "source_c" and format_decision(run)["format"] == DAY_FIRST
