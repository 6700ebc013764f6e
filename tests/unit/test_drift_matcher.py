"""Schema drift matcher: the labelled corpus, stage order, guards (margin, taken, types, keys) and bad input."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

from common.drift import matcher
from common.drift.matcher import Decision, MatchResult, match_fields
from common.sources import COINGECKO_MARKET_FIELDS, COINPAPRIKA_TICKER_FIELDS, CSV_HISTORY_FIELDS, Field

ROOT = Path(__file__).resolve().parents[2]
CORPUS = json.loads((ROOT / "tests" / "drift_corpus.json").read_text(encoding="utf-8"))
CSV_HEADER = ["SNo", "Name", "Symbol", "Date", "High", "Low", "Open", "Close", "Volume", "Marketcap"]


def _load_bench():
    """bench/drift_accuracy.py decides how a case is placed among its source's columns; the test reuses it."""
    spec = importlib.util.spec_from_file_location("drift_accuracy", ROOT / "bench" / "drift_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _load_bench()


def _corpus_params():
    for case in CORPUS["cases"]:
        marks = [pytest.mark.xfail(strict=True, reason=case["known_miss"])] if case.get("known_miss") else []
        yield pytest.param(case, id=f"{case['source']}:{case['incoming']}", marks=marks)


@pytest.mark.parametrize("case", list(_corpus_params()))
def test_corpus_case(case):
    decision = BENCH.run_case(case, CORPUS["columns"])
    assert decision.field == case["incoming"]
    assert decision.mapped_to == case["expected"], decision.reason
    assert decision.action == ("skipped" if case["expected"] is None else "mapped")
    keys = {f.name for f in BENCH.SPECS[case["source"]] if f.key}
    if decision.mapped_to in keys:
        assert decision.method in ("exact", "learned", "alias")
    if decision.action == "skipped":
        assert decision.method is None and decision.reason


def test_corpus_is_large_and_labelled_consistently():
    cases = CORPUS["cases"]
    assert len(cases) >= 120
    categories = {"case", "separators", "camelCase", "abbreviation", "typo", "plural", "reordered", "unit_suffix",
                  "nested", "trap", "unmapped"}
    assert {c["category"] for c in cases} <= categories
    for case in cases:
        names = {f.name for f in BENCH.SPECS[case["source"]]}
        assert case["expected"] is None or case["expected"] in names, case
        assert case["category"] not in ("trap", "unmapped") or case["expected"] is None, case
    assert len({(c["source"], c["incoming"]) for c in cases}) == len(cases)


# ------------------------------------------------------------------------------------------ stages, methods

def test_documented_header_maps_exactly_and_drift_reports_only_the_rest():
    result = match_fields(CSV_HEADER, CSV_HISTORY_FIELDS)
    assert result.mapping == {f.aliases[0]: f.name for f in CSV_HISTORY_FIELDS}
    assert all(d.method == "exact" and d.confidence == 1.0 for d in result.decisions if d.field != "SNo")
    assert result.missing_required == []
    assert result.drift() == [{"field": "SNo", "mapped_to": None, "confidence": 0.0, "action": "skipped",
                               "method": None, "reason": "no similar field"}]


def test_each_stage_reports_its_method_and_confidence():
    header = ["Symbol", "date", "close_price", "24h_volume", "Opens", "Marketcpa", "Px"]
    result = match_fields(header, CSV_HISTORY_FIELDS, learned={"Px": "low_usd"})
    got = {d.field: (d.mapped_to, d.method, d.confidence) for d in result.decisions}
    assert got == {
        "Symbol": ("symbol", "exact", 1.0),
        "date": ("observed_at", "alias", 1.0),
        "close_price": ("price_usd", "normalized", 0.95),
        "24h_volume": ("volume_24h_usd", "normalized", 0.95),
        "Opens": ("open_usd", "normalized", 0.95),
        "Marketcpa": ("market_cap_usd", "fuzzy", 0.889),
        "Px": ("low_usd", "learned", 1.0),
    }
    token = match_fields(["24h_volume"], COINPAPRIKA_TICKER_FIELDS).decisions[0]
    assert (token.mapped_to, token.method, token.confidence) == ("volume_24h_usd", "token", 0.9)


def test_nested_paths_match_on_their_leaf_and_keep_the_path_s_currency():
    result = match_fields(["quotes.USD.priceUsd", "quotes.USD.volume24h", "quotes.EUR.market_cap"],
                          COINPAPRIKA_TICKER_FIELDS)
    assert result.mapping == {"quotes.USD.priceUsd": "price_usd", "quotes.USD.volume24h": "volume_24h_usd"}
    assert result.decisions[2].reason == "currency EUR is not market_cap_usd's"


def test_earlier_stages_win_over_later_ones_regardless_of_column_order():
    result = match_fields(["close_price", "Clsoe", "Close"], CSV_HISTORY_FIELDS)
    assert result.mapping == {"Close": "price_usd"}
    assert [d.reason for d in result.decisions[:2]] == ["target already taken by Close"] * 2


def test_learned_mapping_ranks_after_exact_and_before_alias():
    result = match_fields(["Close", "Px"], CSV_HISTORY_FIELDS, learned={"Px": "price_usd"})
    assert result.mapping == {"Close": "price_usd"}
    assert result.decisions[1].reason == "target already taken by Close"
    result = match_fields(["close", "Px"], CSV_HISTORY_FIELDS, learned={"Px": "price_usd"})
    assert result.mapping == {"Px": "price_usd"}  # learned beats the alias match of "close"
    assert result.decisions[0].reason == "target already taken by Px"
    unknown = match_fields(["Zq"], CSV_HISTORY_FIELDS, learned={"Zq": "gone_field"})  # field since removed
    assert unknown.mapping == {} and unknown.decisions[0].reason == "no similar field"


def test_extra_aliases_match_case_insensitively_and_feed_the_automatic_stages():
    extra = {"price_usd": ["Last Trade"], "symbol": ["Ticker"]}
    result = match_fields(["LAST TRADE", "ticker"], CSV_HISTORY_FIELDS, extra_aliases=extra)
    assert [(d.mapped_to, d.method) for d in result.decisions] == [("price_usd", "alias"), ("symbol", "alias")]
    normalized = match_fields(["lastTrade"], CSV_HISTORY_FIELDS, extra_aliases=extra).decisions[0]
    assert (normalized.mapped_to, normalized.method) == ("price_usd", "normalized")


def test_alias_comparison_ignores_case_and_surrounding_spaces_but_keeps_the_raw_name():
    result = match_fields([" Close ", "MARKETCAP"], CSV_HISTORY_FIELDS)
    assert result.mapping == {" Close ": "price_usd", "MARKETCAP": "market_cap_usd"}


# ------------------------------------------------------------------------------------------------ guards

def test_threshold_applies_to_fuzzy_matches_only():
    strict = match_fields(["Clsoe", "close_price"], CSV_HISTORY_FIELDS, threshold=0.85)
    assert strict.mapping == {"close_price": "price_usd"}
    skipped = match_fields(["Clsoe"], CSV_HISTORY_FIELDS, threshold=0.85).decisions[0]
    assert skipped.reason == "below threshold 0.85 (best: price_usd 0.80)" and skipped.confidence == 0.8
    assert match_fields(["Clsoe"], CSV_HISTORY_FIELDS).mapping == {"Clsoe": "price_usd"}


def test_margin_over_a_different_field_is_required():
    fields = (Field("netflow", "number"), Field("netflux", "number"), Field("symbol", "text", key=True))
    tie = match_fields(["netflox"], fields).decisions[0]
    assert tie.action == "skipped" and tie.reason == "ambiguous: netflow 0.86 vs netflux 0.86"
    assert match_fields(["netflox"], fields, margin=0.0).mapping == {"netflox": "netflow"}
    clear = match_fields(["netfloww"], fields).decisions[0]  # 0.875 vs 0.75
    assert clear.mapped_to == "netflow"


def test_fuzzy_targets_go_to_the_highest_confidence_and_are_never_reassigned():
    result = match_fields(["Volme", "Volumne"], CSV_HISTORY_FIELDS)  # 0.833 vs 0.857
    assert result.mapping == {"Volumne": "volume_24h_usd"}
    assert result.decisions[0].reason == "target already taken by Volumne"
    assert result.decisions[0].confidence == 0.833


def test_duplicates_among_normalized_matches_keep_the_first_column():
    result = match_fields(["price", "last_price"], COINGECKO_MARKET_FIELDS)
    assert result.mapping == {"price": "price_usd"}
    assert result.decisions[1].reason == "target already taken by price"


def test_sample_values_must_fit_the_target_type():
    numbers = {"Clsoe": ["1,234.5", 12, None, "", "$3"], "close_price": ["n/a", "abc"], "Names": ["Bitcoin", 7]}
    result = match_fields(["Clsoe", "Names"], CSV_HISTORY_FIELDS, samples=numbers)
    assert result.mapping == {"Clsoe": "price_usd"}
    assert result.decisions[1].reason == "sample values are not text (1 of 2 fit)"
    bad = match_fields(["close_price"], CSV_HISTORY_FIELDS, samples=numbers).decisions[0]
    assert bad.reason == "sample values are not numbers (0 of 2 fit)"
    text = match_fields(["Names"], CSV_HISTORY_FIELDS, samples={"Names": [1, 2, 3]}).decisions[0]
    assert text.reason == "sample values are not text (0 of 3 fit)"
    blank = match_fields(["close_price"], CSV_HISTORY_FIELDS, samples={"close_price": [None, " "]})
    assert blank.mapping == {"close_price": "price_usd"}  # no evidence either way
    explicit = match_fields(["Close"], CSV_HISTORY_FIELDS, samples={"Close": ["abc"]})
    assert explicit.mapping == {"Close": "price_usd"}  # exact/alias/learned are not second-guessed


def test_one_dirty_sample_in_ten_is_tolerated_two_are_not():
    values = ["1.5"] * 9 + ["oops"]
    assert match_fields(["Clsoe"], CSV_HISTORY_FIELDS, samples={"Clsoe": values}).mapping == {"Clsoe": "price_usd"}
    values = ["1.5"] * 8 + ["oops"] * 2
    decision = match_fields(["Clsoe"], CSV_HISTORY_FIELDS, samples={"Clsoe": values}).decisions[0]
    assert decision.reason == "sample values are not numbers (8 of 10 fit)"


def test_timestamp_fields_check_samples_with_to_timestamp():
    fields = (Field("first_seen", "timestamp"), Field("price_usd", "number"))
    ok = match_fields(["firstSeen"], fields, samples={"firstSeen": ["2025-06-25T10:47:48Z", 1750848468]})
    assert ok.mapping == {"firstSeen": "first_seen"}
    bad = match_fields(["firstSeen"], fields, samples={"firstSeen": ["yesterday", "soon"]}).decisions[0]
    assert bad.reason == "sample values are not timestamps (0 of 2 fit)"


@pytest.mark.parametrize(("source", "name", "field"), [
    ("source_b", "Symbols", "symbol"), ("source_b", "Dates", "observed_at"), ("source_a", "lastUpdated", "observed_at"),
    ("source_a", "coin_id", "source_id"), ("source_c", "last_update", "observed_at"), ("source_a", "Symbol_", "symbol"),
])
def test_key_fields_are_never_automatic_targets(source, name, field):
    decision = match_fields([name], BENCH.SPECS[source]).decisions[0]
    assert decision.action == "skipped"
    assert decision.reason.startswith(f"key field {field} maps only by exact name, learned mapping or alias")


def test_key_fields_map_by_alias_learned_or_extra_alias():
    result = match_fields(["SYMBOL", "Timestamp", "Ticker"], CSV_HISTORY_FIELDS,
                          learned={"Timestamp": "observed_at"}, extra_aliases={"name": ["Ticker"]})
    assert result.mapping == {"SYMBOL": "symbol", "Timestamp": "observed_at", "Ticker": "name"}


@pytest.mark.parametrize(("name", "reason"), [
    ("price_eur", "below threshold 0.80 (best: price_usd 0.62)"),
    ("quotes.BTC.price", "currency BTC is not price_usd's"),
    ("high_7d", "time window 7d does not fit high_usd"),
    ("market_cap_fd", "extra word 'fd' resembles nothing in market_cap_usd"),
    ("Adj.Close", "'adjusted' marks a different quantity than price_usd"),
])
def test_look_alikes_are_skipped_with_the_reason(name, reason):
    decision = match_fields([name], CSV_HISTORY_FIELDS).decisions[0]
    assert (decision.action, decision.reason) == ("skipped", reason)


# ----------------------------------------------------------------------------------- result and reporting

def test_missing_required_and_closest_candidates_for_error_messages():
    result = match_fields(["Symbol", "Date", "Cls", "Clos_eur", "Open", "Volume"], CSV_HISTORY_FIELDS)
    assert result.missing_required == ["price_usd"]
    closest = result.closest("price_usd")
    assert closest == [("Cls", 0.6), ("Clos_eur", 0.5)]
    assert all(0 < score < 1 for _, score in closest)
    assert "Open" not in dict(closest)  # mapped to another field
    assert result.closest("open_usd") == [("Open", 1.0)]
    assert result.closest("no_such_field") == []
    message = "missing required field price_usd; closest: " + ", ".join(f"{n} ({s:.2f})" for n, s in closest)
    assert message == "missing required field price_usd; closest: Cls (0.60), Clos_eur (0.50)"


def test_closest_lists_at_most_three_best_first():
    result = match_fields(["Clse", "Closs", "Clo", "Cl0se_x", "Symbol", "Date"], CSV_HISTORY_FIELDS, threshold=0.99)
    assert result.closest("price_usd") == [("Clse", 0.8), ("Closs", 0.8), ("Cl0se_x", 0.667)]
    assert result.closest("price_usd", limit=5)[-1] == ("Clo", 0.6)


def test_decisions_serialise_to_the_run_summary_shape():
    result = match_fields(["Close", "close_price", "mkt_cap", "rank"], CSV_HISTORY_FIELDS)
    mapped = result.decisions[2].to_dict()
    assert mapped == {"field": "mkt_cap", "mapped_to": "market_cap_usd", "confidence": 0.95, "action": "mapped",
                      "method": "normalized"}
    assert set(result.decisions[3].to_dict()) == {"field", "mapped_to", "confidence", "action", "method", "reason"}
    assert [d["field"] for d in result.drift()] == ["close_price", "mkt_cap", "rank"]
    json.dumps(result.to_dict())
    assert isinstance(result, MatchResult) and isinstance(result.decisions[0], Decision)
    with pytest.raises(AttributeError):
        result.decisions[0].mapped_to = "x"  # frozen


# ------------------------------------------------------------------------------------------------ bad input

def test_bad_names_are_skipped_not_fatal():
    header = ["Close", "Close", "", "   ", None, 5, b"Open", "Open", ["x"]]
    result = match_fields(header, CSV_HISTORY_FIELDS)
    reasons = [d.reason for d in result.decisions]
    assert reasons == [None, "duplicate column", "empty name", "empty name", "not a string", "not a string",
                       "not a string", None, "not a string"]
    assert result.mapping == {"Close": "price_usd", "Open": "open_usd"}
    assert [d.field for d in result.decisions][4:7] == ["None", "5", "b'Open'"]
    assert len(result.decisions) == len(header)


def test_odd_but_valid_names_do_not_crash():
    names = ["...", "_", "$", "€uro", "価格", "a" * 5000, "x.y.z.", ".price", "USD", "24h", "in_usd", "quotes.USD."]
    result = match_fields(names, COINPAPRIKA_TICKER_FIELDS)
    assert len(result.decisions) == len(names)
    assert result.mapping == {".price": "price_usd"}


def test_empty_inputs():
    assert match_fields([], CSV_HISTORY_FIELDS).missing_required == ["symbol", "observed_at", "price_usd"]
    assert match_fields(["Close"], []).decisions[0].reason == "no similar field"


def test_five_hundred_names_by_ten_fields_is_fast():
    fields = (*CSV_HISTORY_FIELDS, Field("trades", "number", aliases=("Trades",)))
    names = [f"{base}_{n}" for n in range(50) for base in (
        "close_price", "Volumne", "mkt_cap", "percent_change_24h", "circulating_supply", "Hgih", "quotes.USD.x",
        "opn", "Market Cap", "ath")]
    best = float("inf")
    for _ in range(3):
        matcher.analyse.cache_clear()
        matcher._build_spec.cache_clear()
        started = time.perf_counter()
        result = match_fields(names, fields)
        best = min(best, time.perf_counter() - started)
    assert len(result.decisions) == 500
    assert best < 0.1  # about 25 ms on the dev machine, cold caches
