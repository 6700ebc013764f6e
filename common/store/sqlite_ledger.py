"""SQLite adapter, the ledger: runs (counted by kind, so metrics stay monotonic after pruning) and quarantine."""

from __future__ import annotations

import json
from typing import Sequence

from common.clock import iso_utc
from common.store import FINISHED_STATUSES, Fence, Run
from common.store.sqlite_base import SqliteBase, sql_where


class SqliteLedger(SqliteBase):
    """The run ledger and the quarantine's reads, resolutions and pruning."""

    @staticmethod
    def _quarantine_where(source: str | None, unresolved_only: bool) -> tuple[str, list]:
        return sql_where({"source": source or None}, *(["resolved_at IS NULL"] if unresolved_only else []))

    def list_quarantine(self, source: str | None = None, limit: int = 100, offset: int = 0,
                        unresolved_only: bool = False) -> list[dict]:
        where, params = self._quarantine_where(source, unresolved_only)
        keys = ("id", "source", "run_id", "batch_id", "row_number", "raw", "reason", "created_at", "resolved_at",
                "resolved_by")
        rows = self._read(
            f"SELECT {', '.join(keys)} FROM quarantine {where} ORDER BY created_at, batch_id, row_number "
            "LIMIT ? OFFSET ?", (*params, limit, offset),
        )
        return [dict(zip(keys, r)) for r in rows]

    def count_quarantine(self, source: str | None = None, unresolved_only: bool = False) -> int:
        where, params = self._quarantine_where(source, unresolved_only)
        return self._read(f"SELECT COUNT(*) FROM quarantine {where}", params)[0][0]

    def resolve_quarantine(self, ids: Sequence[str], run_id: str, fence: Fence | None = None) -> int:
        now = iso_utc(self.clock())
        with self._write(fence) as conn:
            before = conn.total_changes
            conn.executemany("UPDATE quarantine SET resolved_at = ?, resolved_by = ? WHERE id = ? AND resolved_at IS NULL",
                             [(now, run_id, entry_id) for entry_id in ids])
            return conn.total_changes - before

    def prune_quarantine(self, before: str, limit: int, fence: Fence | None = None) -> int:
        with self._write(fence) as conn:
            return conn.execute(
                "DELETE FROM quarantine WHERE rowid IN (SELECT rowid FROM quarantine INDEXED BY quarantine_resolved "
                "WHERE resolved_at IS NOT NULL AND resolved_at < ? ORDER BY resolved_at LIMIT ?)",
                (before, limit)).rowcount

    # --- run ledger ------------------------------------------------------------------------------------------------
    def save_run(self, run: Run, fence: Fence | None = None) -> bool:
        with self._write(fence) as conn:
            before = conn.execute("SELECT stage, source, status FROM runs WHERE run_id = ?", (run.run_id,)).fetchone()
            written = conn.execute(
                "INSERT INTO runs (run_id, stage, source, status, started_at, finished_at, doc) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET stage = excluded.stage, "
                "source = excluded.source, status = excluded.status, started_at = excluded.started_at, "
                "finished_at = excluded.finished_at, doc = excluded.doc WHERE runs.status = 'running'",
                (run.run_id, run.stage, run.source, run.status, run.started_at, run.finished_at,
                 json.dumps(run.to_dict())),
            ).rowcount == 1
            if written and (before is None or before != (run.stage, run.source, run.status)):
                if before is not None:
                    conn.execute("UPDATE run_counts SET count = count - 1 WHERE stage = ? AND source = ? AND status = ?",
                                 (before[0], before[1] or "", before[2]))
                conn.execute("INSERT INTO run_counts (stage, source, status, count) VALUES (?, ?, ?, 1) "
                             "ON CONFLICT (stage, source, status) DO UPDATE SET count = count + 1",
                             (run.stage, run.source or "", run.status))
            return written

    def get_run(self, run_id: str) -> Run | None:
        rows = self._read("SELECT doc FROM runs WHERE run_id = ?", (run_id,))
        return Run(**json.loads(rows[0][0])) if rows else None

    def list_runs(self, stage: str | None = None, source: str | None = None, limit: int = 50,
                  status: str | None = None, before: tuple[str, str] | None = None) -> list[Run]:
        where, params = sql_where({"stage": stage, "source": source, "status": status},
                               *(["(started_at, run_id) < (?, ?)"] if before else []))
        params = [*before, *params] if before else params
        rows = self._read(f"SELECT doc FROM runs {where} ORDER BY started_at DESC, run_id DESC LIMIT ?", (*params, limit))
        return [Run(**json.loads(r[0])) for r in rows]

    def running_runs(self, stage: str, source: str | None) -> list[Run]:
        rows = self._read("SELECT doc FROM runs WHERE status = 'running' AND stage = ? AND source IS ? "
                          "ORDER BY started_at, run_id", (stage, source))
        return [Run(**json.loads(r[0])) for r in rows]

    def run_durations(self, stage: str, source: str | None, limit: int) -> list[int]:
        rows = self._read(
            "SELECT json_extract(doc, '$.duration_ms') FROM (SELECT status, doc, started_at, run_id FROM runs "
            "WHERE stage = ? AND source IS ? ORDER BY started_at DESC, run_id DESC LIMIT ?) "
            f"WHERE status IN ({', '.join('?' * len(FINISHED_STATUSES))}) ORDER BY started_at DESC, run_id DESC",
            (stage, source, limit, *FINISHED_STATUSES))
        return [row[0] for row in rows if row[0] is not None]

    def last_run(self, statuses: Sequence[str], stage: str | None = None) -> Run | None:
        where, params = sql_where({"stage": stage}, f"status IN ({', '.join('?' * len(statuses))})")
        rows = self._read(f"SELECT doc FROM runs {where} ORDER BY started_at DESC, run_id DESC LIMIT 1",
                          [*statuses, *params])
        return Run(**json.loads(rows[0][0])) if rows else None

    def count_runs(self, since: str | None = None) -> dict[tuple[str, str | None, str], int]:
        if since:
            rows = self._read("SELECT stage, source, status, COUNT(*) FROM runs WHERE started_at >= ? "
                              "GROUP BY stage, source, status", [since])
        else:
            rows = self._read("SELECT stage, NULLIF(source, ''), status, count FROM run_counts WHERE count > 0")
        return {(stage, source, status): count for stage, source, status, count in rows}

    def prune_runs(self, before: str, limit: int, fence: Fence | None = None) -> int:
        with self._write(fence) as conn:
            return conn.execute(
                "DELETE FROM runs WHERE rowid IN (SELECT rowid FROM runs WHERE started_at < ? AND status != 'running' "
                # NOT IN a list holding a NULL matches nothing: kinds without a run (counted down to 0) are left out
                "AND run_id NOT IN (SELECT newest FROM (SELECT (SELECT r.run_id FROM runs r WHERE r.stage = k.stage "
                "AND r.source IS NULLIF(k.source, '') AND r.status = k.status "
                "ORDER BY r.started_at DESC, r.run_id DESC LIMIT 1) AS newest FROM run_counts k WHERE k.count > 0) "
                "WHERE newest IS NOT NULL) "
                "ORDER BY started_at LIMIT ?)", (before, limit)).rowcount

    def latest_runs(self, statuses: Sequence[str]) -> list[Run]:
        """One index seek per (stage, source) and status: the kinds of run come from run_counts."""
        newest = []
        for stage, source in self._read("SELECT DISTINCT stage, NULLIF(source, '') FROM run_counts WHERE count > 0"):
            found = [row for status in statuses for row in self._read(
                "SELECT started_at, run_id, doc FROM runs WHERE stage = ? AND source IS ? AND status = ? "
                "ORDER BY started_at DESC, run_id DESC LIMIT 1", (stage, source, status))]
            if found:
                newest.append(Run(**json.loads(max(found)[2])))
        return newest
