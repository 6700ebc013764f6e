"""SQLite adapter: the embedded default store. `SqliteStore` is leases, checkpoints, shared state and raw batches
here, records (`sqlite_records`) and the ledger (`sqlite_ledger`) by role, on one connection (`sqlite_base`)."""

from __future__ import annotations

import json
import sqlite3

from common.clock import iso_utc
from common.store import Fence, RawBatch
from common.store.sqlite_base import sql_where
from common.store.sqlite_ledger import SqliteLedger
from common.store.sqlite_records import SqliteRecords

_SAME_BATCH = (
    "raw_batches.payload IS excluded.payload AND raw_batches.header IS excluded.header "
    "AND raw_batches.format IS excluded.format AND raw_batches.rejects IS excluded.rejects"
)
_BATCH_COLUMNS = (
    "batch_id, source, run_id, format, payload, row_count, first_row, header, rejects, position, version, "
    "status, created_at"
)


class SqliteStore(SqliteRecords, SqliteLedger):
    """Embedded store in one SQLite file; safe to share between processes (WAL + immediate transactions)."""

    # --- leases ----------------------------------------------------------------------------------------
    def acquire_lease(self, name: str, owner: str, ttl_s: float, now: float) -> Fence | None:
        with self._write() as conn:
            row = conn.execute(
                "INSERT INTO leases (name, owner, expires_at, epoch) "
                "VALUES (?, ?, ?, (SELECT COALESCE(MAX(epoch), 0) + 1 FROM leases)) "
                "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at, "
                "epoch = CASE WHEN leases.owner = excluded.owner THEN leases.epoch ELSE excluded.epoch END "
                "WHERE leases.expires_at <= ? OR leases.owner = excluded.owner RETURNING epoch",
                (name, owner, now + ttl_s, now),
            ).fetchone()
            return Fence(name, owner, row[0]) if row else None

    def renew_lease(self, fence: Fence, ttl_s: float, now: float) -> bool:
        with self._write() as conn:
            cur = conn.execute("UPDATE leases SET expires_at = ? WHERE name = ? AND owner = ? AND epoch = ?",
                               (now + ttl_s, fence.name, fence.owner, fence.epoch))
            return cur.rowcount == 1

    def release_lease(self, fence: Fence) -> None:
        with self._write() as conn:
            conn.execute("UPDATE leases SET expires_at = 0 WHERE name = ? AND owner = ? AND epoch = ?",
                         (fence.name, fence.owner, fence.epoch))

    # --- checkpoints ------------------------------------------------------------------------------------
    def get_checkpoint(self, name: str) -> dict | None:
        rows = self._read("SELECT value FROM checkpoints WHERE name = ?", (name,))
        return json.loads(rows[0][0]) if rows else None

    def put_checkpoint(self, name: str, value: dict, fence: Fence | None = None) -> None:
        with self._write(fence) as conn:
            self._put_checkpoint(conn, name, value)

    def _put_checkpoint(self, conn: sqlite3.Connection, name: str, value: dict) -> None:
        conn.execute(
            "INSERT INTO checkpoints (name, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (name, json.dumps(value), iso_utc(self.clock())),
        )

    # --- shared state ---------------------------------------------------------------------------------------
    def get_state(self, key: str) -> tuple[dict | None, int]:
        rows = self._read("SELECT value, version FROM shared_state WHERE key = ?", (key,))
        return (json.loads(rows[0][0]), rows[0][1]) if rows else (None, 0)

    def cas_state(self, key: str, value: dict, expected_version: int, fence: Fence | None = None) -> bool:
        now = iso_utc(self.clock())
        with self._write(fence) as conn:
            if expected_version == 0:
                cur = conn.execute(
                    "INSERT INTO shared_state (key, value, version, updated_at) VALUES (?, ?, 1, ?) "
                    "ON CONFLICT (key) DO NOTHING", (key, json.dumps(value), now))
            else:
                cur = conn.execute(
                    "UPDATE shared_state SET value = ?, version = version + 1, updated_at = ? "
                    "WHERE key = ? AND version = ?", (json.dumps(value), now, key, expected_version))
            return cur.rowcount == 1

    # --- raw batches ----------------------------------------------------------------------------------------
    def put_raw_batch(self, batch: RawBatch, checkpoint: tuple[str, dict] | None = None,
                      fence: Fence | None = None) -> None:
        with self._write(fence) as conn:
            conn.execute(
                f"INSERT INTO raw_batches ({_BATCH_COLUMNS}, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 'pending', ?, "
                "(SELECT COALESCE(MAX(seq), 0) + 1 FROM raw_batches)) "
                "ON CONFLICT (batch_id) DO UPDATE SET "
                f"version = raw_batches.version + NOT ({_SAME_BATCH}), "
                f"status = CASE WHEN {_SAME_BATCH} THEN raw_batches.status ELSE 'pending' END, "
                # a rewritten batch goes to the back of the queue: after any older pending copy of the same rows
                f"seq = CASE WHEN {_SAME_BATCH} THEN raw_batches.seq ELSE excluded.seq END, "
                "run_id = excluded.run_id, format = excluded.format, payload = excluded.payload, "
                "row_count = excluded.row_count, first_row = excluded.first_row, header = excluded.header, "
                "rejects = excluded.rejects, position = excluded.position",
                (
                    batch.batch_id, batch.source, batch.run_id, batch.format, batch.payload, batch.row_count,
                    batch.first_row, json.dumps(batch.header) if batch.header is not None else None,
                    json.dumps(batch.rejects), json.dumps(batch.position), iso_utc(self.clock()),
                ),
            )
            if checkpoint is not None:
                self._put_checkpoint(conn, *checkpoint)

    def pending_raw_batches(self, limit: int, source: str | None = None) -> list[RawBatch]:
        where, params = "status = 'pending'", []
        if source:
            where, params = where + " AND source = ?", [source]
        rows = self._read(
            f"SELECT {_BATCH_COLUMNS} FROM raw_batches WHERE {where} ORDER BY seq LIMIT ?", (*params, limit)
        )
        return [_batch(r) for r in rows]

    def get_raw_batch(self, batch_id: str) -> RawBatch | None:
        rows = self._read(f"SELECT {_BATCH_COLUMNS} FROM raw_batches WHERE batch_id = ?", (batch_id,))
        return _batch(rows[0]) if rows else None

    def requeue_raw_batch(self, batch_id: str) -> bool:
        with self._write() as conn:
            return conn.execute(
                "UPDATE raw_batches SET status = 'pending', version = version + 1 WHERE batch_id = ?", (batch_id,)
            ).rowcount == 1

    def prune_raw_batches(self, before: str, limit: int, fence: Fence | None = None) -> int:
        with self._write(fence) as conn:
            return conn.execute(
                "DELETE FROM raw_batches WHERE rowid IN (SELECT b.rowid FROM raw_batches b INDEXED BY raw_batches_done "
                "WHERE b.status = 'done' AND b.created_at < ? AND NOT EXISTS (SELECT 1 FROM quarantine q "
                "WHERE q.batch_id = b.batch_id AND q.resolved_at IS NULL) ORDER BY b.created_at LIMIT ?)",
                (before, limit)).rowcount

    def count_raw_batches(self, source: str | None = None, pending_only: bool = False) -> int:
        where, params = sql_where({"source": source or None}, *(["status = 'pending'"] if pending_only else []))
        return self._read(f"SELECT COUNT(*) FROM raw_batches {where}", params)[0][0]


def _batch(row: tuple) -> RawBatch:
    return RawBatch(
        batch_id=row[0], source=row[1], run_id=row[2], format=row[3], payload=row[4], row_count=row[5],
        first_row=row[6], header=json.loads(row[7]) if row[7] is not None else None,
        rejects=json.loads(row[8]), position=json.loads(row[9]), version=row[10], created_at=row[12],
    )
