"""The CSV reader: chunk boundaries and hashes, checkpoint identity, append vs replace, unterminated last lines,
byte-level bad input."""

from __future__ import annotations

import pytest

from common.errors import SourceError
from common.sources.csv_file import CsvFile, digest
from common.sources.csv_position import CsvScan, FilePosition, resume
from tests.conftest import csv_lines, write_csv


def scan_all(reader: CsvFile, saved: dict | None = None) -> tuple[list, CsvScan, str | None]:
    _, start = reader.read_header()
    stat = reader.stat()
    begin = resume(reader, saved, start, stat)
    scan = CsvScan(reader, begin, stat)
    return list(scan), scan, begin.reason


def read_all(reader: CsvFile, saved: dict | None = None):
    header, _ = reader.read_header()
    chunks, _, why = scan_all(reader, saved)
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


def test_a_last_line_without_newline_is_held_back_until_declared_complete(tmp_path):
    path = tmp_path / "h.csv"
    path.write_bytes(b"A,B\n1,2\n3,4")
    chunks, scan, _ = scan_all(CsvFile(str(path), 100, 1000))
    assert [c.text for c, _ in chunks] == ["1,2\n"] and scan.held_back == 3 and scan.position.offset == 8

    last, after = scan.last_line()  # what the extract calls once the file has settled
    assert last.text == "3,4" and last.first_row == 2 and after.offset == 11 and after.row == 2
    assert after.chunks[-1][:4] == (4, 11, 2, digest(b"1,2\n3,4"))  # merged into the small chunk before it


def test_a_last_line_that_changed_since_it_was_seen_is_not_taken(tmp_path):
    path = tmp_path / "h.csv"
    path.write_bytes(b"A,B\n1,2\n3,4")
    _, scan, _ = scan_all(CsvFile(str(path), 100, 1000))
    path.write_bytes(b"A,B\n1,2\n3,45\n6")
    assert scan.last_line() is None and scan.held_back == 3


def test_chunk_hashes_are_the_hashes_of_the_file_bytes_even_around_an_oversize_line(tmp_path):
    path = tmp_path / "h.csv"
    data = b"A,B\n1,2\n" + b"x" * 500 + b"\n3,4\n5,6\n7,8\n"
    path.write_bytes(data)
    chunks, _, _ = scan_all(CsvFile(str(path), 3, max_line_bytes=100))
    assert [(c.start, c.end, c.row_count) for c, _ in chunks] == [(4, 513, 3), (513, 521, 2)]
    assert chunks[0][0].text == "1,2\n\n3,4\n" and "CSV_MAX_LINE_BYTES" in chunks[0][0].rejects[0]["reason"]
    for chunk, _ in chunks:
        assert chunk.digest == digest(data[chunk.start:chunk.end])
    assert chunks[-1][1].offset == len(data)


def test_an_unterminated_oversize_last_line_is_held_back_not_rejected(tmp_path):
    path = tmp_path / "h.csv"
    path.write_bytes(b"A,B\n1,2\n" + b"x" * 500)
    chunks, scan, _ = scan_all(CsvFile(str(path), 100, max_line_bytes=100))
    assert [c.text for c, _ in chunks] == ["1,2\n"] and not chunks[0][0].rejects and scan.held_back == 500


def test_a_checkpoint_whose_chunks_do_not_add_up_is_unreadable(tmp_path):
    path = write_csv(tmp_path / "h.csv", csv_lines(coins=1, days=5))
    reader = CsvFile(str(path), 2, 1000)
    chunks, scan, _ = scan_all(reader)
    good = scan.position.to_dict()
    assert FilePosition.from_dict(good, chunks[0][0].start) == scan.position
    broken = {**good, "chunks": good["chunks"][1:]}
    _, _, why = scan_all(reader, broken)
    assert "unreadable" in why


def test_a_checkpoint_of_the_previous_version_means_one_full_reread(tmp_path):
    path = write_csv(tmp_path / "h.csv", csv_lines(coins=1, days=5))
    data = path.read_bytes()
    old = {"identity": digest(data[:65536]), "prefix_len": len(data), "offset": len(data), "row": 5,
           "tail_hash": digest(data[-4096:])}
    chunks, _, why = scan_all(CsvFile(str(path), 100, 1000), old)
    assert "earlier version" in why and chunks[0][0].first_row == 1 and chunks[0][0].row_count == 5


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
