"""Extract stage for CSV sources: file -> raw batches, each written together with the checkpoint just after it."""

from __future__ import annotations

import time
from typing import Callable

from common.clock import Deadline
from common.config import Settings
from common.drift.mapping import FieldMapper
from common.errors import SourceError
from common.runs import LeaseKeeper
from common.sources import SourceSpec
from common.sources.csv_file import CsvChunk, CsvFile, FileStat
from common.sources.csv_position import CsvScan, FilePosition, Resume, resume
from common.sources.remote_file import RemoteOptions, is_remote
from common.store import RawBatch, Run, Store

Progress = Callable[[int, int, int], None]
"""progress(rows_done, bytes_done, bytes_total), called after every durable chunk."""

Sleep = Callable[[float], None]


def checkpoint_name(source: str) -> str:
    return f"extract:{source}"


def extract_csv(
    spec: SourceSpec, store: Store, settings: Settings, run: Run, keeper: LeaseKeeper, deadline: Deadline,
    progress: Progress | None = None, sleep: Sleep = time.sleep,
) -> str:
    """Bring the loaded copy of the CSV up to date (changed chunks re-read, appended lines read) until the end or
    the deadline; return the run's final status. `sleep` waits out the settle interval (injected in tests)."""
    remote = RemoteOptions.from_settings(settings) if is_remote(spec.location) else None
    csv_file = CsvFile(spec.location, settings.csv_chunk_rows, settings.csv_max_line_bytes, remote)
    stat, started = csv_file.stat(), deadline.clock()  # before reading anything: see _last_line_complete
    header, data_start = csv_file.read_header()
    mapper = FieldMapper.for_run(store, spec, settings, run.run_id, deadline.clock, learn=False)
    missing = mapper.missing_message(mapper.map(header))
    run.summary["drift"] = list(mapper.decisions.values())
    run.summary["warnings"].extend(mapper.warnings())
    if missing:
        raise SourceError(missing, source=spec.name)
    name = checkpoint_name(spec.name)
    saved = store.get_checkpoint(name)
    start = resume(csv_file, saved, data_start, stat)
    if start.reason:
        run.summary["warnings"].append(start.reason)
    run.checkpoint = start.position.to_dict()
    run.summary.update(file=csv_file.shown, batches=0, rejected_lines=0, bytes_total=stat.size, rewritten_chunks=0)
    if data_start >= stat.size:
        run.summary["warnings"].append("file has a header but no data rows")
        return "succeeded"
    scan = CsvScan(csv_file, start, stat, keeper.keep_alive)
    stored = saved

    def write(chunk: CsvChunk, after: FilePosition) -> None:
        """Store the chunk with the checkpoint just after it (one transaction in SQLite)."""
        nonlocal stored
        stored = after.to_dict()
        store.put_raw_batch(
            RawBatch(
                batch_id=f"{spec.name}:{after.identity}:{chunk.batch_at}", source=spec.name, run_id=run.run_id,
                format="csv_lines", payload=chunk.text, row_count=chunk.row_count, first_row=chunk.first_row,
                header=header, rejects=chunk.rejects, position={"start": chunk.start, "end": chunk.end},
            ),
            (name, stored),
        )
        run.rows_in += chunk.row_count
        run.rows_out += chunk.row_count
        run.checkpoint = stored
        run.summary["batches"] += 1
        run.summary["rejected_lines"] += len(chunk.rejects)
        if progress:
            progress(after.row, after.offset, stat.size)

    for chunk, after in scan:
        write(chunk, after)
        if deadline.near():
            _report_rewrites(run, scan)
            run.summary["warnings"].append("invocation deadline reached; the next run continues from the checkpoint")
            return "partial"
        keeper.keep_alive()
    _report_rewrites(run, scan)
    if scan.held_back:
        complete, seen = _last_line_complete(csv_file, scan, start, stat, started, settings.csv_settle_s, deadline,
                                             keeper, sleep)
        last = scan.last_line() if complete else None
        if last:
            write(*last)
        else:  # the next run takes it if the file is still as we saw it last
            scan.position = scan.position.seen_at(seen)
        if scan.held_back:
            run.summary["warnings"].append(
                f"the last line ({scan.held_back} bytes at byte {scan.position.offset}) has no newline and the file "
                "was written to recently: held back for the next run, which loads it once the file is complete")
    if start.verify and scan.position.offset < start.position.offset:
        run.summary["warnings"].append("file shrank since the last run: rows deleted from it stay loaded")
    if scan.position.to_dict() != stored:  # chunks verified (new stat) or dropped (shrunk): no new data
        stored = scan.position.to_dict()
        store.put_checkpoint(name, stored)
        run.checkpoint = stored
    return "succeeded"


def _report_rewrites(run: Run, scan: CsvScan) -> None:
    if scan.rewritten:
        run.summary["rewritten_chunks"] = len(scan.rewritten)
        spans = ", ".join(f"{start}-{end}" for start, end in scan.rewritten[:5])
        more = f" and {len(scan.rewritten) - 5} more" if len(scan.rewritten) > 5 else ""
        run.summary["warnings"].append(
            f"{len(scan.rewritten)} chunk(s) changed since the last run and were re-read (bytes {spans}{more})")


def _last_line_complete(
    csv_file: CsvFile, scan: CsvScan, start: Resume, stat: FileStat, started: float, settle_s: float,
    deadline: Deadline, keeper: LeaseKeeper, sleep: Sleep,
) -> tuple[bool, FileStat]:
    """Whether an unterminated last line is finished (and the file's stat last seen): nothing was written since
    the last run, or the file's size and mtime stayed the same for `settle_s` (counted from before this run read
    it, when nothing changed since)."""
    end = scan.position.offset + scan.held_back
    now = csv_file.stat()
    if start.quiet and now == stat:
        return now.size == end, now
    since = started if now == stat else deadline.clock()
    wait = settle_s - (deadline.clock() - since)
    if wait > 0:
        if deadline.remaining() - wait <= deadline.margin_s:
            return False, now
        keeper.keep_alive()
        sleep(wait)
        keeper.keep_alive()
        later = csv_file.stat()
        if later != now:
            return False, later
    return now.size == end, now
