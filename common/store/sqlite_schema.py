"""The SQLite store's schema and its versioned migrations (SCHEMA_VERSION in `common.store`)."""

from __future__ import annotations

import json
import sqlite3

from common.store import NORMALIZED_FIELDS, SCHEMA_VERSION, SORTABLE_FIELDS
from common.store.migrations import CSV_SOURCES, canonical_observed_at, migrated_source_id, record_key

_RECORDS_TABLE = """
CREATE TABLE {name} (
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, source_id TEXT NOT NULL, observed_at TEXT NOT NULL,
    idempotency_key TEXT NOT NULL, symbol TEXT NOT NULL, asset_id TEXT NOT NULL, name TEXT,
    price_usd REAL, open_usd REAL, high_usd REAL, low_usd REAL, market_cap_usd REAL, volume_24h_usd REAL,
    ingested_at TEXT NOT NULL, run_id TEXT NOT NULL)
"""
SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS shared_state (
    key TEXT PRIMARY KEY, value TEXT NOT NULL, version INTEGER NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raw_batches (
    batch_id TEXT PRIMARY KEY, source TEXT NOT NULL, run_id TEXT NOT NULL, format TEXT NOT NULL,
    payload TEXT NOT NULL, row_count INTEGER NOT NULL, first_row INTEGER NOT NULL, header TEXT,
    rejects TEXT NOT NULL, position TEXT NOT NULL, version INTEGER NOT NULL, status TEXT NOT NULL,
    created_at TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS raw_batches_seq ON raw_batches (seq);
CREATE INDEX IF NOT EXISTS raw_batches_pending ON raw_batches (seq) WHERE status = 'pending';
{records};
CREATE TABLE IF NOT EXISTS assets (
    asset_id TEXT PRIMARY KEY, symbol TEXT NOT NULL, name TEXT, first_seen_at TEXT NOT NULL,
    updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS asset_sources (
    asset_id TEXT NOT NULL, source TEXT NOT NULL, PRIMARY KEY (asset_id, source)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quarantine (
    id TEXT PRIMARY KEY, source TEXT NOT NULL, run_id TEXT NOT NULL, batch_id TEXT, row_number INTEGER,
    raw TEXT, reason TEXT NOT NULL, created_at TEXT NOT NULL, resolved_at TEXT, resolved_by TEXT);
CREATE INDEX IF NOT EXISTS quarantine_source ON quarantine (source, created_at);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, stage TEXT NOT NULL, source TEXT, status TEXT NOT NULL, started_at TEXT NOT NULL,
    finished_at TEXT, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS runs_stage_started ON runs (stage, started_at);
CREATE INDEX IF NOT EXISTS runs_started ON runs (started_at);
CREATE INDEX IF NOT EXISTS runs_latest ON runs (stage, source, status, started_at, run_id);
CREATE TABLE IF NOT EXISTS record_counts (source TEXT PRIMARY KEY, count INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS run_counts (
    stage TEXT NOT NULL, source TEXT NOT NULL, status TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (stage, source, status)) WITHOUT ROWID;
""".format(records=_RECORDS_TABLE.strip().format(name="IF NOT EXISTS normalized"))

_RECORD_COLUMNS = ", ".join(NORMALIZED_FIELDS)
_NORMALIZED_TABLE = """
CREATE TABLE {name} (
    source TEXT NOT NULL, source_id TEXT NOT NULL, observed_at TEXT NOT NULL,
    idempotency_key TEXT NOT NULL, symbol TEXT NOT NULL, asset_id TEXT NOT NULL, name TEXT,
    price_usd REAL, open_usd REAL, high_usd REAL, low_usd REAL, market_cap_usd REAL, volume_24h_usd REAL,
    ingested_at TEXT NOT NULL, run_id TEXT NOT NULL,
    PRIMARY KEY (source, source_id, observed_at)) WITHOUT ROWID
"""
SORT_INDEXES = {field: f"normalized_by_{field}" for field in SORTABLE_FIELDS}
"""One index per sort of GET /data: (field, id) in a rowid table, so the row id is the unique tiebreaker and an
entry is a value and an integer (the version 5 table's secondary indexes carried its whole text key: building the
four random-order ones took 5.9 s for 1M rows, 1.9 s as (field, id); maintaining them row by row, 30 s)."""


def sort_index_statement(field: str) -> str:
    return f"CREATE INDEX IF NOT EXISTS {SORT_INDEXES[field]} ON normalized ({field})"


_RECORD_INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS normalized_key ON normalized (source, source_id, observed_at)",
    "CREATE INDEX IF NOT EXISTS normalized_asset_source_time ON normalized (asset_id, source, observed_at)",
    *map(sort_index_statement, SORT_INDEXES),
)
RETENTION_INDEXES = (  # version 7: what `common.prune` looks for, without reading the batches' payloads
    "CREATE INDEX IF NOT EXISTS raw_batches_done ON raw_batches (created_at) WHERE status = 'done'",
    "CREATE INDEX IF NOT EXISTS quarantine_unresolved ON quarantine (batch_id) WHERE resolved_at IS NULL",
    "CREATE INDEX IF NOT EXISTS quarantine_resolved ON quarantine (resolved_at) WHERE resolved_at IS NOT NULL",
)
MIGRATIONS = {  # version -> statements that bring version - 1 up to it, in one transaction
    2: ("ALTER TABLE leases ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX IF NOT EXISTS runs_running ON runs (stage, source) WHERE status = 'running'"),
    3: (_NORMALIZED_TABLE.format(name="normalized_v3"),
        "INSERT INTO normalized_v3 SELECT source, sid, ts, etl_record_key(source, sid, ts), symbol, asset_id, name, "
        "price_usd, open_usd, high_usd, low_usd, market_cap_usd, volume_24h_usd, ingested_at, run_id FROM ("
        "SELECT *, etl_source_id(source, source_id, asset_id) AS sid, etl_observed_at(observed_at) AS ts "
        "FROM normalized ORDER BY ingested_at, run_id) WHERE true "
        "ON CONFLICT (source, source_id, observed_at) DO UPDATE SET price_usd = excluded.price_usd, "
        "open_usd = excluded.open_usd, high_usd = excluded.high_usd, low_usd = excluded.low_usd, "
        "market_cap_usd = excluded.market_cap_usd, volume_24h_usd = excluded.volume_24h_usd",
        "DROP TABLE normalized",
        "ALTER TABLE normalized_v3 RENAME TO normalized",
        "CREATE INDEX IF NOT EXISTS normalized_symbol_time ON normalized (symbol, observed_at)",
        # transform the CSV's batches once more: rows two coins with one ticker had collapsed into one come back
        "UPDATE raw_batches SET status = 'pending', version = version + 1 "
        "WHERE status = 'done' AND source IN (SELECT value FROM json_each(etl_csv_sources()))"),
    # run_counts and runs_latest are in SCHEMA (created empty on open); the counts of the runs already there:
    4: ("INSERT INTO run_counts (stage, source, status, count) SELECT stage, COALESCE(source, ''), status, COUNT(*) "
        "FROM runs WHERE true GROUP BY stage, COALESCE(source, ''), status "
        "ON CONFLICT (stage, source, status) DO UPDATE SET count = excluded.count",),
    # view=latest seeks (asset, source, newest time)
    5: ("CREATE INDEX IF NOT EXISTS normalized_asset_source_time ON normalized (asset_id, source, observed_at)",),
    # records in a rowid table: the row id is every sort's tiebreaker and the sort indexes stay narrow. Ids follow
    # the order records were first ingested in; the natural key stays unique (the upsert's conflict target)
    6: (_RECORDS_TABLE.format(name="normalized_v6"),
        f"INSERT INTO normalized_v6 ({_RECORD_COLUMNS}) SELECT {_RECORD_COLUMNS} FROM normalized "
        "ORDER BY ingested_at, source, source_id, observed_at",
        "DROP TABLE normalized",
        "ALTER TABLE normalized_v6 RENAME TO normalized",
        *_RECORD_INDEXES),
    # the space itself is given back by `SqliteStore.reclaim_space` (incremental vacuum; a store laid out before
    # this version is converted by the first prune, once the deletions left little to copy)
    7: RETENTION_INDEXES,
    # records per source, kept by every commit (record_counts is in SCHEMA, created empty on open): the counts of
    # the records already there. /stats, /metrics and the status page read them instead of counting an index
    8: ("INSERT INTO record_counts (source, count) SELECT source, COUNT(*) FROM normalized WHERE true GROUP BY source "
        "ON CONFLICT (source) DO UPDATE SET count = excluded.count",),
}


def _register_functions(conn: sqlite3.Connection) -> None:
    """The record rewrite rules of `common.store.migrations`, callable from the migrations' SQL."""
    conn.create_function("etl_observed_at", 1, canonical_observed_at, deterministic=True)
    conn.create_function("etl_source_id", 3, migrated_source_id, deterministic=True)
    conn.create_function("etl_record_key", 3, record_key, deterministic=True)
    conn.create_function("etl_csv_sources", 0, lambda: json.dumps(sorted(CSV_SOURCES)), deterministic=True)


def migrate(conn: sqlite3.Connection) -> int:
    """Create the schema or bring an older one up to SCHEMA_VERSION, one version per transaction; returns the
    version found. Concurrent openers serialize on the write lock and re-check the version inside it."""
    _register_functions(conn)
    try:  # the common case, a current store: a plain read, no write lock (every new connection passes here)
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        if row and row[0] >= SCHEMA_VERSION:
            return row[0]
    except sqlite3.OperationalError:  # no such table: a fresh or first-release store
        pass
    found = None
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            fresh = not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'leases'").fetchone()
            for statement in filter(str.strip, SCHEMA.split(";")):
                conn.execute(statement)
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else (SCHEMA_VERSION if fresh else 1)
            if fresh:
                conn.execute("ALTER TABLE leases ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0")
                for statement in (*MIGRATIONS[2][1:], *_RECORD_INDEXES, *RETENTION_INDEXES):
                    conn.execute(statement)
            found = version if found is None else found
            if version >= SCHEMA_VERSION:
                conn.execute("INSERT OR REPLACE INTO schema_version (id, version) VALUES (1, ?)", (version,))
                conn.execute("COMMIT")
                return found
            for statement in MIGRATIONS[version + 1]:
                conn.execute(statement)
            conn.execute("INSERT OR REPLACE INTO schema_version (id, version) VALUES (1, ?)", (version + 1,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
