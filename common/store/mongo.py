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
import re
from typing import Iterable, Sequence

from bson.errors import BSONError
from pymongo import ASCENDING, DESCENDING, DeleteOne, MongoClient, ReturnDocument, UpdateOne, uri_parser
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from common.clock import iso_utc, system_clock
from common.errors import ConfigError, InputError, LeaseLost, StoreError
from common.store import (
    DATA_VERSION_KEY, FIRST_SEEN_FIELDS, NORMALIZED_FIELDS, SCHEMA_VERSION, DataQuery, Fence, RawBatch, Rows, Run,
    Store,
)
from common.store.mongo_schema import KEY_FIELDS as _KEY_FIELDS
from common.store.mongo_schema import VALUE_FIELDS as _VALUE_FIELDS
from common.store.mongo_schema import ensure_indexes, migrate, run_count_id

DEFAULT_DB_NAME = "etl_db"
_REAL_FIELDS = frozenset({"price_usd", "open_usd", "high_usd", "low_usd", "market_cap_usd", "volume_24h_usd"})
_QUARANTINE_FIELDS = ("id", "source", "run_id", "batch_id", "row_number", "raw", "reason", "created_at",
                      "resolved_at", "resolved_by")
_CREDENTIALS = re.compile(r"//[^/@\s]*@")


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

    def __init__(self, client_or_uri: MongoClient | str, db_name: str | None = None, clock=system_clock, *,
                 timeout_s: float = 3.0, transactions: bool | None = None) -> None:
        """`transactions`: None detects (replica set or sharded cluster: yes; standalone: no), True/False forces."""
        self._uri = client_or_uri if isinstance(client_or_uri, str) else None
        self._client = None if self._uri else client_or_uri
        self.db_name = db_name
        self.clock = clock
        self.timeout_ms = max(50, int(timeout_s * 1000))
        self._transactions = transactions
        self._lock = threading.Lock()
        self._db = None
        self._pid: int | None = None
        self.migrated_from = SCHEMA_VERSION

    @classmethod
    def from_uri(cls, uri: str, clock=system_clock, timeout_s: float = 3.0) -> MongoStore:
        """Store on the database named in the URI's path (`etl_db` when it names none); connects on first use.
        A malformed URI is a ConfigError now, not a failure on the first request."""
        try:
            uri_parser.parse_uri(uri)
        except (PyMongoError, ValueError) as exc:
            reason = _CREDENTIALS.sub("//***@", str(exc).replace(uri, "<MONGODB_URI>"))[:200]
            raise ConfigError(f"MONGODB_URI is not a valid MongoDB connection string ({reason}); expected "
                              "mongodb://[user:password@]host[:port]/database or mongodb+srv://...") from None
        return cls(uri, None, clock, timeout_s=timeout_s)

    # --- connection handling ------------------------------------------------------------------------
    def _database(self):
        if self._db is not None and self._pid == os.getpid():
            return self._db
        with self._lock:
            if self._db is None or self._pid != os.getpid():
                if self._uri and (self._client is None or self._pid != os.getpid()):
                    # bounded: with the server down, a request answers 503 in seconds, not after 30 s twice
                    self._client = MongoClient(self._uri, serverSelectionTimeoutMS=self.timeout_ms,
                                               connectTimeoutMS=self.timeout_ms)
                    self._pid, self._db = os.getpid(), None
                client = self._client
                db = client.get_database(self.db_name) if self.db_name else client.get_default_database(DEFAULT_DB_NAME)
                fresh = not {"normalized", "runs", "leases"} & set(db.list_collection_names())
                ensure_indexes(db)
                self.migrated_from = migrate(db, fresh)
                if self._transactions is None:
                    self._transactions = _supports_transactions(db)
                self._db, self._pid = db, os.getpid()
        return self._db

    @_translated
    def migrate(self) -> tuple[int, int]:
        db = self._database()
        found, self.migrated_from = self.migrated_from, SCHEMA_VERSION
        if found == SCHEMA_VERSION:
            found = migrate(db, fresh=False)
        return found, SCHEMA_VERSION

    # --- fencing ----------------------------------------------------------------------------------------
    def _fenced(self, fence: Fence | None, body):
        """Run `body(db, session)` as one fenced write. With transactions, the fence check (a conditional write
        to the lease, so a concurrent takeover conflicts) and every write commit or abort together. On a
        standalone server, the fence is checked first and the writes that matter are conditional on the epoch
        (`fence_epoch` may only grow), so a stale writer cannot overwrite what a newer one wrote."""
        db = self._database()
        if fence is None:
            return body(db, None)
        if not self._transactions:
            self._check_fence(db, fence, None)
            return body(db, None)

        def transaction(session):
            self._check_fence(db, fence, session)
            return body(db, session)

        with db.client.start_session() as session:
            return session.with_transaction(transaction)

    def _check_fence(self, db, fence: Fence, session) -> None:
        where = {"_id": fence.name, "owner": fence.owner, "epoch": fence.epoch}
        if session is not None:
            held = db.leases.update_one(where, {"$set": {"fenced_write_at": self.clock()}}, session=session).matched_count
        else:
            held = db.leases.count_documents(where, limit=1)
        if not held:
            raise LeaseLost(f"lease {fence.name} (epoch {fence.epoch}) was taken over; write refused", lease=fence.name)

    def _superseded(self, db, fence: Fence, error: BulkWriteError | DuplicateKeyError) -> None:
        """Conditional writes refused (a newer epoch wrote these documents): LeaseLost unless we still hold the
        lease (then a newer writer of another stage, e.g. a replay, won, which is its right)."""
        codes = {e.get("code") for e in error.details.get("writeErrors", [])} if isinstance(error, BulkWriteError) \
            else {11000}
        if codes - {11000}:
            raise error
        self._check_fence(db, fence, None)

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
    def acquire_lease(self, name: str, owner: str, ttl_s: float, now: float) -> Fence | None:
        db = self._database()
        epoch = db.counters.find_one_and_update(
            {"_id": "lease_epoch"}, {"$inc": {"seq": 1}}, upsert=True, return_document=ReturnDocument.AFTER)["seq"]
        try:
            doc = db.leases.find_one_and_update(
                {"_id": name, "$or": [{"expires_at": {"$lte": now}}, {"owner": owner}]},
                [{"$set": {
                    "epoch": {"$cond": [{"$eq": ["$owner", owner]}, {"$ifNull": ["$epoch", epoch]}, epoch]},
                    "owner": owner, "expires_at": now + ttl_s,
                }}],
                upsert=True, return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:  # the lease exists, unexpired, held by someone else
            return None
        return Fence(name, owner, doc["epoch"])

    @_translated
    def renew_lease(self, fence: Fence, ttl_s: float, now: float) -> bool:
        result = self._database().leases.update_one(
            {"_id": fence.name, "owner": fence.owner, "epoch": fence.epoch}, {"$set": {"expires_at": now + ttl_s}}
        )
        return result.matched_count == 1

    @_translated
    def release_lease(self, fence: Fence) -> None:
        self._database().leases.update_one(
            {"_id": fence.name, "owner": fence.owner, "epoch": fence.epoch}, {"$set": {"expires_at": 0}})

    # --- checkpoints ------------------------------------------------------------------------------------
    @_translated
    def get_checkpoint(self, name: str) -> dict | None:
        doc = self._database().checkpoints.find_one({"_id": name})
        return json.loads(doc["value"]) if doc else None

    @_translated
    def put_checkpoint(self, name: str, value: dict, fence: Fence | None = None) -> None:
        self._fenced(fence, lambda db, session: self._put_checkpoint(db, session, name, value, fence))

    def _put_checkpoint(self, db, session, name: str, value: dict, fence: Fence | None) -> None:
        where, fields = {"_id": name}, {"value": json.dumps(value), "updated_at": iso_utc(self.clock())}
        if fence is not None:
            where.update(_not_newer_than(fence))
            fields["fence_epoch"] = fence.epoch
        try:
            db.checkpoints.update_one(where, {"$set": fields}, upsert=True, session=session)
        except DuplicateKeyError as exc:
            self._superseded(db, fence, exc)

    # --- shared state ---------------------------------------------------------------------------------------
    @_translated
    def get_state(self, key: str) -> tuple[dict | None, int]:
        doc = self._database().shared_state.find_one({"_id": key})
        return (json.loads(doc["value"]), doc["version"]) if doc else (None, 0)

    @_translated
    def cas_state(self, key: str, value: dict, expected_version: int, fence: Fence | None = None) -> bool:
        fields = {"value": json.dumps(value), "updated_at": iso_utc(self.clock())}

        def write(db, session) -> bool:
            if expected_version == 0:
                try:
                    db.shared_state.insert_one({"_id": key, "version": 1, **fields}, session=session)
                    return True
                except DuplicateKeyError:
                    return False
            result = db.shared_state.update_one({"_id": key, "version": expected_version},
                                                {"$set": fields, "$inc": {"version": 1}}, session=session)
            return result.matched_count == 1

        return self._fenced(fence, write)

    # --- raw batches ----------------------------------------------------------------------------------------
    @_translated
    def put_raw_batch(self, batch: RawBatch, checkpoint: tuple[str, dict] | None = None,
                      fence: Fence | None = None) -> None:
        seq = self._database().counters.find_one_and_update(
            {"_id": "raw_batches"}, {"$inc": {"seq": 1}}, upsert=True, return_document=ReturnDocument.AFTER
        )["seq"]
        fields = {
            "run_id": batch.run_id, "format": batch.format, "row_count": batch.row_count,
            "first_row": batch.first_row, "header": json.dumps(batch.header), "rejects": json.dumps(batch.rejects),
            "position": json.dumps(batch.position),
        }
        if fence is not None:
            fields["fence_epoch"] = fence.epoch
        literal = {name: {"$literal": value} for name, value in fields.items()}

        def write(db, session) -> None:
            self._put_batch(db, session, batch, seq, literal, fence)
            if checkpoint is not None:  # only after the batch write is acknowledged (or in its transaction)
                self._put_checkpoint(db, session, *checkpoint, fence)

        self._fenced(fence, write)

    def _put_batch(self, db, session, batch: RawBatch, seq: int, literal: dict, fence: Fence | None) -> None:
        # One pipeline update: compare the stored content server-side (payload sent once, as `_new`), bump the
        # version and reset the status only when payload, format, header or rejects changed; `created_at` is set on
        # first insert only.
        try:
            db.raw_batches.update_one(
                {"_id": batch.batch_id, **(_not_newer_than(fence) if fence else {})},
                [
                    {"$set": {"_new": {"$literal": batch.payload}}},
                    {"$set": {
                        "_changed": {"$or": [
                            {"$ne": ["$payload", "$_new"]},
                            *({"$ne": [f"${name}", literal[name]]} for name in ("format", "header", "rejects")),
                        ]},
                        "payload": "$_new",
                        "source": {"$ifNull": ["$source", {"$literal": batch.source}]},
                        "created_at": {"$ifNull": ["$created_at", iso_utc(self.clock())]},
                        **literal,
                    }},
                    {"$set": {
                        "version": {"$cond": ["$_changed", {"$add": [{"$ifNull": ["$version", 0]}, 1]}, "$version"]},
                        "status": {"$cond": ["$_changed", "pending", "$status"]},
                        # a rewritten batch goes to the back of the queue: after any older pending copy of its rows
                        "seq": {"$cond": ["$_changed", seq, "$seq"]},
                    }},
                    {"$unset": ["_new", "_changed"]},
                ],
                upsert=True, session=session,
            )
        except DuplicateKeyError as exc:
            self._superseded(db, fence, exc)

    @_translated
    def prune_raw_batches(self, before: str, limit: int, fence: Fence | None = None) -> int:
        """Each delete is conditional on the version seen (and `done`): a batch rewritten since is kept, and so
        are its new quarantine entries' batches (entries are written before the batch is marked done)."""
        db, chosen = self._database(), []
        old = db.raw_batches.find({"status": "done", "created_at": {"$lt": before}}, {"version": 1}) \
            .sort("created_at", ASCENDING)
        for page in _chunks(old, max(limit, 100)):
            held = set(db.quarantine.distinct("batch_id", {"batch_id": {"$in": [d["_id"] for d in page]},
                                                           "resolved_at": None}))
            chosen += [d for d in page if d["_id"] not in held][:limit - len(chosen)]
            if len(chosen) >= limit:
                break
        if not chosen:
            return 0
        deletes = [DeleteOne({"_id": d["_id"], "version": d["version"], "status": "done"}) for d in chosen]
        return self._fenced(fence, lambda db, session: db.raw_batches.bulk_write(
            deletes, ordered=False, session=session).deleted_count)

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
        self, batch: RawBatch | None, records: Sequence[tuple], quarantine: Sequence[dict], assets: Iterable[dict],
        fence: Fence | None = None, resolves: Sequence[str] = (), resolved_by: str | None = None,
    ) -> None:
        now = iso_utc(self.clock())
        newer = _not_newer_than(fence) if fence else {}
        record_ops = [
            UpdateOne(
                {**{name: doc[name] for name in _KEY_FIELDS}, **newer},
                {
                    "$set": {**{name: doc[name] for name in _VALUE_FIELDS},
                             **({"fence_epoch": fence.epoch} if fence else {})},
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

        def write(db, session) -> None:
            for collection, ops in (("normalized", record_ops), ("assets", asset_ops), ("quarantine", quarantine_ops)):
                if ops:
                    try:
                        db[collection].bulk_write(ops, ordered=False, session=session)
                    except BulkWriteError as exc:
                        if fence is None or collection != "normalized":
                            raise
                        self._superseded(db, fence, exc)
            if resolves:
                db.quarantine.update_many({"_id": {"$in": list(resolves)}, "resolved_at": None},
                                          {"$set": {"resolved_at": now, "resolved_by": resolved_by}}, session=session)
            if batch is not None:
                db.raw_batches.update_one({"_id": batch.batch_id, "version": batch.version},
                                          {"$set": {"status": "done"}}, session=session)
            db.shared_state.update_one({"_id": DATA_VERSION_KEY},
                                       {"$inc": {"version": 1}, "$set": {"updated_at": now},
                                        "$setOnInsert": {"value": "{}"}}, upsert=True, session=session)

        self._fenced(fence, write)

    # --- reads ----------------------------------------------------------------------------------------------------
    @_translated
    def read_page(self, query: DataQuery) -> Rows:
        where = _data_filter(query)
        direction = DESCENDING if query.descending else ASCENDING
        order = [(query.sort_by, direction), ("_id", direction)]
        collection, docs, wanted = self._database().normalized, [], query.limit + 1  # one more: a next page?
        for segment in _keyset_segments(query):
            docs += _limited(collection.find({"$and": [where, segment]} if segment else where).sort(order),
                             wanted - len(docs), (query.page - 1) * query.limit)
            if len(docs) >= wanted:
                break
        items = [_item(d) for d in docs[:query.limit]]
        last = docs[query.limit - 1] if len(docs) > query.limit else None
        return Rows(items=items, after=(last.get(query.sort_by), last["_id"]) if last else None)

    @_translated
    def count_matching(self, query: DataQuery) -> int:
        return self._database().normalized.count_documents(_data_filter(query))

    def data_version(self) -> int:
        return self.get_state(DATA_VERSION_KEY)[1]

    @staticmethod
    def _asset_filter(query: DataQuery) -> dict:
        symbols = query.wanted_symbols()
        return {**({"symbol": {"$in": list(symbols)}} if symbols else {}),
                **({"_id": query.asset_id} if query.asset_id else {}),
                **({"sources": query.source} if query.source else {})}

    @_translated
    def count_assets(self, query: DataQuery) -> int:
        return self._database().assets.count_documents(self._asset_filter(query))

    @_translated
    def latest_by_source(self, query: DataQuery) -> list[dict]:
        db = self._database()
        assets = _limited(db.assets.find(self._asset_filter(query)).sort("_id", ASCENDING), query.limit,
                          (query.page - 1) * query.limit)
        items = []
        for doc in assets:  # bounded: one index seek per (asset, source) on (asset_id, source, observed_at)
            for source in sorted(doc.get("sources", [])):
                if query.source and source != query.source:
                    continue
                newest = _limited(db.normalized.find({"asset_id": doc["_id"], "source": source})
                                  .sort("observed_at", DESCENDING), 1)  # the index order: no in-memory sort
                items += [_item(d) for d in newest]
        return items

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
    def resolve_quarantine(self, ids: Sequence[str], run_id: str, fence: Fence | None = None) -> int:
        if not ids:
            return 0
        return self._fenced(fence, lambda db, session: db.quarantine.update_many(
            {"_id": {"$in": list(ids)}, "resolved_at": None},
            {"$set": {"resolved_at": iso_utc(self.clock()), "resolved_by": run_id}}, session=session,
        ).modified_count)

    @_translated
    def prune_quarantine(self, before: str, limit: int, fence: Fence | None = None) -> int:
        resolved = {"resolved_at": {"$ne": None, "$lt": before}}
        ids = [d["_id"] for d in self._database().quarantine.find(resolved, {"_id": 1})
               .sort("resolved_at", ASCENDING).limit(limit)]
        if not ids:
            return 0
        return self._fenced(fence, lambda db, session: db.quarantine.delete_many(
            {"_id": {"$in": ids}, **resolved}, session=session).deleted_count)

    # --- run ledger ------------------------------------------------------------------------------------------------
    @_translated
    def save_run(self, run: Run, fence: Fence | None = None) -> bool:
        fields = {"stage": run.stage, "source": run.source, "status": run.status, "started_at": run.started_at,
                  "finished_at": run.finished_at, "doc": json.dumps(run.to_dict())}

        def write(db, session) -> bool:
            try:  # a final status is written once: only a `running` entry (or none) may be replaced
                result = db.runs.replace_one({"_id": run.run_id, "status": "running"}, fields, upsert=True,
                                             session=session)
            except DuplicateKeyError:
                return False
            if result.upserted_id is None and run.status != "running":  # replaced: it was running
                self._count_run(db, session, run, "running", -1)
            if result.upserted_id is not None or run.status != "running":
                self._count_run(db, session, run, run.status, 1)
            return True

        return self._fenced(fence, write)

    @staticmethod
    def _count_run(db, session, run: Run, status: str, change: int) -> None:
        db.run_counts.update_one(
            {"_id": run_count_id(run.stage, run.source, status)},
            {"$inc": {"count": change}, "$setOnInsert": {"stage": run.stage, "source": run.source, "status": status}},
            upsert=True, session=session)

    @_translated
    def get_run(self, run_id: str) -> Run | None:
        doc = self._database().runs.find_one({"_id": run_id})
        return Run(**json.loads(doc["doc"])) if doc else None

    @_translated
    def list_runs(self, stage: str | None = None, source: str | None = None, limit: int = 50,
                  status: str | None = None, before: tuple[str, str] | None = None) -> list[Run]:
        where = {name: value for name, value in (("stage", stage), ("source", source), ("status", status))
                 if value is not None}
        if before:
            where["$or"] = [{"started_at": {"$lt": before[0]}}, {"started_at": before[0], "_id": {"$lt": before[1]}}]
        return self._runs(where, limit)

    @_translated
    def count_runs(self, since: str | None = None) -> dict[tuple[str, str | None, str], int]:
        if not since:
            return {(d["stage"], d.get("source"), d["status"]): d["count"]
                    for d in self._database().run_counts.find({"count": {"$gt": 0}})}
        pipeline = [*([{"$match": {"started_at": {"$gte": since}}}] if since else []),
                    {"$group": {"_id": {"stage": "$stage", "source": "$source", "status": "$status"},
                                "count": {"$sum": 1}}}]
        return {(d["_id"]["stage"], d["_id"].get("source"), d["_id"]["status"]): d["count"]
                for d in self._database().runs.aggregate(pipeline)}

    @_translated
    def latest_runs(self, statuses: Sequence[str]) -> list[Run]:
        """One index seek per (stage, source) and status: the kinds of run come from run_counts."""
        db, newest = self._database(), []
        kinds = {(d["stage"], d.get("source")) for d in db.run_counts.find({"count": {"$gt": 0}})}
        for stage, source in sorted(kinds, key=str):
            found = [doc for status in statuses for doc in db.runs.find(
                {"stage": stage, "source": source, "status": status}, {"doc": 1, "started_at": 1})
                .sort([("started_at", DESCENDING), ("_id", DESCENDING)]).limit(1)]
            if found:
                newest.append(Run(**json.loads(max(found, key=lambda d: (d["started_at"], d["_id"]))["doc"])))
        return newest

    @_translated
    def prune_runs(self, before: str, limit: int, fence: Fence | None = None) -> int:
        db = self._database()
        newest = {doc["_id"] for kind in db.run_counts.find({"count": {"$gt": 0}}) for doc in db.runs.find(
            {"stage": kind["stage"], "source": kind.get("source"), "status": kind["status"]}, {"_id": 1})
            .sort([("started_at", DESCENDING), ("_id", DESCENDING)]).limit(1)}
        finished_before = {"started_at": {"$lt": before}, "status": {"$ne": "running"}}
        ids = [d["_id"] for d in db.runs.find({**finished_before, "_id": {"$nin": sorted(newest)}}, {"_id": 1})
               .sort("started_at", ASCENDING).limit(limit)]
        if not ids:
            return 0
        return self._fenced(fence, lambda db, session: db.runs.delete_many(
            {"_id": {"$in": ids}, **finished_before}, session=session).deleted_count)

    @_translated
    def running_runs(self, stage: str, source: str | None) -> list[Run]:
        cursor = self._database().runs.find({"status": "running", "stage": stage, "source": source}, {"doc": 1})
        runs = [Run(**json.loads(d["doc"])) for d in cursor]
        return sorted(runs, key=lambda r: (r.started_at, r.run_id))

    @_translated
    def last_run(self, statuses: Sequence[str], stage: str | None = None) -> Run | None:
        where = {"status": {"$in": list(statuses)}, **({"stage": stage} if stage is not None else {})}
        runs = self._runs(where, 1)
        return runs[0] if runs else None

    def _runs(self, where: dict, limit: int) -> list[Run]:
        cursor = self._database().runs.find(where, {"doc": 1}).sort([("started_at", DESCENDING), ("_id", DESCENDING)])
        return [Run(**json.loads(d["doc"])) for d in _limited(cursor, limit)]


def _chunks(cursor, size: int):
    """A cursor's documents, `size` at a time."""
    page = []
    for doc in cursor:
        page.append(doc)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page


def _not_newer_than(fence: Fence) -> dict:
    """Filter: documents no newer writer has touched (their `fence_epoch` is ours or older, or absent)."""
    return {"$or": [{"fence_epoch": {"$lte": fence.epoch}}, {"fence_epoch": {"$exists": False}}]}


def _supports_transactions(db) -> bool:
    """Multi-document transactions need a replica set or a sharded cluster; a standalone server has neither."""
    try:
        hello = db.command("hello")
    except (PyMongoError, NotImplementedError):
        return False
    return "setName" in hello or hello.get("msg") == "isdbgrid"


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


def _item(doc: dict) -> dict:
    return {f: doc["_id"] if f == "idempotency_key" else doc.get(f) for f in NORMALIZED_FIELDS}


def _data_filter(query: DataQuery) -> dict:
    symbols = query.wanted_symbols()
    where: dict = {name: value for name, value in (("source", query.source), ("asset_id", query.asset_id))
                   if value is not None}
    if symbols:
        where["symbol"] = {"$in": list(symbols)}
    window = {**({"$gte": query.from_at} if query.from_at else {}), **({"$lt": query.to_at} if query.to_at else {})}
    if window:
        where["observed_at"] = window
    return where


def _keyset_segments(query: DataQuery) -> list[dict]:
    """As `common.store.sqlite._keyset_segments`, with the record's _id as the tiebreaker: a $lt/$gt on a number
    never matches null (type bracketing), so the null block of the sort field is a segment of its own, read after
    (descending) or before (ascending)."""
    if query.after is None:
        return [{}]
    value, position = query.after
    if not isinstance(position, str) or isinstance(value, bool) or not isinstance(value, (str, int, float, type(None))):
        raise InputError("cursor must be a next_cursor returned by GET /data of this deployment, unchanged")
    column, below = query.sort_by, "$lt" if query.descending else "$gt"
    if value is None:
        nulls = {column: None, "_id": {below: position}}
        return [nulls] if query.descending else [nulls, {column: {"$ne": None}}]
    ordered = {"$or": [{column: {below: value}}, {column: value, "_id": {below: position}}]}
    return [ordered, {column: None}] if query.descending else [ordered]


def _batch(doc: dict) -> RawBatch:
    return RawBatch(
        batch_id=doc["_id"], source=doc["source"], run_id=doc["run_id"], format=doc["format"], payload=doc["payload"],
        row_count=doc["row_count"], first_row=doc["first_row"], header=json.loads(doc["header"]),
        rejects=json.loads(doc["rejects"]), position=json.loads(doc["position"]), version=doc["version"],
        created_at=doc["created_at"],
    )
