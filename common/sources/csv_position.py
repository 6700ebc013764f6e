"""The checkpoint of a CSV source and how to bring it up to date with the file on disk.

The checkpoint keeps, besides the resume offset, a hash per chunk already loaded and the file's size and mtime.
Unchanged size and mtime: nothing is hashed (a no-op run stays cheap). Otherwise every chunk is re-hashed
(streaming), a chunk whose bytes changed is re-read under its batch id `<source>:<identity>:<start>` (the store
overwrites the raw batch and the transform re-reads it), and if an edit changed its length the following chunks
are compared at their shifted offsets; then appended lines are read. Rows deleted from the file are not deleted
downstream. `identity` is the hash of the first 64 KB: if those change the file counts as replaced and is re-read
from the start.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import BinaryIO, Callable, Iterator

from common.sources.csv_file import CHUNK_MAX_BYTES, CsvChunk, CsvFile, FileStat

Entry = tuple[int, int, int, str, int]
"""One loaded chunk: (start, end, rows, hash of the bytes [start, end), start of its newest raw batch).

Chunks appended a few rows at a time are merged into one entry; if it changes, it is re-read as one batch under
the id of the newest batch merged into it, so that the transform applies it after every older copy of its rows."""

FORMAT = 2


@dataclass(frozen=True)
class FilePosition:
    """Checkpoint of a CSV source: where to resume, what was loaded (chunk hashes) and the file's stat."""

    identity: str  # hash of the first `prefix_len` bytes when the file was first read
    prefix_len: int
    offset: int  # byte offset of the next unread line (= end of the last entry, or the data start)
    row: int  # data rows (lines after the header) consumed so far
    chunks: tuple[Entry, ...] = ()
    size: int | None = None  # the file's stat when the entries were last known to match it; None: verify them
    mtime_ns: int | None = None
    seen_size: int | None = None  # the file's stat when the run that wrote this checkpoint last looked at it
    seen_mtime_ns: int | None = None
    format: int = FORMAT

    def to_dict(self) -> dict:
        return {**self.__dict__, "chunks": [list(entry) for entry in self.chunks]}

    @classmethod
    def from_dict(cls, saved: dict, data_start: int) -> "FilePosition":
        """Raises ValueError or TypeError on anything that is not a checkpoint this version wrote for this header."""
        if saved.get("format") != FORMAT:
            raise ValueError("unknown checkpoint format")
        chunks = tuple((int(s), int(e), int(r), str(h), int(b)) for s, e, r, h, b in saved["chunks"])
        position = cls(**{**saved, "chunks": chunks})
        starts = [data_start] + [entry[1] for entry in chunks]
        if [entry[0] for entry in chunks] + [position.offset] != starts or \
                position.row != sum(entry[2] for entry in chunks):
            raise ValueError("chunk list does not add up")
        return position

    def stat_matches(self, stat: FileStat) -> bool:
        return (self.size, self.mtime_ns) == stat

    def seen_matches(self, stat: FileStat) -> bool:
        return (self.seen_size, self.seen_mtime_ns) == stat

    def verified_at(self, stat: FileStat | None) -> "FilePosition":
        """This position with its entries known to match the file as of `stat` (None: not known)."""
        size, mtime_ns = stat if stat else (None, None)
        return replace(self, size=size, mtime_ns=mtime_ns, seen_size=size, seen_mtime_ns=mtime_ns)

    def seen_at(self, stat: FileStat) -> "FilePosition":
        return replace(self, seen_size=stat.size, seen_mtime_ns=stat.mtime_ns)


@dataclass(frozen=True)
class Resume:
    position: FilePosition
    data_start: int
    reason: str | None = None  # why the file is read from the start again
    verify: bool = False  # the file was written to since the chunks were verified: compare every chunk's hash
    quiet: bool = False  # size and mtime are those the last run saw last: nothing was written since


def resume(csv_file: CsvFile, saved: dict | None, data_start: int, stat: FileStat) -> Resume:
    """Where this run starts, given the saved checkpoint and the file's stat taken before reading it."""
    if not saved:
        return Resume(fresh_position(csv_file, data_start), data_start)
    if "tail_hash" in saved and "chunks" not in saved:
        return Resume(fresh_position(csv_file, data_start), data_start,
                      "checkpoint from an earlier version (no chunk hashes): re-reading the file once; unchanged "
                      "chunks rewrite identical raw batches, which are not transformed again")
    try:
        position = FilePosition.from_dict(saved, data_start)
    except (TypeError, ValueError, KeyError, AttributeError):
        return Resume(fresh_position(csv_file, data_start), data_start,
                      "checkpoint unreadable; re-reading the file from the start")
    quiet = position.seen_matches(stat)
    if position.stat_matches(stat):  # not written to since: nothing is hashed
        return Resume(position, data_start, quiet=quiet)
    if csv_file.prefix_digest(position.prefix_len) != (position.identity, position.prefix_len):
        shrank = "shrank since the last run" if stat.size < position.offset else "changed from the start"
        return Resume(fresh_position(csv_file, data_start), data_start, f"file {shrank} (replaced); re-reading it")
    return Resume(position, data_start, verify=True, quiet=quiet)


def fresh_position(csv_file: CsvFile, data_start: int) -> FilePosition:
    identity, prefix_len = csv_file.prefix_digest()
    return FilePosition(identity=identity, prefix_len=prefix_len, offset=data_start, row=0)


