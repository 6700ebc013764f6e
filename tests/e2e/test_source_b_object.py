"""Source B from object storage, end to end: the real gcp-storage-emulator and a range-serving web server on loopback,
the real extract and transform on a real SQLite store. Appends, corrections and replaced objects must behave as they
do for a local file; a server without Range support must be refused, not read whole into memory."""

from __future__ import annotations

import tracemalloc

import pytest

from common.config import Settings
from common.errors import SourceError
from common.pipeline import run_extract, run_transform
from common.sources.csv_file import CsvFile
from common.store import DataQuery
from common.wiring import Wiring, build_store
from local.generate_csv import HEADER
from tests.conftest import csv_lines
from tests.e2e.object_servers import gcs_emulator, range_server  # noqa: F401 (fixtures)

NAME = "history/Historical_Data.csv"


def csv_bytes(lines: list[str]) -> bytes:
    return (HEADER + "".join(line + "\n" for line in lines)).encode()


@pytest.fixture
def wire(tmp_path):
    stores = []

    def make(location: str, **extra) -> Wiring:
        settings = Settings(sqlite_path=str(tmp_path / "etl.sqlite3"), source_b_path=location, csv_chunk_rows=100,
                            csv_settle_s=0, **extra)
        stores.append(build_store(settings))
        return Wiring(settings=settings, store=stores[-1])

    yield make
    for store in stores:
        store.close()


def corrected(lines: list[str], index: int) -> tuple[list[str], str]:
    """`lines` with line `index`'s Close price changed, same length (a correction in place)."""
    fields = lines[index].split(",")
    old = fields[7]
    fields[7] = ("9" * old.index(".")) + old[old.index("."):] if old[0] != "9" else "1" + old[1:]
    changed = list(lines)
    changed[index] = ",".join(fields)
    assert len(changed[index]) == len(lines[index])
    return changed, fields[7]


def close_of(store, symbol: str, date: str) -> float:
    rows = store.read_normalized(DataQuery(symbol=symbol, source="source_b", limit=1000))
    return next(r["price_usd"] for r in rows if r["observed_at"].startswith(date))


def test_extract_from_the_gcs_emulator_loads_appends_corrections_and_replacements(gcs_emulator, wire, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
    lines = csv_lines(coins=2, days=400)  # ~85 KB: corrections beyond the 64 KB head are not a replaced file
    gcs_emulator.upload(NAME, csv_bytes(lines))
    wiring = wire(gcs_emulator.location(NAME), storage_emulator_host=gcs_emulator.url)

    first = run_extract("source_b", wiring)
    assert (first.status, first.rows_in) == ("succeeded", 800), first.summary
    assert run_transform(wiring).status == "succeeded" and wiring.store.count_normalized("source_b") == 800

    idle = run_extract("source_b", wiring)  # same size and generation: nothing to read
    assert (idle.status, idle.rows_in) == ("succeeded", 0)

    extra = csv_lines(coins=1, days=5, first_coin=2)
    gcs_emulator.upload(NAME, csv_bytes(lines + extra))  # re-uploaded with 5 more lines
    appended = run_extract("source_b", wiring)
    assert (appended.status, appended.rows_in, appended.summary["rewritten_chunks"]) == ("succeeded", 5, 0)
    run_transform(wiring)
    assert wiring.store.count_normalized("source_b") == 805

    fixed, new_close = corrected(lines, 700)  # Ethereum, far past the head
    gcs_emulator.upload(NAME, csv_bytes(fixed + extra))
    again = run_extract("source_b", wiring)
    assert again.status == "succeeded" and again.summary["rewritten_chunks"] == 1 and again.rows_in == 100
    assert not any("replaced" in w for w in again.summary["warnings"])
    run_transform(wiring)
    date = fixed[700].split(",")[3][:10]
    assert close_of(wiring.store, "ETH", date) == float(new_close)
    assert wiring.store.count_normalized("source_b") == 805

    other = csv_lines(coins=2, days=400, seed=9)  # a different file under the same name
    gcs_emulator.upload(NAME, csv_bytes(other))
    replaced = run_extract("source_b", wiring)
    assert replaced.rows_in == 800 and any("replaced" in w for w in replaced.summary["warnings"])


def test_extract_from_a_range_serving_web_server_uses_the_etag(range_server, wire):
    lines = csv_lines(coins=2, days=400)
    url = range_server.put("/data/h.csv", csv_bytes(lines))
    wiring = wire(url)
    assert run_extract("source_b", wiring).rows_in == 800

    extra = csv_lines(coins=1, days=3, first_coin=2)
    range_server.put("/data/h.csv", csv_bytes(lines + extra))
    assert run_extract("source_b", wiring).rows_in == 3

    fixed, _ = corrected(lines, 650)
    range_server.put("/data/h.csv", csv_bytes(fixed + extra))  # same size: only the new ETag tells
    again = run_extract("source_b", wiring)
    assert again.summary["rewritten_chunks"] == 1 and again.rows_in == 100
    assert all(r.startswith("bytes=") and not r.endswith("-") for r in range_server.ranges)  # bounded ranges only


def test_a_server_without_range_support_is_refused_before_its_body_is_read(range_server, wire):
    big = csv_bytes(csv_lines(coins=10, days=2000)) * 36  # ~75 MB that must not be downloaded
    url = range_server.put("/big.csv", big)
    range_server.honour_range = False
    run = run_extract("source_b", wire(url))
    assert run.status == "failed"
    assert "does not support Range requests" in run.summary["errors"][0]
    assert range_server.sent < len(big) // 4  # the connection was dropped, not drained


def test_reading_a_large_object_keeps_memory_flat(range_server):
    data = csv_bytes(csv_lines(coins=10, days=2000)) * 10  # ~21 MB
    url = range_server.put("/large.csv", data)
    reader = CsvFile(url, chunk_rows=20_000, max_line_bytes=1 << 20)
    tracemalloc.start()
    try:
        total = 0
        with reader.open() as handle:
            while block := handle.read(1 << 20):
                total += len(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == len(data)
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB while reading {len(data) / 2**20:.0f} MiB"


def test_an_object_that_is_not_there_fails_the_run_with_its_location(gcs_emulator, wire, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
    run = run_extract("source_b", wire(gcs_emulator.location("missing.csv"), storage_emulator_host=gcs_emulator.url))
    assert run.status == "failed" and "not found: gs://etl-test/missing.csv" in run.summary["errors"][0]
    with pytest.raises(SourceError, match="not found"):
        CsvFile(gcs_emulator.location("missing.csv"), 10, 1000).stat()
