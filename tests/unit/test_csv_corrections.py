"""Issue 7 item 11: corrections anywhere in the CSV are picked up, and only the changed chunks are re-read.

The checkpoint keeps a hash per loaded chunk and the file's size and mtime. Same size and mtime: nothing is
hashed. Otherwise changed chunks are re-read under their batch id (the store overwrites the raw batch, the
transform re-reads it) and chunks moved by an edit that changed a length are compared at their new offsets.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from common.extract import checkpoint_name
from common.pipeline import run_extract, run_transform
from common.sources.csv_file import CsvFile, digest
from common.store import DataQuery
from common.wiring import Wiring
from tests.conftest import FakeClock, csv_lines, store_for, write_csv
from tests.unit.test_csv_partial_line import FakeSleep, extract

ROWS = 1200  # 3 coins x 400 days, ~115 KB: past the 64 KB identity prefix; 30 chunks of 40 rows


@pytest.fixture(params=["sqlite", "mongomock"])
def both(request, settings):
    """Both adapters (mongomock is slow: only where the raw-batch overwrite itself is under test)."""
    store = store_for(request.param, settings)
    yield Wiring(settings=settings, store=store)
    store.close()


def run_both(wiring: Wiring):
    return run_extract("source_b", wiring), run_transform(wiring)


def bump_mtime(path: str | Path, seconds: int = 1) -> None:
    """Later mtime, as any real edit made a moment later has (and independent of the file system's granularity)."""
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + seconds * 1_000_000_000))


def edit_line(path: str | Path, row: int, change) -> tuple[str, str]:
    """Rewrite data row `row` (1-based) in place with change(fields) -> fields; returns (symbol, date)."""
    lines = Path(path).read_bytes().splitlines(keepends=True)
    fields = lines[row].decode().rstrip("\n").split(",")
    lines[row] = (",".join(change(fields)) + "\n").encode()
    Path(path).write_bytes(b"".join(lines))
    bump_mtime(path)
    return fields[2], fields[3][:10]


def same_length_close(fields: list[str]) -> list[str]:
    close = fields[7]
    first = "1" if close[0] != "1" else "2"
    return fields[:7] + [first + close[1:]] + fields[8:]


def longer_close(fields: list[str]) -> list[str]:
    return fields[:7] + [fields[7] + "7"] + fields[8:]


def price(store, symbol: str, day: str) -> float:
    items = store.query_normalized(DataQuery(limit=1000, symbol=symbol)).items
    return next(item["price_usd"] for item in items if item["observed_at"].startswith(day))


def field_of(path: str | Path, row: int, index: int) -> str:
    return Path(path).read_bytes().splitlines()[row].decode().split(",")[index]


def test_a_same_size_edit_in_the_middle_is_picked_up_and_only_its_chunk_reread(both):
    wiring = both
    path = wiring.settings.source_b_path
    write_csv(path, csv_lines(coins=3, days=400))
    run_both(wiring)
    size = os.path.getsize(path)

    symbol, day = edit_line(path, 900, same_length_close)
    assert os.path.getsize(path) == size
    extract, transform = run_both(wiring)

    assert price(wiring.store, symbol, day) == float(field_of(path, 900, 7))
    assert extract.rows_in == 40 and transform.rows_in == 40  # one chunk, not the file
    assert extract.summary["rewritten_chunks"] == 1 and any("re-read" in w for w in extract.summary["warnings"])
    assert wiring.store.count_normalized() == ROWS and wiring.store.count_quarantine() == 0


def test_an_edit_that_changes_a_length_rereads_that_chunk_and_finds_the_rest_moved(wiring):
    path = wiring.settings.source_b_path
    write_csv(path, csv_lines(coins=3, days=400))
    run_both(wiring)

    symbol, day = edit_line(path, 700, longer_close)  # one byte longer: every later chunk moves by one
    extract, _ = run_both(wiring)
    assert price(wiring.store, symbol, day) == float(field_of(path, 700, 7))
    assert extract.rows_in == 40  # the later chunks are intact at their new offsets: not re-read

    symbol, day = edit_line(path, 1000, same_length_close)  # a later correction, in a moved chunk
    extract, _ = run_both(wiring)
    assert price(wiring.store, symbol, day) == float(field_of(path, 1000, 7)) and extract.rows_in == 40
    assert wiring.store.count_normalized() == ROWS and wiring.store.count_quarantine() == 0


def test_an_inserted_line_rereads_from_its_chunk_onward(wiring):
    path = wiring.settings.source_b_path
    write_csv(path, csv_lines(coins=3, days=400))
    run_both(wiring)

    lines = Path(path).read_bytes().splitlines(keepends=True)
    lines.insert(1000, b"0,Bitcoin,BTC,2031-06-01 23:59:59,2,1,1,1.5,10,20\n")
    Path(path).write_bytes(b"".join(lines))
    extract, _ = run_both(wiring)

    assert price(wiring.store, "BTC", "2031-06-01") == 1.5
    assert extract.rows_in == ROWS - 960 + 1  # rows 961.. (the chunk holding row 1000 onward), not the file
    assert wiring.store.count_normalized() == ROWS + 1 and wiring.store.count_quarantine() == 0


