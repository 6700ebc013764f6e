"""Extract + transform/load in-process on SQLite and on the Mongo adapter (mongomock-ng): exactly-once loading,
resume, single flight."""

from __future__ import annotations

import dataclasses

import pytest

from common.pipeline import run_extract, run_transform
from common.store import DataQuery
from common.wiring import Wiring
from tests.conftest import FakeClock, csv_lines, store_for, write_csv


@pytest.fixture(params=["sqlite", "mongomock"])
def wiring(request, settings):
    """Every flow here runs on both adapters: nothing above the store port may know which one it has."""
    store = store_for(request.param, settings)
    yield Wiring(settings=settings, store=store)
    store.close()


def keys(store) -> set[tuple[str, str]]:
    page = store.query_normalized(DataQuery(limit=100_000))
    return {(item["symbol"], item["observed_at"]) for item in page.items}


def run_both(wiring: Wiring):
    return run_extract("source_b", wiring), run_transform(wiring)


def test_loads_every_valid_row_once_and_a_rerun_adds_nothing(wiring):
    write_csv(wiring.settings.source_b_path, csv_lines(coins=3, days=50))
    extract, transform = run_both(wiring)
    assert (extract.status, transform.status) == ("succeeded", "succeeded")
    assert extract.rows_in == 150 and extract.summary["batches"] == 4  # chunks of 40 rows
    assert transform.rows_out == 150 and wiring.store.count_normalized() == 150
    first = wiring.store.query_normalized(DataQuery(limit=1, symbol="BTC", sort_by="observed_at", descending=False))
    assert first.items[0]["observed_at"] == "2018-01-01T23:59:59.000Z" and first.items[0]["asset_id"] == "btc-bitcoin"

    again_extract, again_transform = run_both(wiring)
    assert again_extract.status == "succeeded" and again_extract.rows_in == 0
    assert again_transform.rows_in == 0
    assert wiring.store.count_normalized() == 150


def test_appended_rows_are_loaded_exactly(wiring):
    path = wiring.settings.source_b_path
    write_csv(path, csv_lines(coins=2, days=30))
    run_both(wiring)
    before = keys(wiring.store)
    write_csv(path, csv_lines(coins=1, days=25, first_coin=5), mode="a")
    extract, transform = run_both(wiring)
    assert extract.rows_in == 25 and transform.rows_out == 25
    after = keys(wiring.store)
    assert before < after and len(after - before) == 25
    assert {symbol for symbol, _ in after - before} == {"ADA"}


def test_replaced_file_is_detected_and_reread_without_duplicates(wiring):
    path = wiring.settings.source_b_path
    write_csv(path, csv_lines(coins=2, days=30, seed=1))
    run_both(wiring)
    write_csv(path, csv_lines(coins=2, days=30, seed=2))  # same keys, new prices
    extract, _ = run_both(wiring)
    assert any("replaced" in warning for warning in extract.summary["warnings"])
    assert extract.rows_in == 60
    assert wiring.store.count_normalized() == 60


def test_malformed_rows_are_quarantined_with_reason_and_good_rows_kept(wiring):
    good = csv_lines(coins=1, days=10)
    bad = [
        "11,Bitcoin,BTC,2018-01-11 23:59:59,1,2,3",  # too few columns
        "12,Bitcoin,BTC,not-a-date,1,1,1,1,1,1",
        "13,Bitcoin,BTC,2018-01-13 23:59:59,1,1,1,abc,1,1",
        "14,Bitcoin,,2018-01-14 23:59:59,1,1,1,1,1,1",
        "15,Bitcoin,BTC,2018-01-15 23:59:59,1,1,1,,1,1",
        "16,Bitcoin,BTC,2018-01-16 23:59:59,1,1,1,nan,1,1",
        "17,Bitcoin,BTC,2018-01-17 23:59:59,1,1,1,-5,1,1",
        '18,"Bit"coin",BTC,2018-01-18 23:59:59,1,1,1,1,1,1',
    ]
    write_csv(wiring.settings.source_b_path, good[:5] + bad + good[5:] + [""])
    _, transform = run_both(wiring)
    assert transform.status == "succeeded"
    assert wiring.store.count_normalized() == 10
    entries = wiring.store.list_quarantine(source="source_b")
    reasons = {entry["row_number"]: entry["reason"] for entry in entries}
    assert len(entries) == len(bad) == transform.quarantined
    assert reasons[6] == "expected 10 columns, got 7"
    assert "unparsable timestamp in Date" in reasons[7]
    assert reasons[8] == "bad number in Close: not a number: 'abc'"
    assert reasons[9] == "missing Symbol"
    assert reasons[10] == "missing Close"
    assert "non-finite" in reasons[11] and "negative" in reasons[12]
    assert "expected 10 columns" in reasons[13] or "quoting" in reasons[13]
    assert {entry["raw"] for entry in entries} == set(bad)
    assert transform.summary["blank_lines"] == 1


