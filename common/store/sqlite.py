"""SQLite adapter: the embedded default store (WAL, one lazily created connection per process and thread)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import threading
from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

from common.clock import iso_utc, system_clock
from common.errors import InputError, LeaseLost, StoreError
from common.store import (
    DATA_VERSION_KEY, FIRST_SEEN_FIELDS, NORMALIZED_FIELDS, SCHEMA_VERSION, DataQuery, Fence, RawBatch, Rows, Run,
    Store,
)
from common.store.sqlite_schema import SORT_INDEXES, migrate, sort_index_statement

log = logging.getLogger(__name__)

BULK_MIN_ROWS = 20_000
BULK_SHARE = 0.25
"""A backlog of at least BULK_MIN_ROWS rows and BULK_SHARE of the records already stored is loaded with the sort
indexes dropped and built after it. Measured on 1M CSV rows: maintaining the six (field, id) indexes row by row
cost 22 s, building them after the load 3 s; a build costs about a tenth of the table's size in row-by-row
maintenance, so below a quarter of it the indexes stay (an hourly pass of sources A and C never drops them)."""
ANALYZE_MIN_ROWS = 1000
CONVERT_FREE_SHARE = 0.1
"""A store laid out before incremental vacuum (schema < 7) is converted by one VACUUM once at least this share of it
is free. VACUUM copies only what is kept and needs that much disk again (checked first); measured on the 1M-row CSV's
store: pruning its raw batches frees 18 % (116 of 646 MB), the VACUUM then takes ~5 s, once. Below this share the
free pages are simply reused by later writes."""
REBUILT_SORTS = tuple(SORT_INDEXES)
"""The sort indexes a bulk load drops: all six. Rows arrive in random order of four of them; ingested_at and symbol
are nearly in order, yet building them after the load (0.37 s and 0.29 s at 1M records) still cost less than
keeping them row by row (about 1 s of the load's time together, measured)."""

_COLUMNS = ", ".join(NORMALIZED_FIELDS)
_SOURCE = NORMALIZED_FIELDS.index("source")
_UPSERT_NORMALIZED = (
    f"INSERT INTO normalized ({_COLUMNS}) VALUES ({', '.join('?' * len(NORMALIZED_FIELDS))}) "
    "ON CONFLICT (source, source_id, observed_at) DO UPDATE SET "
    + ", ".join(
        f"{name} = excluded.{name}"
        for name in NORMALIZED_FIELDS
        if name not in FIRST_SEEN_FIELDS | {"source", "source_id", "observed_at"}
    )
)
_SAME_BATCH = (
    "raw_batches.payload IS excluded.payload AND raw_batches.header IS excluded.header "
    "AND raw_batches.format IS excluded.format AND raw_batches.rejects IS excluded.rejects"
)
_BATCH_COLUMNS = (
    "batch_id, source, run_id, format, payload, row_count, first_row, header, rejects, position, version, "
    "status, created_at"
)


class SqliteStore(Store):
    """Embedded store in one SQLite file; safe to share between processes (WAL + immediate transactions)."""

    def __init__(self, path: str, clock=system_clock) -> None:
        self.path = path
        self.clock = clock
        self._local = threading.local()
        self.migrated_from = SCHEMA_VERSION  # the version this process found on first open

    # --- connection handling ------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        try:
            if os.path.dirname(self.path):
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            # before anything creates a table (and before WAL): a new file can give freed pages back in steps
            # (`reclaim_space`); on an older file this only takes effect at its next VACUUM
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA wal_autocheckpoint=10000")  # 40 MB: measured 1.6x faster bulk upserts than 1000
            found = migrate(conn)
            self.migrated_from = min(found, self.migrated_from)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open SQLite store at {self.path}: {exc}") from exc
        self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def migrate(self) -> tuple[int, int]:
        try:
            conn = self._conn()
            found, self.migrated_from = self.migrated_from, SCHEMA_VERSION
            return (migrate(conn) if found == SCHEMA_VERSION else found), SCHEMA_VERSION
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite migration failed: {exc}") from exc

    @contextmanager
    def _write(self, fence: Fence | None = None) -> Iterator[sqlite3.Connection]:
        """One immediate transaction; with a fence, it is checked inside the transaction (so a takeover cannot
        slip between the check and the write) and LeaseLost rolls everything back."""
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if fence is not None and not conn.execute(
                    "SELECT 1 FROM leases WHERE name = ? AND owner = ? AND epoch = ?",
                    (fence.name, fence.owner, fence.epoch),
                ).fetchone():
                    raise LeaseLost(f"lease {fence.name} (epoch {fence.epoch}) was taken over; write refused",
                                    lease=fence.name)
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}") from exc

    def _read(self, sql: str, params: Sequence = ()) -> list[tuple]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite read failed: {exc}") from exc

    def ping(self) -> None:
        self._read("SELECT 1")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None

    # --- space ------------------------------------------------------------------------------------------
    def size_bytes(self) -> int | None:
        (pages, page_size), = self._read("SELECT * FROM pragma_page_count(), pragma_page_size()")
        return pages * page_size

    def reclaim_space(self, max_bytes: int = 8 << 20) -> int:
        """Incremental vacuum: up to `max_bytes` of free pages per short write transaction, then a passive WAL
        checkpoint so the file really shrinks. A file laid out before schema 7 has no incremental vacuum: it is
        converted by one VACUUM, once a CONVERT_FREE_SHARE of it is free and the disk can hold a copy."""
        (mode, free, pages, page_size), = self._read(
            "SELECT * FROM pragma_auto_vacuum(), pragma_freelist_count(), pragma_page_count(), pragma_page_size()")
        if free == 0:
            return 0
        conn = self._conn()
        try:
            if mode != 2:
                kept = (pages - free) * page_size
                disk_free = shutil.disk_usage(os.path.dirname(os.path.abspath(self.path))).free
                if free < CONVERT_FREE_SHARE * pages or disk_free < 2 * kept:
                    return 0
                log.info("SQLite store %s: one VACUUM to convert to incremental vacuum (%d MB kept)",
                         self.path, kept >> 20)
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                conn.execute("VACUUM")
            else:  # executescript steps the pragma to its end (execute would free one page)
                conn.executescript(f"BEGIN IMMEDIATE; PRAGMA incremental_vacuum({max(1, max_bytes // page_size)}); "
                                   "COMMIT;")
            (left, now), = conn.execute("SELECT * FROM pragma_freelist_count(), pragma_page_count()").fetchall()
            if left == 0:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"SQLite could not reclaim space: {exc}") from exc
        return (pages - now) * page_size

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
        where, params = _where({"source": source or None}, *(["status = 'pending'"] if pending_only else []))
        return self._read(f"SELECT COUNT(*) FROM raw_batches {where}", params)[0][0]

    # --- transform output ---------------------------------------------------------------------------------------
    def commit_transformed(
        self, batch: RawBatch | None, records: Sequence[tuple], quarantine: Sequence[dict], assets: Iterable[dict],
        fence: Fence | None = None, resolves: Sequence[str] = (), resolved_by: str | None = None,
    ) -> None:
        now = iso_utc(self.clock())
        assets = list(assets)
        with self._write(fence) as conn:
            (before,), = conn.execute("SELECT COALESCE(MAX(id), 0) FROM normalized").fetchall()
            conn.executemany(_UPSERT_NORMALIZED, records)
            _count_new_records(conn, records, before)
            conn.executemany(
                "INSERT INTO assets (asset_id, symbol, name, first_seen_at, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (asset_id) DO UPDATE SET updated_at = excluded.updated_at",
                [(a["asset_id"], a["symbol"], a["name"], now, now) for a in assets],
            )
            conn.executemany(
                "INSERT INTO asset_sources (asset_id, source) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(a["asset_id"], a["source"]) for a in assets],
            )
            conn.executemany(
                "INSERT INTO quarantine (id, source, run_id, batch_id, row_number, raw, reason, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                [
                    (q["id"], q["source"], q["run_id"], q.get("batch_id"), q.get("row_number"), q.get("raw"),
                     q["reason"], now)
                    for q in quarantine
                ],
            )
            conn.executemany(
                "UPDATE quarantine SET resolved_at = ?, resolved_by = ? WHERE id = ? AND resolved_at IS NULL",
                [(now, resolved_by, entry_id) for entry_id in resolves],
            )
            if batch is not None:
                conn.execute(
                    "UPDATE raw_batches SET status = 'done' WHERE batch_id = ? AND version = ?",
                    (batch.batch_id, batch.version),
                )
            conn.execute("INSERT INTO shared_state (key, value, version, updated_at) VALUES (?, '{}', 1, ?) "
                         "ON CONFLICT (key) DO UPDATE SET version = version + 1, updated_at = excluded.updated_at",
                         (DATA_VERSION_KEY, now))

    # --- reads ----------------------------------------------------------------------------------------------------
    def read_page(self, query: DataQuery) -> Rows:
        where, params = _data_where(query)
        order = _order_by(query)
        offset, wanted = (query.page - 1) * query.limit, query.limit + 1  # one more: does a next page exist?
        rows: list[tuple] = []
        for condition, extra in _keyset_segments(query):
            clauses = " AND ".join(filter(None, (where, condition)))
            rows += self._read(f"SELECT id, {_COLUMNS} FROM normalized {'WHERE ' + clauses if clauses else ''} "
                               f"{order} LIMIT ? OFFSET ?", (*params, *extra, wanted - len(rows), offset))
            if len(rows) >= wanted:
                break
        items = [dict(zip(NORMALIZED_FIELDS, row[1:])) for row in rows[:query.limit]]
        after = (items[-1][query.sort_by], rows[query.limit - 1][0]) if len(rows) > query.limit else None
        return Rows(items=items, after=after)

    def begin_bulk_load(self, fence: Fence | None = None) -> bool:
        (pending, stored), = self._read(
            "SELECT (SELECT COALESCE(SUM(row_count), 0) FROM raw_batches WHERE status = 'pending'), "
            "(SELECT COALESCE(MAX(id), 0) FROM normalized)")  # ids are dense unless records were deleted: an estimate
        if pending < BULK_MIN_ROWS or pending < BULK_SHARE * stored:
            return False
        with self._write(fence) as conn:
            for field in REBUILT_SORTS:
                conn.execute(f"DROP INDEX IF EXISTS {SORT_INDEXES[field]}")
        return True

    def finish_bulk_load(self, fence: Fence | None = None) -> None:
        """Also refreshes the query planner's statistics each time the records at least double: without them it
        would answer `source=...` (three values) by sorting a third of the table instead of walking the sort's
        index. The natural key's index is the one that tells it (its first column is the source); analysing it reads
        it once (0.07 s at 1M records, all indexes 0.42 s), and doubling keeps that a constant per record."""
        present = {row[0] for row in self._read("SELECT name FROM sqlite_master WHERE type = 'index'")}
        missing = [field for field, name in SORT_INDEXES.items() if name not in present]
        if missing:
            self._conn().execute("PRAGMA threads = 2")  # the sorter may use a second core
        for field in missing:  # one index per transaction: the extracts' writes are held up for one build at most
            with self._write(fence) as conn:
                conn.execute(sort_index_statement(field))
        stored = self._read("SELECT COALESCE(MAX(id), 0) FROM normalized")[0][0]
        if missing or (stored >= ANALYZE_MIN_ROWS and stored > 2 * self._analyzed_rows()):
            with self._write(fence) as conn:
                conn.execute("ANALYZE normalized_key")

    def _analyzed_rows(self) -> int:
        """How many records the planner's statistics were taken over (0: never)."""
        if not self._read("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'"):
            return 0
        rows = self._read("SELECT CAST(stat AS INTEGER) FROM sqlite_stat1 WHERE idx = 'normalized_key'")
        return rows[0][0] if rows else 0

    def count_matching(self, query: DataQuery) -> int:
        where, params = _data_where(query)
        return self._read(f"SELECT COUNT(*) FROM normalized {'WHERE ' + where if where else ''}", params)[0][0]

    def data_version(self) -> int:
        return self.get_state(DATA_VERSION_KEY)[1]

    def _asset_where(self, query: DataQuery) -> tuple[str, list]:
        symbols = query.wanted_symbols()
        clauses, params = [], []
        if symbols:
            clauses.append(f"a.symbol IN ({', '.join('?' * len(symbols))})")
            params += symbols
        if query.asset_id:
            clauses.append("a.asset_id = ?")
            params.append(query.asset_id)
        if query.source:
            clauses.append("EXISTS (SELECT 1 FROM asset_sources s WHERE s.asset_id = a.asset_id AND s.source = ?)")
            params.append(query.source)
        return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params

    def count_assets(self, query: DataQuery) -> int:
        where, params = self._asset_where(query)
        return self._read(f"SELECT COUNT(*) FROM assets a {where}", params)[0][0]

    def latest_by_source(self, query: DataQuery) -> list[dict]:
        where, params = self._asset_where(query)
        source = "AND s.source = ? " if query.source else ""
        # CROSS JOIN fixes the join order (page of assets -> their sources -> one seek each), whatever the stats
        rows = self._read(
            f"SELECT {', '.join('n.' + c for c in NORMALIZED_FIELDS)} FROM "
            "(SELECT s.asset_id, s.source, (SELECT MAX(m.observed_at) FROM normalized m "
            "WHERE m.asset_id = s.asset_id AND m.source = s.source) AS newest "
            f"FROM (SELECT a.asset_id FROM assets a {where} ORDER BY a.asset_id LIMIT ? OFFSET ?) p "
            f"CROSS JOIN asset_sources s WHERE s.asset_id = p.asset_id {source}) x "
            "CROSS JOIN normalized n INDEXED BY normalized_asset_source_time "
            "WHERE n.asset_id = x.asset_id AND n.source = x.source AND n.observed_at = x.newest "
            "ORDER BY n.asset_id, n.source, n.source_id",
            (*params, query.limit, (query.page - 1) * query.limit, *([query.source] if query.source else [])))
        return [dict(zip(NORMALIZED_FIELDS, row)) for row in rows]

    def count_normalized(self, source: str | None = None) -> int:
        """Kept by `commit_transformed` (schema version 8): one small read, not a walk over the records."""
        if source:
            return self._read("SELECT COALESCE(SUM(count), 0) FROM record_counts WHERE source = ?", (source,))[0][0]
        return self._read("SELECT COALESCE(SUM(count), 0) FROM record_counts")[0][0]

    def list_assets(self) -> list[dict]:
        rows = self._read(
            "SELECT a.asset_id, a.symbol, a.name, a.first_seen_at, a.updated_at, group_concat(s.source) "
            "FROM assets a LEFT JOIN asset_sources s USING (asset_id) GROUP BY a.asset_id ORDER BY a.asset_id"
        )
        return [
            {"asset_id": r[0], "symbol": r[1], "name": r[2], "first_seen_at": r[3], "updated_at": r[4],
             "sources": sorted(r[5].split(",")) if r[5] else []}
            for r in rows
        ]

    @staticmethod
    def _quarantine_where(source: str | None, unresolved_only: bool) -> tuple[str, list]:
        return _where({"source": source or None}, *(["resolved_at IS NULL"] if unresolved_only else []))

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
        where, params = _where({"stage": stage, "source": source, "status": status},
                               *(["(started_at, run_id) < (?, ?)"] if before else []))
        params = [*before, *params] if before else params
        rows = self._read(f"SELECT doc FROM runs {where} ORDER BY started_at DESC, run_id DESC LIMIT ?", (*params, limit))
        return [Run(**json.loads(r[0])) for r in rows]

    def running_runs(self, stage: str, source: str | None) -> list[Run]:
        rows = self._read("SELECT doc FROM runs WHERE status = 'running' AND stage = ? AND source IS ? "
                          "ORDER BY started_at, run_id", (stage, source))
        return [Run(**json.loads(r[0])) for r in rows]

    def last_run(self, statuses: Sequence[str], stage: str | None = None) -> Run | None:
        where, params = _where({"stage": stage}, f"status IN ({', '.join('?' * len(statuses))})")
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


