"""MongoDB adapter: pymongo, selected by wiring when `MONGODB_URI` is set.

The client is created lazily, once per process (gunicorn imports modules before it forks, and pymongo clients are
not fork-safe), and indexes are created idempotently on first use. Free-form structures (checkpoints, batch
positions, headers, rejects, run documents) are stored as JSON strings, so keys from external payloads never
become `$`-prefixed or dotted field names.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from typing import Iterable, Sequence

from bson.errors import BSONError
from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument, UpdateOne
from pymongo.errors import DuplicateKeyError, PyMongoError

from common.clock import iso_utc, system_clock
from common.errors import StoreError
from common.store import FIRST_SEEN_FIELDS, NORMALIZED_FIELDS, DataQuery, Page, RawBatch, Run, Store

DEFAULT_DB_NAME = "etl_db"
_KEY_FIELDS = ("source", "source_id", "observed_at")
_REAL_FIELDS = frozenset({"price_usd", "open_usd", "high_usd", "low_usd", "market_cap_usd", "volume_24h_usd"})
_VALUE_FIELDS = tuple(
    f for f in NORMALIZED_FIELDS if f not in FIRST_SEEN_FIELDS and f not in _KEY_FIELDS and f != "idempotency_key"
)
_QUARANTINE_FIELDS = ("id", "source", "run_id", "batch_id", "row_number", "raw", "reason", "created_at",
                      "resolved_at", "resolved_by")
_INDEXES = (  # (collection, keys, unique); created idempotently on first use
    ("normalized", ("source", "source_id", "observed_at"), True),
    ("normalized", ("symbol", "observed_at"), False),
    ("normalized", ("observed_at",), False),
    ("raw_batches", ("status", "seq"), False),
    ("raw_batches", ("source", "status", "seq"), False),
    ("quarantine", ("source", "created_at"), False),
    ("runs", ("stage", "started_at"), False),
    ("runs", ("started_at",), False),
)


def _translated(method):
    """Map driver errors to `StoreError` at the port's boundary."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (PyMongoError, BSONError) as exc:
            raise StoreError(f"MongoDB {method.__name__} failed: {exc}", operation=method.__name__) from exc

    return wrapper


def _limited(cursor, limit: int, offset: int = 0) -> list[dict]:
    """LIMIT/OFFSET with SQL meaning: 0 returns nothing, a negative limit means no limit."""
    if limit == 0:
        return []
    cursor = cursor.skip(max(offset, 0))
    return list(cursor.limit(limit) if limit > 0 else cursor)


