"""Streaming reader for a CSV source: byte-offset chunks, file identity, and resume after append or replace."""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from common.errors import SourceError

IDENTITY_PREFIX_BYTES = 64 * 1024
TAIL_BYTES = 4 * 1024
CHUNK_MAX_BYTES = 16 * 1024 * 1024
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class FilePosition:
    """Checkpoint of a CSV source: where to resume and how to tell that it is still the same file."""

    identity: str  # hash of the first `prefix_len` bytes
    prefix_len: int
    offset: int  # byte offset of the next unread line
    row: int  # data rows (lines after the header) consumed so far
    tail_hash: str  # hash of the bytes just before `offset`

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class CsvChunk:
    start: int
    end: int
    first_row: int
    text: str  # the chunk's lines as received (undecodable or oversize lines replaced by empty lines)
    row_count: int
    rejects: list[dict] = field(default_factory=list)  # {"row_number", "raw", "reason"}


class CsvFile:
    """One CSV file read as header + line chunks; every line is a record (multi-line fields are refused)."""

    def __init__(self, path: str, chunk_rows: int, max_line_bytes: int) -> None:
        self.path = path
        self.chunk_rows = chunk_rows
        self.max_line_bytes = max_line_bytes

    def _open(self) -> BinaryIO:
        try:
            return open(self.path, "rb")
        except FileNotFoundError:
            raise SourceError(f"CSV file not found: {self.path}", path=self.path) from None
        except OSError as exc:
            raise SourceError(f"CSV file unreadable: {self.path}: {exc.strerror or exc}", path=self.path) from None

    def size(self) -> int:
        try:
            return os.path.getsize(self.path)
        except OSError as exc:
            raise SourceError(f"CSV file unreadable: {self.path}: {exc.strerror or exc}", path=self.path) from None

    def read_header(self) -> tuple[list[str], int]:
        """The header's column names and the byte offset where data starts."""
        with self._open() as handle:
            line = handle.readline(self.max_line_bytes + 1)
        if not line.strip():
            raise SourceError(f"CSV file is empty (no header line): {self.path}", path=self.path)
        if len(line) > self.max_line_bytes:
            raise SourceError(f"CSV header line exceeds {self.max_line_bytes} bytes", path=self.path)
        data_start = len(line)
        if line.startswith(BOM):
            line = line[len(BOM):]
        try:
            text = line.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise SourceError(f"CSV header is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        try:
            names = next(csv.reader([text], strict=True))
        except (csv.Error, StopIteration) as exc:
            raise SourceError(f"CSV header cannot be parsed: {exc}") from None
        return [name.strip() for name in names], data_start

    def start_position(self, data_start: int) -> FilePosition:
        with self._open() as handle:
            prefix = handle.read(IDENTITY_PREFIX_BYTES)
        return FilePosition(
            identity=_digest(prefix), prefix_len=len(prefix), offset=data_start, row=0,
            tail_hash=self._tail_hash(data_start),
        )

    def resume(self, saved: dict | None, data_start: int) -> tuple[FilePosition, str | None]:
        """Where to continue: the saved position if this is still the same file, else a fresh start + why."""
        if not saved:
            return self.start_position(data_start), None
        try:
            position = FilePosition(**saved)
        except TypeError:
            return self.start_position(data_start), "checkpoint unreadable; re-reading the file from the start"
        if self.size() < position.offset:
            return self.start_position(data_start), "file shrank since the last run (replaced); re-reading it"
        with self._open() as handle:
            same_prefix = _digest(handle.read(position.prefix_len)) == position.identity
        if not same_prefix or self._tail_hash(position.offset) != position.tail_hash:
            return self.start_position(data_start), "file content changed since the last run (replaced); re-reading it"
        return position, None

    def _tail_hash(self, offset: int, handle: BinaryIO | None = None) -> str:
        """Hash of the bytes just before `offset` (on `handle` if given, leaving its position unchanged)."""
        if handle is None:
            with self._open() as own:
                return self._tail_hash(offset, own)
        position = handle.tell()
        handle.seek(max(0, offset - TAIL_BYTES))
        digest = _digest(handle.read(min(offset, TAIL_BYTES)))
        handle.seek(position)
        return digest

    def chunks(self, position: FilePosition) -> Iterator[tuple[CsvChunk, FilePosition]]:
        """Chunks from `position` to the end of file, each with the position just after it."""
        with self._open() as handle:
            handle.seek(position.offset)
            offset, row = position.offset, position.row
            while True:
                chunk = self._read_chunk(handle, offset, row + 1)
                if chunk is None:
                    return
                offset, row = chunk.end, row + chunk.row_count
                after = FilePosition(position.identity, position.prefix_len, offset, row,
                                     self._tail_hash(offset, handle))
                yield chunk, after

    def _read_chunk(self, handle: BinaryIO, start: int, first_row: int) -> CsvChunk | None:
        limit = self.max_line_bytes + 1
        lines: list[bytes] = []
        rejects: list[dict] = []
        size = 0
        while len(lines) < self.chunk_rows and size < CHUNK_MAX_BYTES:
            line = handle.readline(limit)
            if not line:
                break
            size += len(line)
            if len(line) == limit and not line.endswith(b"\n"):
                size += _skip_rest_of_line(handle, limit)
                rejects.append({
                    "row_number": first_row + len(lines),
                    "raw": line[:256].decode("utf-8", "backslashreplace") + "...",
                    "reason": f"line exceeds CSV_MAX_LINE_BYTES={self.max_line_bytes}",
                })
                line = b"\n"
            lines.append(line)
        if not lines:
            return None
        text = _decode_lines(lines, first_row, rejects)
        return CsvChunk(start=start, end=start + size, first_row=first_row, text=text, row_count=len(lines),
                        rejects=rejects)


def _skip_rest_of_line(handle: BinaryIO, limit: int) -> int:
    skipped = 0
    while True:
        part = handle.readline(limit)
        skipped += len(part)
        if not part or part.endswith(b"\n"):
            return skipped


def _decode_lines(lines: list[bytes], first_row: int, rejects: list[dict]) -> str:
    joined = b"".join(lines)
    try:
        return joined.decode("utf-8")
    except UnicodeDecodeError:
        pass
    decoded = []
    for index, line in enumerate(lines):
        try:
            decoded.append(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            rejects.append({
                "row_number": first_row + index,
                "raw": line.decode("utf-8", "backslashreplace").rstrip("\r\n"),
                "reason": f"not valid UTF-8 ({exc.reason} at byte {exc.start})",
            })
            decoded.append("\n")
    return "".join(decoded)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:24]