def _count_new_records(conn: sqlite3.Connection, records: Sequence[tuple], before: int) -> None:
    """Add the records this commit created to `record_counts`. A new record gets the next id (max + 1: nothing is
    ever deleted from the table) and an update keeps its own, so the new ones are exactly those above `before`:
    for one source (every batch) their number is the max id's growth, read in O(1); a commit of several sources
    (a quarantine replay) groups the new rows, read by id range (NOT INDEXED: the planner would rather walk the
    whole natural-key index in source order, 58 ms at 1M records, than 20k rows of the table, 4 ms)."""
    if not records:
        return
    sources = {record[_SOURCE] for record in records}
    if len(sources) == 1:
        (after,), = conn.execute("SELECT COALESCE(MAX(id), 0) FROM normalized").fetchall()
        counts = [(sources.pop(), after - before)]
    else:
        counts = conn.execute("SELECT source, COUNT(*) FROM normalized NOT INDEXED WHERE id > ? GROUP BY source",
                              (before,)).fetchall()
    conn.executemany("INSERT INTO record_counts (source, count) VALUES (?, ?) "
                     "ON CONFLICT (source) DO UPDATE SET count = count + excluded.count", counts)


def _where(equal: dict[str, object], *conditions: str) -> tuple[str, list]:
    """`WHERE` for the fixed `conditions` (no parameters) and `column = ?` for every value that is not None."""
    given = {column: value for column, value in equal.items() if value is not None}
    clauses = [*conditions, *(f"{column} = ?" for column in given)]
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), list(given.values())