class MongoStore(Store):
    """Store on one MongoDB database; safe to share between processes and threads."""

    def __init__(self, client_or_uri: MongoClient | str, db_name: str | None = None, clock=system_clock) -> None:
        self._uri = client_or_uri if isinstance(client_or_uri, str) else None
        self._client = None if self._uri else client_or_uri
        self.db_name = db_name
        self.clock = clock
        self._lock = threading.Lock()
        self._db = None
        self._pid: int | None = None

    @classmethod
    def from_uri(cls, uri: str, clock=system_clock) -> MongoStore:
        """Store on the database named in the URI's path (`etl_db` when it names none); connects on first use."""
        return cls(uri, None, clock)

    # --- connection handling ------------------------------------------------------------------------
    def _database(self):
        if self._db is not None and self._pid == os.getpid():
            return self._db
        with self._lock:
            if self._db is None or self._pid != os.getpid():
                if self._uri and (self._client is None or self._pid != os.getpid()):
                    self._client = MongoClient(self._uri)
                    self._pid, self._db = os.getpid(), None
                client = self._client
                db = client.get_database(self.db_name) if self.db_name else client.get_default_database(DEFAULT_DB_NAME)
                for collection, keys, unique in _INDEXES:
                    db[collection].create_index([(k, ASCENDING) for k in keys], **({"unique": True} if unique else {}))
                self._db, self._pid = db, os.getpid()
        return self._db

    @_translated
    def ping(self) -> None:
        self._database().command("ping")

    def close(self) -> None:
        with self._lock:
            if self._uri and self._client is not None and self._pid == os.getpid():
                self._client.close()
            if self._uri:
                self._client = None
            self._db = None

    # --- leases ----------------------------------------------------------------------------------------
    @_translated
    def acquire_lease(self, name: str, owner: str, ttl_s: float, now: float) -> bool:
        try:
            self._database().leases.find_one_and_update(
                {"_id": name, "$or": [{"expires_at": {"$lte": now}}, {"owner": owner}]},
                {"$set": {"owner": owner, "expires_at": now + ttl_s}},
                upsert=True,
            )
        except DuplicateKeyError:  # the lease exists, unexpired, held by someone else
            return False
        return True

    @_translated
    def renew_lease(self, name: str, owner: str, ttl_s: float, now: float) -> bool:
        result = self._database().leases.update_one(
            {"_id": name, "owner": owner}, {"$set": {"expires_at": now + ttl_s}}
        )
        return result.matched_count == 1

    @_translated
    def release_lease(self, name: str, owner: str) -> None:
        self._database().leases.delete_one({"_id": name, "owner": owner})

    # --- checkpoints ------------------------------------------------------------------------------------
    @_translated
    def get_checkpoint(self, name: str) -> dict | None:
        doc = self._database().checkpoints.find_one({"_id": name})
        return json.loads(doc["value"]) if doc else None

    @_translated
    def put_checkpoint(self, name: str, value: dict) -> None:
        self._database().checkpoints.update_one(
            {"_id": name}, {"$set": {"value": json.dumps(value), "updated_at": iso_utc(self.clock())}}, upsert=True
        )

    # --- shared state ---------------------------------------------------------------------------------------
    @_translated
    def get_state(self, key: str) -> tuple[dict | None, int]:
        doc = self._database().shared_state.find_one({"_id": key})
        return (json.loads(doc["value"]), doc["version"]) if doc else (None, 0)

    @_translated
    def cas_state(self, key: str, value: dict, expected_version: int) -> bool:
        fields = {"value": json.dumps(value), "updated_at": iso_utc(self.clock())}
        states = self._database().shared_state
        if expected_version == 0:
            try:
                states.insert_one({"_id": key, "version": 1, **fields})
                return True
            except DuplicateKeyError:
                return False
        result = states.update_one({"_id": key, "version": expected_version},
                                   {"$set": fields, "$inc": {"version": 1}})
        return result.matched_count == 1

    # --- raw batches ----------------------------------------------------------------------------------------
    @_translated
    def put_raw_batch(self, batch: RawBatch, checkpoint: tuple[str, dict] | None = None) -> None:
        db = self._database()
        seq = db.counters.find_one_and_update(
            {"_id": "raw_batches"}, {"$inc": {"seq": 1}}, upsert=True, return_document=ReturnDocument.AFTER
        )["seq"]
        fields = {
            "run_id": batch.run_id, "format": batch.format, "row_count": batch.row_count,
            "first_row": batch.first_row, "header": json.dumps(batch.header), "rejects": json.dumps(batch.rejects),
            "position": json.dumps(batch.position),
        }
        literal = {name: {"$literal": value} for name, value in fields.items()}
        # One pipeline update: compare the stored content server-side (payload sent once, as `_new`), bump the
        # version and reset the status only when payload, format, header or rejects changed; `seq` and `created_at` are set on first insert only.
        db.raw_batches.update_one(
            {"_id": batch.batch_id},
            [
                {"$set": {"_new": {"$literal": batch.payload}}},
                {"$set": {
                    "_changed": {"$or": [
                        {"$ne": ["$payload", "$_new"]},
                        *({"$ne": [f"${name}", literal[name]]} for name in ("format", "header", "rejects")),
                    ]},
                    "payload": "$_new",
                    "source": {"$ifNull": ["$source", {"$literal": batch.source}]},
                    "seq": {"$ifNull": ["$seq", seq]},
                    "created_at": {"$ifNull": ["$created_at", iso_utc(self.clock())]},
                    **literal,
                }},
                {"$set": {
                    "version": {"$cond": ["$_changed", {"$add": [{"$ifNull": ["$version", 0]}, 1]}, "$version"]},
                    "status": {"$cond": ["$_changed", "pending", "$status"]},
                }},
                {"$unset": ["_new", "_changed"]},
            ],
            upsert=True,
        )
        if checkpoint is not None:  # only after the batch write is acknowledged
            self.put_checkpoint(*checkpoint)

    @_translated
    def pending_raw_batches(self, limit: int, source: str | None = None) -> list[RawBatch]:
        where = {"status": "pending", **({"source": source} if source else {})}
        docs = _limited(self._database().raw_batches.find(where).sort("seq", ASCENDING), limit)
        return [_batch(d) for d in docs]

    @_translated
    def get_raw_batch(self, batch_id: str) -> RawBatch | None:
        doc = self._database().raw_batches.find_one({"_id": batch_id})
        return _batch(doc) if doc else None

    @_translated
    def requeue_raw_batch(self, batch_id: str) -> bool:
        result = self._database().raw_batches.update_one(
            {"_id": batch_id}, {"$set": {"status": "pending"}, "$inc": {"version": 1}})
        return result.matched_count == 1

    @_translated
    def count_raw_batches(self, source: str | None = None, pending_only: bool = False) -> int:
        where = {**({"source": source} if source else {}), **({"status": "pending"} if pending_only else {})}
        return self._database().raw_batches.count_documents(where)

    # --- transform output ---------------------------------------------------------------------------------------
    @_translated
    def commit_transformed(
        self, batch: RawBatch | None, records: Sequence[tuple], quarantine: Sequence[dict], assets: Iterable[dict]
    ) -> None:
        db, now = self._database(), iso_utc(self.clock())
        record_ops = [
            UpdateOne(
                {name: doc[name] for name in _KEY_FIELDS},
                {
                    "$set": {name: doc[name] for name in _VALUE_FIELDS},
                    "$setOnInsert": {"_id": doc["idempotency_key"], **{f: doc[f] for f in FIRST_SEEN_FIELDS}},
                },
                upsert=True,
            )
            for doc in _merged_records(records)
        ]
        asset_ops = [
            UpdateOne(
                {"_id": a["asset_id"]},
                {
                    "$setOnInsert": {"symbol": a["symbol"], "name": a["name"], "first_seen_at": now},
                    "$set": {"updated_at": now},
                    "$addToSet": {"sources": a["source"]},
                },
                upsert=True,
            )
            for a in assets
        ]
        quarantine_ops = [
            UpdateOne(
                {"_id": q["id"]},
                {"$setOnInsert": {
                    "source": q["source"], "run_id": q["run_id"], "batch_id": q.get("batch_id"),
                    "row_number": q.get("row_number"), "raw": q.get("raw"), "reason": q["reason"], "created_at": now,
                }},
                upsert=True,
            )
            for q in quarantine
        ]
        for collection, ops in (("normalized", record_ops), ("assets", asset_ops), ("quarantine", quarantine_ops)):
            if ops:
                db[collection].bulk_write(ops, ordered=False)
        if batch is not None:
            db.raw_batches.update_one({"_id": batch.batch_id, "version": batch.version}, {"$set": {"status": "done"}})

    # --- reads ----------------------------------------------------------------------------------------------------
    @_translated
    def query_normalized(self, query: DataQuery) -> Page:
        where = {
            name: value
            for name, value in (("symbol", query.symbol), ("source", query.source), ("asset_id", query.asset_id))
            if value is not None
        }
        direction = DESCENDING if query.descending else ASCENDING
        order = [(name, direction) for name in dict.fromkeys((query.sort_by, *_KEY_FIELDS))]
        collection = self._database().normalized
        docs = _limited(collection.find(where).sort(order), query.limit, (query.page - 1) * query.limit)
        items = [{f: d["_id"] if f == "idempotency_key" else d.get(f) for f in NORMALIZED_FIELDS} for d in docs]
        return Page(items=items, total=collection.count_documents(where))

    @_translated
    def count_normalized(self, source: str | None = None) -> int:
        return self._database().normalized.count_documents({"source": source} if source else {})

    @_translated
    def list_assets(self) -> list[dict]:
        return [
            {"asset_id": d["_id"], "symbol": d["symbol"], "name": d["name"], "first_seen_at": d["first_seen_at"],
             "updated_at": d["updated_at"], "sources": sorted(d.get("sources", []))}
            for d in self._database().assets.find().sort("_id", ASCENDING)
        ]

    @staticmethod
    def _quarantine_filter(source: str | None, unresolved_only: bool) -> dict:
        return {**({"source": source} if source else {}), **({"resolved_at": None} if unresolved_only else {})}

    @_translated
    def list_quarantine(self, source: str | None = None, limit: int = 100, offset: int = 0,
                        unresolved_only: bool = False) -> list[dict]:
        cursor = self._database().quarantine.find(self._quarantine_filter(source, unresolved_only)).sort(
            [("created_at", ASCENDING), ("batch_id", ASCENDING), ("row_number", ASCENDING)]
        )
        return [
            {"id": d["_id"], **{name: d.get(name) for name in _QUARANTINE_FIELDS[1:]}}
            for d in _limited(cursor, limit, offset)
        ]

    @_translated
    def count_quarantine(self, source: str | None = None, unresolved_only: bool = False) -> int:
        return self._database().quarantine.count_documents(self._quarantine_filter(source, unresolved_only))

    @_translated
    def resolve_quarantine(self, ids: Sequence[str], run_id: str) -> int:
        if not ids:
            return 0
        result = self._database().quarantine.update_many(
            {"_id": {"$in": list(ids)}, "resolved_at": None},
            {"$set": {"resolved_at": iso_utc(self.clock()), "resolved_by": run_id}},
        )
        return result.modified_count

    # --- run ledger ------------------------------------------------------------------------------------------------
    @_translated
    def save_run(self, run: Run) -> None:
        self._database().runs.replace_one(
            {"_id": run.run_id},
            {"stage": run.stage, "source": run.source, "status": run.status, "started_at": run.started_at,
             "finished_at": run.finished_at, "doc": json.dumps(run.to_dict())},
            upsert=True,
        )

    @_translated
    def get_run(self, run_id: str) -> Run | None:
        doc = self._database().runs.find_one({"_id": run_id})
        return Run(**json.loads(doc["doc"])) if doc else None

    @_translated
    def list_runs(self, stage: str | None = None, source: str | None = None, limit: int = 50) -> list[Run]:
        where = {name: value for name, value in (("stage", stage), ("source", source)) if value is not None}
        return self._runs(where, limit)

    @_translated
    def last_run(self, statuses: Sequence[str], stage: str | None = None) -> Run | None:
        where = {"status": {"$in": list(statuses)}, **({"stage": stage} if stage is not None else {})}
        runs = self._runs(where, 1)
        return runs[0] if runs else None

    def _runs(self, where: dict, limit: int) -> list[Run]:
        cursor = self._database().runs.find(where, {"doc": 1}).sort([("started_at", DESCENDING), ("_id", DESCENDING)])
        return [Run(**json.loads(d["doc"])) for d in _limited(cursor, limit)]


def _merged_records(records: Sequence[tuple]) -> list[dict]:
    """One document per (source, source_id, observed_at), as SQLite's row-by-row upsert would leave it:
    values from the last occurrence, first-seen fields from the first."""
    merged: dict[tuple, dict] = {}
    for row in records:
        doc = dict(zip(NORMALIZED_FIELDS, row, strict=True))
        doc.update({name: float(doc[name]) for name in _REAL_FIELDS if isinstance(doc[name], int)})  # as SQLite REAL
        key = tuple(doc[name] for name in _KEY_FIELDS)
        first = merged.get(key)
        if first is not None:
            doc.update({name: first[name] for name in FIRST_SEEN_FIELDS}, idempotency_key=first["idempotency_key"])
        merged[key] = doc
    return list(merged.values())


def _batch(doc: dict) -> RawBatch:
    return RawBatch(
        batch_id=doc["_id"], source=doc["source"], run_id=doc["run_id"], format=doc["format"], payload=doc["payload"],
        row_count=doc["row_count"], first_row=doc["first_row"], header=json.loads(doc["header"]),
        rejects=json.loads(doc["rejects"]), position=json.loads(doc["position"]), version=doc["version"],
        created_at=doc["created_at"],
    )
