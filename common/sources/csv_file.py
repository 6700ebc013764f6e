"""Byte-level reading of a CSV source: the header, line chunks with a content hash, and unterminated last lines.

A chunk is whole lines only: a last line without its newline may still be being written by another program, so
`read_chunk` stops before it and reports its length; the caller decides whether the file is complete (see
`common.sources.csv_position` and `common.extract`). The file may also be a `gs://` object or an `http(s)://` URL:
`open` and `stat` then go through `common.sources.remote_file` and everything else reads it the same way.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple

from common.errors import SourceError
from common.sources.remote_file import RemoteObject, RemoteOptions, is_remote, remote_object

IDENTITY_PREFIX_BYTES = 64 * 1024
CHUNK_MAX_BYTES = 16 * 1024 * 1024
HASH_BLOCK_BYTES = 1 << 20
BOM = b"\xef\xbb\xbf"


class FileStat(NamedTuple):
    """What tells us, without reading it, that a file was written to: its size and modification time."""

    size: int
    mtime_ns: int


@dataclass
class CsvChunk:
    start: int
    end: int
    first_row: int
    text: str  # the chunk's lines as received (undecodable or oversize lines replaced by empty lines)
    row_count: int
    digest: str = ""  # hash of the file's bytes [start, end) exactly as they were read
    batch_at: int = 0  # the offset in its raw batch id (`start`, unless it rewrites a merged chunk)
    rejects: list[dict] = field(default_factory=list)  # {"row_number", "raw", "reason"}


class CsvFile:
    """One CSV file read as header + line chunks; every line is a record (multi-line fields are refused)."""

    def __init__(self, path: str, chunk_rows: int, max_line_bytes: int, remote: RemoteOptions | None = None) -> None:
        """`remote`: how to reach a `gs://` or `http(s)://` path (None: from the environment's settings)."""
        if not path:
            raise SourceError("no CSV location configured (SOURCE_B_PATH): a path, gs://bucket/object or a URL")
        self.path = path
        self.chunk_rows = chunk_rows
        self.max_line_bytes = max_line_bytes
        self.remote: RemoteObject | None = remote_object(path, remote or _remote_options()) if is_remote(path) else None
        self.shown = self.remote.shown if self.remote else path  # a URL's query may hold a signature: never shown

    def open(self) -> BinaryIO:
        if self.remote:
            return self.remote.open()
        try:
            return open(self.path, "rb")
        except OSError as exc:
            raise self._error(exc) from None

    def stat(self) -> FileStat:
        """Size and mtime; for a remote object, size and its generation (or ETag) in mtime's place."""
        if self.remote:
            return FileStat(*self.remote.stat())
        try:
            result = os.stat(self.path)
        except OSError as exc:
            raise self._error(exc) from None
        return FileStat(result.st_size, result.st_mtime_ns)

    def _error(self, exc: OSError) -> SourceError:
        if isinstance(exc, FileNotFoundError):
            return SourceError(f"CSV file not found: {self.path}", path=self.path)
        return SourceError(f"CSV file unreadable: {self.path}: {exc.strerror or exc}", path=self.path)

    def read_header(self) -> tuple[list[str], int]:
        """The header's column names and the byte offset where data starts."""
        with self.open() as handle:
            line = handle.readline(self.max_line_bytes + 1)
        if not line.strip():
            raise SourceError(f"CSV file is empty (no header line): {self.shown}", path=self.shown)
        if len(line) > self.max_line_bytes:
            raise SourceError(f"CSV header line exceeds {self.max_line_bytes} bytes", path=self.shown)
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

    def prefix_digest(self, length: int = IDENTITY_PREFIX_BYTES) -> tuple[str, int]:
        """Hash of the first `length` bytes (fewer if the file is shorter) and how many there were."""
        with self.open() as handle:
            prefix = handle.read(length)
        return digest(prefix), len(prefix)

    def hash_range(self, handle: BinaryIO, start: int, end: int, *more: "hashlib._Hash") -> tuple[str, bytes] | None:
        """Hash of bytes [start, end) read in blocks (flat memory) and their last byte; None past end of file.
        Every hasher in `more` is fed the same bytes."""
        handle.seek(start)
        hasher, remaining, last = hashlib.sha256(), end - start, b""
        while remaining > 0:
            block = handle.read(min(HASH_BLOCK_BYTES, remaining))
            if not block:
                return None
            hasher.update(block)
            for other in more:
                other.update(block)
            remaining -= len(block)
            last = block[-1:]
        return hasher.hexdigest()[:24], last

    def read_chunk(self, handle: BinaryIO, start: int, first_row: int, max_rows: int) -> tuple[CsvChunk | None, int]:
        """Up to `max_rows` whole lines from `start`, and the length of an unterminated line met at end of file
        (left unread: the handle is positioned just before it). (None, n) when there is no whole line."""
        handle.seek(start)
        limit = self.max_line_bytes + 1
        lines: list[bytes] = []
        rejects: list[dict] = []
        hasher, hashed_upto, size, held = hashlib.sha256(), 0, 0, 0
        while len(lines) < max_rows and size < CHUNK_MAX_BYTES:
            line = handle.readline(limit)
            if not line:
                break
            if line.endswith(b"\n"):
                lines.append(line)
                size += len(line)
                continue
            line_start = start + size
            length, complete = (len(line), False) if len(line) < limit else _measure_line(handle, line_start, limit)
            if not complete:  # end of file inside the line: the writer may not have finished it
                handle.seek(line_start)
                held = length
                break
            hasher.update(b"".join(lines[hashed_upto:]))
            self.hash_range(handle, line_start, line_start + length, hasher)  # oversize: hashed, never held whole
            rejects.append({
                "row_number": first_row + len(lines),
                "raw": line[:256].decode("utf-8", "backslashreplace") + "...",
                "reason": f"line exceeds CSV_MAX_LINE_BYTES={self.max_line_bytes}",
            })
            lines.append(b"\n")
            hashed_upto, size = len(lines), size + length
        if not lines:
            return None, held
        joined = b"".join(lines)
        hasher.update(joined if hashed_upto == 0 else b"".join(lines[hashed_upto:]))
        text = _decode_lines(joined, lines, first_row, rejects)
        return CsvChunk(start=start, end=start + size, first_row=first_row, text=text, row_count=len(lines),
                        digest=hasher.hexdigest()[:24], batch_at=start, rejects=rejects), held

    def read_last_line(self, handle: BinaryIO, start: int, end: int, first_row: int) -> CsvChunk | None:
        """The unterminated last line [start, end) once the file is known to be complete; None if those bytes are
        no longer one unterminated line (the file changed)."""
        handle.seek(start)
        data = handle.read(end - start)
        if len(data) != end - start or b"\n" in data or not data or handle.read(1):
            return None
        rejects: list[dict] = []
        if len(data) > self.max_line_bytes:
            rejects.append({"row_number": first_row, "raw": data[:256].decode("utf-8", "backslashreplace") + "...",
                            "reason": f"line exceeds CSV_MAX_LINE_BYTES={self.max_line_bytes}"})
            text = "\n"
        else:
            text = _decode_lines(data, [data], first_row, rejects)
        return CsvChunk(start=start, end=end, first_row=first_row, text=text, row_count=1, digest=digest(data),
                        batch_at=start, rejects=rejects)


def _measure_line(handle: BinaryIO, line_start: int, limit: int) -> tuple[int, bool]:
    """Length of the line at `line_start` and whether it ends with a newline (False: end of file came first)."""
    handle.seek(line_start)
    length = 0
    while True:
        part = handle.readline(limit)
        length += len(part)
        if not part or part.endswith(b"\n"):
            return length, bool(part)


def _decode_lines(joined: bytes, lines: list[bytes], first_row: int, rejects: list[dict]) -> str:
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


def _remote_options() -> RemoteOptions:
    """Remote options from the environment's settings, for callers that construct a CsvFile without them."""
    from common.config import Settings

    return RemoteOptions.from_settings(Settings.from_env())


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:24]