def test_an_untouched_file_is_not_hashed_and_a_touched_one_is_hashed_once(wiring, monkeypatch):
    path = wiring.settings.source_b_path
    write_csv(path, csv_lines(coins=3, days=400))
    run_both(wiring)
    reads = []
    for name in ("hash_range", "prefix_digest"):
        original = getattr(CsvFile, name)
        monkeypatch.setattr(CsvFile, name, lambda self, *a, _f=original, _n=name: reads.append(_n) or _f(self, *a))

    extract, transform = run_both(wiring)
    assert reads == [] and extract.rows_in == 0 and transform.rows_in == 0

    bump_mtime(path)  # touched, content unchanged
    extract, transform = run_both(wiring)
    assert "hash_range" in reads and extract.rows_in == 0 and transform.rows_in == 0

    reads.clear()
    extract, _ = run_both(wiring)
    assert reads == [] and extract.rows_in == 0  # the verified stat was saved: back to free


def test_an_edit_within_the_identity_prefix_counts_as_a_replaced_file(wiring):
    path = wiring.settings.source_b_path
    write_csv(path, csv_lines(coins=3, days=400))
    run_both(wiring)

    symbol, day = edit_line(path, 10, same_length_close)
    extract, _ = run_both(wiring)
    assert any("replaced" in w for w in extract.summary["warnings"]) and extract.rows_in == ROWS
    assert price(wiring.store, symbol, day) == float(field_of(path, 10, 7))
    assert wiring.store.count_normalized() == ROWS


def test_a_checkpoint_from_the_previous_version_is_accepted_by_rereading_once(wiring):
    path = wiring.settings.source_b_path
    write_csv(path, csv_lines(coins=3, days=400))
    run_both(wiring)
    data = Path(path).read_bytes()
    old_format = {"identity": digest(data[:65536]), "prefix_len": 65536, "offset": len(data), "row": ROWS,
                  "tail_hash": digest(data[-4096:])}  # what the previous version saved after a full read
    wiring.store.put_checkpoint(checkpoint_name("source_b"), old_format)

    symbol, day = edit_line(path, 900, same_length_close)
    extract, transform = run_both(wiring)
    assert any("earlier version" in w for w in extract.summary["warnings"]) and extract.rows_in == ROWS
    assert transform.rows_in == 40  # identical raw batches are not transformed again
    assert price(wiring.store, symbol, day) == float(field_of(path, 900, 7))

    extract, _ = run_both(wiring)
    assert extract.rows_in == 0 and extract.summary["warnings"] == []


def test_a_deadline_while_rereading_changed_chunks_resumes_without_missing_one(wiring, settings):
    clock = FakeClock()
    wiring = Wiring(settings=replace(settings, invocation_budget_s=100.0), store=wiring.store, clock=clock)
    path = wiring.settings.source_b_path
    write_csv(path, csv_lines(coins=3, days=400))
    extract(wiring, FakeSleep(clock))
    run_transform(wiring)

    first = edit_line(path, 700, longer_close)
    second = edit_line(path, 1100, same_length_close)
    stopped = extract(wiring, FakeSleep(clock), progress=lambda *_: clock.advance(96))  # near the deadline
    assert stopped.status == "partial" and stopped.rows_in == 40

    resumed = extract(wiring, FakeSleep(clock))
    run_transform(wiring)
    assert resumed.status == "succeeded" and resumed.rows_in == 40
    assert price(wiring.store, *first) == float(field_of(path, 700, 7))
    assert price(wiring.store, *second) == float(field_of(path, 1100, 7))
    assert wiring.store.count_normalized() == ROWS


def test_rows_deleted_from_the_file_stay_loaded_and_later_appends_still_load(wiring):
    path = wiring.settings.source_b_path
    write_csv(path, csv_lines(coins=3, days=400))
    run_both(wiring)

    lines = Path(path).read_bytes().splitlines(keepends=True)
    Path(path).write_bytes(b"".join(lines[:-10]))  # the last ten rows removed
    extract, _ = run_both(wiring)
    assert extract.status == "succeeded" and any("shrank" in w for w in extract.summary["warnings"])
    assert wiring.store.count_normalized() == ROWS  # no deletion downstream (documented)

    write_csv(path, csv_lines(coins=1, days=5, first_coin=6), mode="a")
    extract, _ = run_both(wiring)
    assert extract.rows_in == 5 and wiring.store.count_normalized() == ROWS + 5


def test_many_small_appends_keep_the_chunk_list_small_and_corrections_still_land(both):
    """No transform between the appends: the small batches are still pending when the correction is re-read,
    and the correction must still be what ends up loaded."""
    wiring = both
    path = wiring.settings.source_b_path
    rows = csv_lines(coins=1, days=120, first_coin=3)
    write_csv(path, rows[:50])
    run_both(wiring)
    for row in rows[50:]:
        write_csv(path, [row], mode="a")
        bump_mtime(path)
        run_extract("source_b", wiring)
    saved = wiring.store.get_checkpoint(checkpoint_name("source_b"))
    assert len(saved["chunks"]) <= 4  # 120 rows / 40 per chunk, not one entry per append

    symbol, day = edit_line(path, 110, same_length_close)
    extract, _ = run_both(wiring)
    assert price(wiring.store, symbol, day) == float(field_of(path, 110, 7)) and extract.rows_in <= 40
    assert wiring.store.count_normalized() == 120
