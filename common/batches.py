"""A raw batch -> normalized records with the run's field mappers: the transform's core, shared by the stage, the
normalize worker process and quarantine replay (none of which needs the others)."""

from __future__ import annotations

import logging

from common.clock import Clock
from common.config import Settings
from common.drift.mapping import FieldMapper
from common.errors import EtlError
from common.normalize import Normalized, normalize_csv_batch, normalize_json_batch, quarantine_entry
from common.sources import source_spec
from common.store import RawBatch, Run, Store

log = logging.getLogger(__name__)

NORMALIZERS = {"csv_lines": normalize_csv_batch, "json": normalize_json_batch}


class Mappers:
    """One FieldMapper per source for the run; their decisions end up in the run summary."""

    def __init__(self, store: Store, settings: Settings, run_id: str, clock: Clock) -> None:
        self.store, self.settings, self.run_id, self.clock = store, settings, run_id, clock
        self.by_source: dict[str, FieldMapper] = {}

    def __getitem__(self, source: str) -> FieldMapper:
        if source not in self.by_source:
            spec = source_spec(source, self.settings)
            self.by_source[source] = FieldMapper.for_run(self.store, spec, self.settings, self.run_id, self.clock)
        return self.by_source[source]

    def decisions(self) -> dict[str, dict[str, dict]]:
        return {source: mapper.all_decisions() for source, mapper in self.by_source.items()}

    def merge(self, decisions: dict[str, dict[str, dict]]) -> None:
        """Adopt decisions taken by a worker process for this run."""
        for source, by_field in decisions.items():
            for name, decision in by_field.items():
                self[source].adopt(name, decision)

    def summarize(self, run: Run) -> None:
        run.summary["drift"] = [d for m in self.by_source.values() for d in m.all_decisions().values()]
        for mapper in self.by_source.values():
            run.summary["warnings"].extend(mapper.warnings())


def normalize_batch(batch: RawBatch, mappers: Mappers, run_id: str, ingested_at: str) -> Normalized:
    """Normalize one batch; a batch that cannot be read at all is quarantined whole rather than retried forever."""
    try:
        normalizer = NORMALIZERS.get(batch.format)
        if normalizer is None:
            raise EtlError(f"unsupported raw batch format {batch.format!r}")
        return normalizer(batch, mappers[batch.source], run_id, ingested_at)
    except EtlError as exc:
        reason = exc.message
    except Exception as exc:  # a bug must not block every later batch
        log.exception("cannot transform batch %s", batch.batch_id)
        reason = f"internal error {type(exc).__name__}: {exc}"
    return Normalized(error=reason, quarantine=[quarantine_entry(batch, run_id, None, None,
                                                                 f"whole batch rejected: {reason}")])