def _data_where(query: DataQuery) -> tuple[str, list]:
    """The filters of a data query, as conditions without `WHERE` (empty when none)."""
    symbols = query.wanted_symbols()
    clauses, params = [], []
    if symbols:
        clauses.append(f"symbol IN ({', '.join('?' * len(symbols))})")
        params += symbols
    for column, value in (("source", query.source), ("asset_id", query.asset_id)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if query.from_at is not None:
        clauses.append("observed_at >= ?")
        params.append(query.from_at)
    if query.to_at is not None:
        clauses.append("observed_at < ?")
        params.append(query.to_at)
    return " AND ".join(clauses), params


def _order_by(query: DataQuery) -> str:
    """`sort_by`, then the row id: the order of the index on (sort_by) (an index entry ends with the row id)."""
    direction = "DESC" if query.descending else "ASC"
    return f"ORDER BY {query.sort_by} {direction}, id {direction}"


def _keyset_segments(query: DataQuery) -> list[tuple[str, tuple]]:
    """The rows after `query.after`, as consecutive index ranges read in order. NULLs sort lowest, and a row-value
    comparison with a NULL is NULL, so the NULL block of the sort column is a range of its own:
    descending = [values below the cursor, then NULLs]; ascending from a NULL = [the rest of the NULLs, then values]."""
    if query.after is None:
        return [("", ())]
    value, position = query.after
    if not isinstance(position, int) or isinstance(position, bool) or isinstance(value, bool) \
            or not isinstance(value, (str, int, float, type(None))):
        raise InputError("cursor must be a next_cursor returned by GET /data of this deployment, unchanged")
    column, below = query.sort_by, "<" if query.descending else ">"
    if value is None:
        nulls = (f"{column} IS NULL AND id {below} ?", (position,))
        return [nulls] if query.descending else [nulls, (f"{column} IS NOT NULL", ())]
    values = (f"({column}, id) {below} (?, ?)", (value, position))
    return [values, (f"{column} IS NULL", ())] if query.descending else [values]


def _batch(row: tuple) -> RawBatch:
    return RawBatch(
        batch_id=row[0], source=row[1], run_id=row[2], format=row[3], payload=row[4], row_count=row[5],
        first_row=row[6], header=json.loads(row[7]) if row[7] is not None else None,
        rejects=json.loads(row[8]), position=json.loads(row[9]), version=row[10], created_at=row[12],
    )