def test_non_utf8_and_oversized_lines_are_quarantined(wiring):
    settings = dataclasses.replace(wiring.settings, csv_max_line_bytes=200)
    wiring = dataclasses.replace(wiring, settings=settings)
    good = csv_lines(coins=1, days=4)
    path = write_csv(settings.source_b_path, good[:2])
    with open(path, "ab") as handle:
        handle.write(b"3,Bitc\xffoin,BTC,2018-01-03 23:59:59,1,1,1,1,1,1\n")
        handle.write(b"4,Bitcoin,BTC," + b"9" * 5000 + b"\n")
        handle.write(("\n".join(good[2:]) + "\n").encode())
    _, transform = run_both(wiring)
    assert wiring.store.count_normalized() == 4
    reasons = {e["row_number"]: e["reason"] for e in wiring.store.list_quarantine()}
    assert reasons[3].startswith("not valid UTF-8") and "CSV_MAX_LINE_BYTES" in reasons[4]


def test_bad_files_fail_the_run_with_a_clear_reason(wiring):
    path = wiring.settings.source_b_path
    missing = run_extract("source_b", wiring)
    assert missing.status == "failed" and "not found" in missing.summary["errors"][0]

    open(path, "w").close()
    empty = run_extract("source_b", wiring)
    assert empty.status == "failed" and "empty" in empty.summary["errors"][0]

    write_csv(path, [], header="Coin,When,Price")
    wrong = run_extract("source_b", wiring)
    assert wrong.status == "failed" and "Symbol" in wrong.summary["errors"][0]
    assert wiring.store.get_run(wrong.run_id).status == "failed"

    write_csv(path, [])
    header_only = run_extract("source_b", wiring)
    assert header_only.status == "succeeded" and "no data rows" in header_only.summary["warnings"][0]


def test_deadline_returns_partial_and_the_next_invocation_resumes(wiring):
    write_csv(wiring.settings.source_b_path, csv_lines(coins=2, days=100))  # 200 rows = 5 chunks

    class TickingClock(FakeClock):
        def __call__(self) -> float:
            self.now += 1.0
            return self.now

    settings = dataclasses.replace(wiring.settings, invocation_budget_s=7)
    ticking = dataclasses.replace(wiring, settings=settings, clock=TickingClock())
    first = run_extract("source_b", ticking)
    assert first.status == "partial" and 0 < first.rows_in < 200
    second = run_extract("source_b", wiring)
    assert second.status == "succeeded" and first.rows_in + second.rows_in == 200
    run_transform(wiring)
    assert wiring.store.count_normalized() == 200


def test_a_held_lease_skips_and_an_expired_one_is_taken_over(wiring):
    write_csv(wiring.settings.source_b_path, csv_lines(coins=1, days=10))
    clock = FakeClock()
    wiring = dataclasses.replace(wiring, clock=clock)
    assert wiring.store.acquire_lease("extract:source_b", "someone-else", 30, clock())
    skipped = run_extract("source_b", wiring)
    assert skipped.status == "skipped" and skipped.rows_in == 0
    assert wiring.store.get_run(skipped.run_id).status == "skipped"

    clock.advance(31)
    taken = run_extract("source_b", wiring)
    assert taken.status == "succeeded" and taken.rows_in == 10


def test_a_run_left_running_by_a_crash_is_marked_failed_by_the_next_one(wiring):
    from common.store import Run

    write_csv(wiring.settings.source_b_path, csv_lines(coins=1, days=5))
    wiring.store.save_run(Run(run_id="crashed", stage="extract", source="source_b", started_at="2026-01-01T00:00:00Z"))
    run_extract("source_b", wiring)
    crashed = wiring.store.get_run("crashed")
    assert crashed.status == "failed" and "abandoned" in crashed.summary["errors"][0]


def test_stored_idempotency_keys_are_the_documented_hash(wiring):
    from common.ids import idempotency_key

    write_csv(wiring.settings.source_b_path, csv_lines(coins=2, days=3))
    run_both(wiring)
    for item in wiring.store.query_normalized(DataQuery(limit=10)).items:
        assert item["idempotency_key"] == idempotency_key("source_b", item["source_id"], item["observed_at"])
        assert item["source_id"] == item["asset_id"]  # symbol and name: tickers collide
