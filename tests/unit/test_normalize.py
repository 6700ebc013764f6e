"""The CSV row normalizer through the real pipeline (SQLite): one coercion path for every cell, coins identified
by ticker and name, and blank lines counted as what they are."""

from __future__ import annotations

import dataclasses

import pytest

from common.ids import idempotency_key
from common.pipeline import run_extract, run_transform
from common.store import DataQuery
from tests.conftest import csv_lines, write_csv


def run_both(wiring):
    return run_extract("source_b", wiring), run_transform(wiring)


def reasons_by_row(store) -> dict[int, str]:
    return {entry["row_number"]: entry["reason"] for entry in store.list_quarantine(source="source_b")}


@pytest.mark.parametrize(("close", "reason"), [
    ("1_0", "bad number in Close: ambiguous number"),  # float() reads 10.0
    ("1__0", "bad number in Close"),
    ("١٢٣", "bad number in Close: not a number"),  # Arabic-Indic digits: float() reads 123.0
    ("１２３", "bad number in Close: not a number"),  # fullwidth digits
    ("12\u00a0", None),  # a no-break space around a number is only whitespace: loads as 12
])
def test_the_csv_fast_path_accepts_only_what_coerce_accepts(wiring, close, reason):
    good = csv_lines(coins=1, days=6)
    odd = f"7,Bitcoin,BTC,2018-01-07 23:59:59,1,1,1,{close},1,1"
    write_csv(wiring.settings.source_b_path, good + [odd])
    _, transform = run_both(wiring)
    if reason is None:
        assert transform.quarantined == 0 and wiring.store.count_normalized() == 7
        return
    assert transform.rows_out == 6 and transform.quarantined == 1
    assert reasons_by_row(wiring.store)[7].startswith(reason)


def test_a_bare_year_or_unicode_digits_in_date_are_quarantined_not_read_as_epochs(wiring):
    good = csv_lines(coins=1, days=8)
    odd = ["9,Bitcoin,BTC,2018,1,1,1,1,1,1", "10,Bitcoin,BTC,١٥١٤٨٥٠٣٩٩,1,1,1,1,1,1",
           "11,Bitcoin,BTC,1514850399,1,1,1,5,1,1"]  # the last is a real epoch (2018-01-01T23:46:39Z): it loads
    write_csv(wiring.settings.source_b_path, good + odd)
    _, transform = run_both(wiring)
    assert transform.rows_out == 9 and transform.quarantined == 2
    reasons = reasons_by_row(wiring.store)
    assert reasons[9] == "unparsable timestamp in Date: ambiguous: '2018' looks like a year, not an epoch"
    assert reasons[10].startswith("unparsable timestamp in Date: not a timestamp")
    stamps = {item["observed_at"] for item in wiring.store.query_normalized(DataQuery(limit=100)).items}
    assert "1970-01-01T00:33:38.000Z" not in stamps and "2018-01-01T23:46:39.000Z" in stamps


def test_numbers_a_locale_aware_spreadsheet_mangled_stay_quarantined(wiring):
    good = csv_lines(coins=1, days=6)
    mangled = "7,Bitcoin,BTC,2018-01-07 23:59:59,1,1,1,2,14.748.800.659.179.600,1"
    write_csv(wiring.settings.source_b_path, good + [mangled])
    _, transform = run_both(wiring)
    assert transform.quarantined == 1
    assert reasons_by_row(wiring.store)[7].startswith("bad number in Volume: ambiguous number")


def test_two_coins_with_one_ticker_on_one_date_both_load(wiring):
    lines = ["1,Uniswap,UNI,2021-01-01 23:59:59,5,4,4.5,4.8,100,1000",
             "1,Universe,UNI,2021-01-01 23:59:59,0.5,0.4,0.45,0.48,10,100",
             "2,Uniswap,UNI,2021-01-02 23:59:59,5,4,4.5,4.9,100,1000"]
    write_csv(wiring.settings.source_b_path, lines)
    _, transform = run_both(wiring)
    assert transform.status == "succeeded" and transform.rows_out == 3 and transform.quarantined == 0
    items = wiring.store.query_normalized(DataQuery(symbol="UNI", limit=10, sort_by="price_usd")).items
    assert [(i["name"], i["source_id"], i["asset_id"], i["price_usd"]) for i in items] == [
        ("Uniswap", "uni-uniswap", "uni-uniswap", 4.9), ("Uniswap", "uni-uniswap", "uni-uniswap", 4.8),
        ("Universe", "uni-universe", "uni-universe", 0.48)]
    for item in items:
        assert item["idempotency_key"] == idempotency_key("source_b", item["source_id"], item["observed_at"])


def test_blank_lines_count_only_blank_lines_not_the_placeholders_of_rejected_ones(wiring):
    settings = dataclasses.replace(wiring.settings, csv_max_line_bytes=200)
    wiring = dataclasses.replace(wiring, settings=settings)
    good = csv_lines(coins=1, days=6)
    path = write_csv(settings.source_b_path, good[:2] + ["", "   "])
    with open(path, "ab") as handle:
        handle.write(b"3,Bitc\xffoin,BTC,2018-01-03 23:59:59,1,1,1,1,1,1\n")  # undecodable
        handle.write(b"4,Bitcoin,BTC," + b"9" * 5000 + b"\n")  # over CSV_MAX_LINE_BYTES
        handle.write(("\n".join(good[2:]) + "\n").encode())
    _, transform = run_both(wiring)
    assert transform.rows_out == 6 and transform.quarantined == 2
    assert transform.summary["blank_lines"] == 2
