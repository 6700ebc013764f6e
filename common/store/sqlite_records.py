"""SQLite adapter, normalized records: the transform's commit, keyset pages read from one index per sort, the
bulk load that builds those indexes after a large backlog, and the per-asset latest view."""

from __future__ import annotations

import sqlite3
from typing import Iterable, Sequence

from common.clock import iso_utc
from common.errors import InputError
from common.store import DATA_VERSION_KEY, FIRST_SEEN_FIELDS, NORMALIZED_FIELDS, DataQuery, Fence, RawBatch, Rows
from common.store.sqlite_base import SqliteBase
from common.store.sqlite_schema import SORT_INDEXES, sort_index_statement

BULK_MIN_ROWS = 20_000
BULK_SHARE = 0.25
"""A backlog of at least BULK_MIN_ROWS rows and BULK_SHARE of the records already stored is loaded with the sort
indexes dropped and built after it. Measured on 1M CSV rows: maintaining the six (field, id) indexes row by row
cost 22 s, building them after the load 3 s; a build costs about a tenth of the table's size in row-by-row
maintenance, so below a quarter of it the indexes stay (an hourly pass of sources A and C never drops them)."""
ANALYZE_MIN_ROWS = 1000
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


class SqliteRecords(SqliteBase):
    """Records, assets and the data version; quarantine rows arrive with the batch they came from."""

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
