"""Issue 7 item 1: a half-written last line is never loaded; a final line that legitimately has no newline is.

The CSV may be appended to by another program while the extract reads it. A last line without its newline is held
back (the checkpoint stops before it) unless the file is provably complete: size and mtime unchanged across
CSV_SETTLE_S, or nothing written since the last run. The settle wait is an injected sleep on a fake clock here.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from common.clock import Deadline
from common.extract import checkpoint_name, extract_csv
from common.pipeline import run_transform
from common.runs import run_stage
from common.sources import source_spec
from common.store import DataQuery, Run
from common.wiring import Wiring
from tests.conftest import FakeClock, csv_lines, write_csv

FULL_LINE = "51,Bitcoin,BTC,2030-01-01 23:59:59,14136.822,13493.039,13500,13869.875,18207227040.29,253850238322.34"
FRAGMENT = FULL_LINE[:-9]  # "...,253850" — what the writer has flushed so far
REST = FULL_LINE[-9:] + "\n"


class FakeSleep:
    """Advances the fake clock instead of waiting; `during` runs inside the wait (the writer acting meanwhile)."""

    def __init__(self, clock: FakeClock, during=None) -> None:
        self.clock, self.during, self.calls = clock, during, []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.clock.advance(seconds)
        if self.during:
            self.during()


def make_wiring(wiring: Wiring, clock: FakeClock) -> Wiring:
    return Wiring(settings=wiring.settings, store=wiring.store, clock=clock)


def extract(wiring: Wiring, sleep, progress=None) -> Run:
    """The extract stage exactly as `run_extract` runs it, with the settle sleep injected."""
    settings, store, clock = wiring.settings, wiring.store, wiring.clock
    spec = source_spec("source_b", settings)
    deadline = Deadline(clock, settings.invocation_budget_s)
    return run_stage("extract", spec.name, store, lease_ttl_s=settings.lease_ttl_s, clock=clock,
                     budget_s=settings.invocation_budget_s,
                     work=lambda run, keeper: extract_csv(spec, keeper.store, settings, run, keeper, deadline,
                                                          progress, sleep=sleep))


def append(path: str | Path, text: str) -> None:
    with open(path, "a", encoding="utf-8", newline="") as handle:
        handle.write(text)


def bump_mtime(path: str | Path) -> None:
    """A later mtime even on a coarse-grained file system (the writer wrote again)."""
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def market_caps(store) -> dict[str, float]:
    items = store.query_normalized(DataQuery(limit=1000, symbol="BTC")).items
    return {item["observed_at"][:10]: item["market_cap_usd"] for item in items}


def test_a_half_written_last_line_is_held_back_and_loaded_whole_once_finished(wiring):
    clock = FakeClock()
    wiring = make_wiring(wiring, clock)
    path = wiring.settings.source_b_path
    write_csv(path, csv_lines(coins=1, days=50))
    append(path, FRAGMENT)  # the writer flushed part of the last line ...
    finish = FakeSleep(clock, during=lambda: append(path, REST))  # ... and finishes it while we wait

    first = extract(wiring, finish)
    run_transform(wiring)

    assert market_caps(wiring.store).get("2030-01-01") is None  # not loaded truncated (253850)
    assert first.status == "succeeded" and first.rows_in == 50
    assert wiring.store.count_quarantine() == 0
    assert any("held back" in warning for warning in first.summary["warnings"])
    saved = wiring.store.get_checkpoint(checkpoint_name("source_b"))
    assert saved["offset"] == os.path.getsize(path) - len(FULL_LINE) - 1  # never past the line's start

    second = extract(wiring, FakeSleep(clock))
    run_transform(wiring)
    assert second.rows_in == 1
    assert market_caps(wiring.store)["2030-01-01"] == 253850238322.34
    assert wiring.store.count_quarantine() == 0 and wiring.store.count_normalized() == 51


def test_a_final_line_without_newline_is_loaded_once_the_file_has_settled(wiring):
    clock = FakeClock()
    wiring = make_wiring(wiring, clock)
    path = wiring.settings.source_b_path
    write_csv(path, csv_lines(coins=1, days=50))
    append(path, FULL_LINE)  # a complete file whose last line simply has no newline
    sleep = FakeSleep(clock)

    run = extract(wiring, sleep)
    run_transform(wiring)

    assert run.rows_in == 51 and not run.summary["warnings"]
    assert sum(sleep.calls) == wiring.settings.csv_settle_s  # waited one settle interval, on the fake clock
    assert market_caps(wiring.store)["2030-01-01"] == 253850238322.34
    saved = wiring.store.get_checkpoint(checkpoint_name("source_b"))
    assert saved["offset"] == os.path.getsize(path)

    again = extract(wiring, sleep)
    assert again.rows_in == 0 and len(sleep.calls) == 1  # nothing new: no second wait


def test_no_wait_when_reading_took_longer_than_the_settle_interval(wiring):
    clock = FakeClock()
    wiring = make_wiring(wiring, clock)
    path = wiring.settings.source_b_path
    write_csv(path, csv_lines(coins=1, days=50))
    append(path, FULL_LINE)
    sleep = FakeSleep(clock)

    run = extract(wiring, sleep, progress=lambda *_: clock.advance(1.0))  # two chunks: 2 s of reading

    assert run.rows_in == 51 and sleep.calls == []


def test_a_line_held_back_is_loaded_by_the_next_run_if_nothing_was_written_since(wiring):
    clock = FakeClock()
    wiring = make_wiring(wiring, clock)
    path = wiring.settings.source_b_path
    write_csv(path, csv_lines(coins=1, days=50))
    append(path, FRAGMENT)
    slow_writer = FakeSleep(clock, during=lambda: (append(path, "2383"), bump_mtime(path)))  # still no newline

    first = extract(wiring, slow_writer)
    assert first.rows_in == 50 and any("held back" in w for w in first.summary["warnings"])

    no_wait = FakeSleep(clock)
    second = extract(wiring, no_wait)  # the file is as the last run left it: complete
    run_transform(wiring)
    assert second.rows_in == 1 and no_wait.calls == [] and not second.summary["warnings"]
    assert market_caps(wiring.store)["2030-01-01"] == 2538502383


def test_no_settle_wait_past_the_deadline(wiring, settings):
    clock = FakeClock()
    short = Wiring(settings=replace(settings, invocation_budget_s=10.0, csv_settle_s=9.5), store=wiring.store,
                   clock=clock)
    path = short.settings.source_b_path
    write_csv(path, csv_lines(coins=1, days=5))
    append(path, FULL_LINE)
    sleep = FakeSleep(clock)

    run = extract(short, sleep)
    assert run.status == "succeeded" and run.rows_in == 5 and sleep.calls == []
    assert any("held back" in w for w in run.summary["warnings"])


def test_an_unfinished_oversize_last_line_is_held_back_not_rejected(wiring, settings):
    clock = FakeClock()
    small = Wiring(settings=replace(settings, csv_max_line_bytes=200), store=wiring.store, clock=clock)
    path = small.settings.source_b_path
    write_csv(path, csv_lines(coins=1, days=5))
    append(path, "6,Bitcoin,BTC," + "9" * 300)
    writer = FakeSleep(clock, during=lambda: append(path, "9" * 10))

    first = extract(small, writer)
    assert first.rows_in == 5 and first.summary["rejected_lines"] == 0

    append(path, "\n7,Bitcoin,BTC,2030-01-02 23:59:59,1,1,1,1,1,1\n")
    second = extract(small, FakeSleep(clock))
    run_transform(small)
    assert second.rows_in == 2 and second.summary["rejected_lines"] == 1  # the long line, once, whole
    assert wiring.store.count_quarantine() == 1 and "2030-01-02" in market_caps(wiring.store)


def test_a_last_line_taken_as_complete_that_then_grows_is_read_again_whole(wiring):
    """The settle check is a heuristic: a writer that pauses longer than CSV_SETTLE_S mid-line is taken as done.
    When the line then grows, its chunk no longer ends where it did: it is re-read and the full value wins."""
    clock = FakeClock()
    wiring = make_wiring(wiring, clock)
    path = wiring.settings.source_b_path
    write_csv(path, csv_lines(coins=1, days=50))
    append(path, FRAGMENT)

    extract(wiring, FakeSleep(clock))
    run_transform(wiring)
    assert market_caps(wiring.store)["2030-01-01"] == 253850  # a pause past the settle interval: loaded as is

    append(path, REST)
    again = extract(wiring, FakeSleep(clock))
    run_transform(wiring)
    assert market_caps(wiring.store)["2030-01-01"] == 253850238322.34
    assert wiring.store.count_quarantine() == 0 and wiring.store.count_normalized() == 51
    assert any("re-read" in w for w in again.summary["warnings"])
