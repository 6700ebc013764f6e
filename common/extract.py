"""Extract stage for CSV sources: file -> raw batches, each written together with the checkpoint just after it."""

from __future__ import annotations

from typing import Callable

from common.clock import Deadline
from common.config import Settings
from common.drift.mapping import FieldMapper
from common.errors import SourceError
from common.runs import LeaseKeeper
from common.sources import SourceSpec
from common.sources.csv_file import CsvFile
from common.store import RawBatch, Run, Store

Progress = Callable[[int, int, int], None]
"""progress(rows_done, bytes_done, bytes_total), called after every durable chunk."""


def checkpoint_name(source: str) -> str:
    return f"extract:{source}"


def extract_csv(
    spec: SourceSpec, store: Store, settings: Settings, run: Run, keeper: LeaseKeeper, deadline: Deadline,
    progress: Progress | None = None,
) -> str:
    """Stream the CSV from its checkpoint to the end (or the deadline); return the run's final status."""
    csv_file = CsvFile(spec.location, settings.csv_chunk_rows, settings.csv_max_line_bytes)
    header, data_start = csv_file.read_header()
    mapper = FieldMapper.for_run(store, spec, settings, run.run_id, deadline.clock, learn=False)
    missing = mapper.missing_message(mapper.map(header))
    run.summary["drift"] = list(mapper.decisions.values())
    run.summary["warnings"].extend(mapper.warnings())
    if missing:
        raise SourceError(missing, source=spec.name)
    name = checkpoint_name(spec.name)
    position, restart_reason = csv_file.resume(store.get_checkpoint(name), data_start)
    if restart_reason:
        run.summary["warnings"].append(restart_reason)
    total = csv_file.size()
    run.checkpoint = position.to_dict()
    run.summary.update(file=spec.location, batches=0, rejected_lines=0, bytes_total=total)
    if data_start >= total:
        run.summary["warnings"].append("file has a header but no data rows")
        return "succeeded"
    for chunk, after in csv_file.chunks(position):
        store.put_raw_batch(
            RawBatch(
                batch_id=f"{spec.name}:{position.identity}:{chunk.start}", source=spec.name, run_id=run.run_id,
                format="csv_lines", payload=chunk.text, row_count=chunk.row_count, first_row=chunk.first_row,
                header=header, rejects=chunk.rejects, position={"start": chunk.start, "end": chunk.end},
            ),
            (name, after.to_dict()),
        )
        run.rows_in += chunk.row_count
        run.rows_out += chunk.row_count
        run.checkpoint = after.to_dict()
        run.summary["batches"] += 1
        run.summary["rejected_lines"] += len(chunk.rejects)
        if progress:
            progress(after.row, after.offset, total)
        if deadline.near():
            run.summary["warnings"].append("invocation deadline reached; the next run continues from the checkpoint")
            return "partial"
        keeper.keep_alive()
    return "succeeded"
