"""Source C end to end (the real `etl` process against the emulator on loopback) under issue 7's adversaries:
a ranking that moves between page requests (item 7), a page that fails every attempt (item 6) and a Retry-After
of 31 years (item 5)."""

from __future__ import annotations

import json
import subprocess
import time

from common.store import DataQuery
from common.store.sqlite import SqliteStore
from tests.e2e.conftest import etl_cli, stage_env
from tests.e2e.test_sources_live import requests_to


def etl_run(env: dict[str, str]) -> list[dict]:
    done = subprocess.run(etl_cli("run", "--source", "c", "--quiet"), env=env, capture_output=True, text=True,
                          timeout=120)
    return json.loads(done.stdout)["runs"]


def c_env(tmp_path, emulator, **extra: str) -> dict[str, str]:
    return stage_env(tmp_path, SOURCE_C_URL=f"{emulator.url}/api/v3/coins/markets", SOURCE_C_RATE="100/1s",
                     **extra)


def test_a_ranking_that_moves_between_pages_loses_no_coin_and_is_counted_honestly(tmp_path, source_emulator):
    emulator = source_emulator(snapshot_every=0, coins=40)
    top_20 = [r["id"] for r in emulator.market.markets[:20]]
    emulator.set_chaos("c", rank_moves=[[11, 1]])  # after page 1 the 11th coin jumps to the top
    env = c_env(tmp_path, emulator, SOURCE_C_PER_PAGE="10", SOURCE_C_MAX_PAGES="2")
    extract, transform = etl_run(env)
    assert [int(e["query"]["page"]) for e in requests_to(emulator, "c")] == [1, 2, 1]
    assert extract["status"] == "succeeded" and transform["status"] == "succeeded"
    summary = extract["summary"]
    assert (summary["records"], summary["distinct_coins"], summary["shift_unrecovered"]) == (30, 20, 0)
    assert summary["duplicates_across_pages"] == [{"id": top_20[9], "pages": [1, 2]}]
    assert summary["refetched_pages"][0]["new_ids"] == [top_20[10]]
    store = SqliteStore(env["SQLITE_PATH"])
    stored = {row["source_id"] for row in store.query_normalized(DataQuery(source="source_c", limit=1000)).items}
    assert stored == set(top_20)


def test_a_page_failing_every_attempt_is_quarantined_and_the_next_run_starts_a_fresh_pass(tmp_path, source_emulator):
    emulator = source_emulator(snapshot_every=0, coins=25)
    emulator.set_chaos("c", malformed_pages=[2, 2])  # page 2 is broken for both attempts
    env = c_env(tmp_path, emulator, SOURCE_C_PER_PAGE="10", SOURCE_C_MAX_PAGES="3", HTTP_MAX_ATTEMPTS="2")
    extract, transform = etl_run(env)
    assert [int(e["query"]["page"]) for e in requests_to(emulator, "c")] == [1, 2, 2, 3]
    assert extract["status"] == "partial" and extract["quarantined"] == 1 and transform["status"] == "succeeded"
    store = SqliteStore(env["SQLITE_PATH"])
    assert store.count_normalized("source_c") == 15
    [entry] = store.list_quarantine("source_c")
    assert "page 2" in entry["reason"] and "not valid JSON" in entry["reason"] and "502 Bad Gateway" in entry["raw"]
    etl_run(env)  # not pinned to page 2 of the old pass: a fresh pass from page 1, which now loads everything
    assert [int(e["query"]["page"]) for e in requests_to(emulator, "c")][4:] == [1, 2, 3]
    assert store.count_normalized("source_c") == 25


def test_a_retry_after_of_31_years_blocks_no_process_for_more_than_the_cap(tmp_path, source_emulator):
    emulator = source_emulator(snapshot_every=0, coins=10)
    emulator.set_chaos("c", storm_429=1, storm_retry_after=999999999)
    env = c_env(tmp_path, emulator, SOURCE_C_PER_PAGE="10", MAX_SERVER_WAIT_S="3600", INVOCATION_BUDGET_S="30")
    before = time.time()
    extract, _ = etl_run(env)
    assert extract["status"] == "partial"
    [capped] = extract["summary"]["http"]["capped_waits"]
    assert (capped["requested_s"], capped["waited_s"]) == (999999999, 3600)
    state, _ = SqliteStore(env["SQLITE_PATH"]).get_state("adaptive:source_c")
    assert state["blocked_until"] <= before + 3600 + 60