class CsvScan:
    """One pass: verify the loaded chunks if the file was written to, re-read changed ones, read appended lines.

    Iterating yields (chunk, checkpoint just after it). Afterwards `position` is the final checkpoint, `held_back`
    the length of an unterminated last line left unread, `rewritten` the (start, end) of chunks re-read because
    their content changed."""

    def __init__(self, csv_file: CsvFile, start: Resume, stat: FileStat,
                 keep_alive: Callable[[], None] = lambda: None) -> None:
        self.csv_file, self.start, self.stat, self.keep_alive = csv_file, start, stat, keep_alive
        self.position = start.position
        self.held_back = 0
        self.rewritten: list[tuple[int, int]] = []

    def __iter__(self) -> Iterator[tuple[CsvChunk, FilePosition]]:
        with self.csv_file.open() as handle:
            if self.start.verify:
                yield from self._verify(handle)
            yield from self._append(handle)

    def _verify(self, handle: BinaryIO) -> Iterator[tuple[CsvChunk, FilePosition]]:
        pending = list(self.position.chunks)
        checked: list[Entry] = []
        while pending:
            start, end, rows, digest, batch_at = pending[0]
            if self._intact(handle, start, end, digest):
                checked.append(pending.pop(0))
                self.keep_alive()  # hashing a large file takes a while: the lease must not lapse meanwhile
                continue
            chunk, self.held_back = self.csv_file.read_chunk(handle, start, self._rows(checked) + 1, rows)
            if chunk is None:  # nothing but end of file (or an unfinished line) where the chunk was: shrunk
                pending.clear()
                break
            delta = chunk.end - end  # an edit that changed the length moves every later chunk by as much
            pending = [(s + delta, e + delta, r, h, b + delta) for s, e, r, h, b in pending[1:]]
            chunk.batch_at = batch_at  # the same raw batch, overwritten (moved chunks: a new one, read last)
            checked.append((chunk.start, chunk.end, chunk.row_count, chunk.digest, chunk.batch_at))
            self.rewritten.append((chunk.start, chunk.end))
            self.position = self._at(checked + pending, stat=None)  # the rest is unverified until we get there
            yield chunk, self.position
        self.position = self._at(checked, stat=self.stat)

    def _intact(self, handle: BinaryIO, start: int, end: int, digest: str) -> bool:
        """Same bytes, and still whole lines (a last line loaded without its newline must not have grown since)."""
        found = self.csv_file.hash_range(handle, start, end)
        if found is None or found[0] != digest:
            return False
        return found[1] == b"\n" or handle.read(1) == b""

    def _append(self, handle: BinaryIO) -> Iterator[tuple[CsvChunk, FilePosition]]:
        self.position = self.position.verified_at(self.stat)
        while True:
            chunk, self.held_back = self.csv_file.read_chunk(
                handle, self.position.offset, self.position.row + 1, self.csv_file.chunk_rows)
            if chunk is None:
                return
            yield chunk, self._extended(handle, chunk)

    def last_line(self) -> tuple[CsvChunk, FilePosition] | None:
        """The held-back last line, to be called once the file is known to be complete."""
        offset = self.position.offset
        with self.csv_file.open() as handle:
            chunk = self.csv_file.read_last_line(handle, offset, offset + self.held_back, self.position.row + 1)
            if chunk is None:
                return None
            self.held_back = 0
            return chunk, self._extended(handle, chunk)

    def _extended(self, handle: BinaryIO, chunk: CsvChunk) -> FilePosition:
        """The position after an appended chunk; a small chunk is merged into a small last entry (so that frequent
        small appends do not grow the list), after checking both still hold the bytes that were loaded."""
        entries = list(self.position.chunks)
        entry: Entry | None = (chunk.start, chunk.end, chunk.row_count, chunk.digest, chunk.batch_at)
        if entries and self._mergeable(entries[-1], entry):
            merged = self._merged(handle, entries[-1], entry)
            if merged:
                entries[-1] = merged
                entry = None
        if entry:
            entries.append(entry)
        self.position = replace(self.position, offset=chunk.end, row=self.position.row + chunk.row_count,
                                chunks=tuple(entries))
        return self.position

    def _mergeable(self, last: Entry, new: Entry) -> bool:
        return (last[1] == new[0] and last[2] + new[2] <= self.csv_file.chunk_rows
                and new[1] - last[0] <= CHUNK_MAX_BYTES)

    def _merged(self, handle: BinaryIO, last: Entry, new: Entry) -> Entry | None:
        here = handle.tell()
        combined = hashlib.sha256()
        first = self.csv_file.hash_range(handle, last[0], last[1], combined)
        second = self.csv_file.hash_range(handle, new[0], new[1], combined)
        handle.seek(here)
        if not first or not second or (first[0], second[0]) != (last[3], new[3]):
            return None  # changed meanwhile: keep them apart; the next run sees the difference
        return last[0], new[1], last[2] + new[2], combined.hexdigest()[:24], new[4]

    def _at(self, entries: list[Entry], stat: FileStat | None) -> FilePosition:
        offset = entries[-1][1] if entries else self.start.data_start
        return replace(self.position, offset=offset, row=self._rows(entries), chunks=tuple(entries)).verified_at(stat)

    @staticmethod
    def _rows(entries: list[Entry]) -> int:
        return sum(entry[2] for entry in entries)
