"""The CSV reader: chunk boundaries, checkpoint identity, append vs replace, byte-level bad input."""

from __future__ import annotations

import pytest

from common.errors import SourceError
from common.sources.csv_file import CsvFile
from tests.conftest import csv_lines, write_csv


def read_all(reader: CsvFile, saved: dict | None = None):
    header, start = reader.read_header()
    position, why = reader.resume(saved, start)
    chunks = list(reader.chunks(position))
    return header, chunks, why


def test_chunks_cover_every_line_once_with_row_numbers(tmp_path):
    lines = csv_lines(coins=1, days=25)
    path = write_csv(tmp_path / "h.csv", lines)
    header, chunks, _ = read_all(CsvFile(str(path), chunk_rows=10, max_line_bytes=1000))
    assert header[:3] == ["SNo", "Name", "Symbol"]
    assert [(c.first_row, c.row_count) for c, _ in chunks] == [(1, 10), (11, 10), (21, 5)]
    assert "".join(c.text for c, _ in chunks) == "".join(line + "\n" for line in lines)
    assert chunks[-1][1].offset == path.stat().st_size and chunks[-1][1].row == 25
    assert all(c.end == after.offset for c, after in chunks)


def test_resume_after_append_reads_only_the_new_lines(tmp_path):
    path = write_csv(tmp_path / "h.csv", csv_lines(coins=1, days=5))
    reader = CsvFile(str(path), chunk_rows=100, max_line_bytes=1000)
    _, chunks, _ = read_all(reader)
    saved = chunks[-1][1].to_dict()
    write_csv(path, ["99,Extra,XTR,2020-01-01 00:00:00,1,1,1,1,1,1"], mode="a")
    _, more, why = read_all(reader, saved)
    assert why is None and len(more) == 1
    assert more[0][0].text.startswith("99,Extra") and more[0][0].first_row == 6


def test_a_file_with_different_content_is_detected_as_replaced(tmp_path):
    path = write_csv(tmp_path / "h.csv", csv_lines(coins=1, days=5, seed=1))
    reader = CsvFile(str(path), chunk_rows=100, max_line_bytes=1000)
    _, chunks, _ = read_all(reader)
    saved = chunks[-1][1].to_dict()
    write_csv(path, csv_lines(coins=1, days=8, seed=2))  # longer, but different bytes
    _, again, why = read_all(reader, saved)
    assert "replaced" in why and again[0][0].first_row == 1 and again[0][0].row_count == 8

    write_csv(path, csv_lines(coins=1, days=2, seed=1))  # shorter than the checkpoint
    _, _, why = read_all(reader, saved)
    assert "shrank" in why


def test_garbage_checkpoint_restarts_from_the_top(tmp_path):
    path = write_csv(tmp_path / "h.csv", csv_lines(coins=1, days=3))
    _, chunks, why = read_all(CsvFile(str(path), 100, 1000), {"bogus": 1})
    assert "unreadable" in why and chunks[0][0].row_count == 3


def test_bom_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "h.csv"
    path.write_bytes(b"\xef\xbb\xbfSNo,Name,Symbol\r\n1,Bitcoin,BTC\r\n")
    header, chunks, _ = read_all(CsvFile(str(path), 100, 1000))
    assert header == ["SNo", "Name", "Symbol"] and chunks[0][0].text == "1,Bitcoin,BTC\r\n"


def test_last_line_without_newline_is_read(tmp_path):
    path = tmp_path / "h.csv"
    path.write_bytes(b"A,B\n1,2\n3,4")
    _, chunks, _ = read_all(CsvFile(str(path), 100, 1000))
    assert chunks[0][0].row_count == 2 and chunks[0][0].text.endswith("3,4")


def test_oversized_and_undecodable_lines_become_rejects_keeping_row_numbers(tmp_path):
    path = tmp_path / "h.csv"
    path.write_bytes(b"A,B\n1,2\n" + b"x" * 500 + b"\n\xff\xfe,3\n4,5\n")
    _, chunks, _ = read_all(CsvFile(str(path), 100, max_line_bytes=100))
    chunk = chunks[0][0]
    assert chunk.row_count == 4 and chunk.text == "1,2\n\n\n4,5\n"
    reasons = {r["row_number"]: r["reason"] for r in chunk.rejects}
    assert "CSV_MAX_LINE_BYTES=100" in reasons[2] and reasons[3].startswith("not valid UTF-8")
    assert chunks[0][1].offset == path.stat().st_size


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    (b"", "empty"),
    (b"\n\n", "empty"),
    (b"\xff\xfeA,B\n", "not valid UTF-8"),
])
def test_unusable_files_raise_a_clear_source_error(tmp_path, content, message):
    path = tmp_path / "h.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SourceError, match=message):
        CsvFile(str(path), 100, 1000).read_header()


def test_a_directory_is_reported_unreadable(tmp_path):
    with pytest.raises(SourceError, match="unreadable"):
        CsvFile(str(tmp_path), 100, 1000).read_header()
