"""The MongoDB store's indexes and its versioned, idempotent migrations (SCHEMA_VERSION in `common.store`)."""

from __future__ import annotations

from pymongo import ASCENDING, DeleteOne, UpdateOne

from common.store import FIRST_SEEN_FIELDS, NORMALIZED_FIELDS, SCHEMA_VERSION, SORTABLE_FIELDS
from common.store.migrations import CSV_SOURCES, canonical_observed_at, migrated_source_id, record_key

KEY_FIELDS = ("source", "source_id", "observed_at")
VALUE_FIELDS = tuple(
    f for f in NORMALIZED_FIELDS if f not in FIRST_SEEN_FIELDS and f not in KEY_FIELDS and f != "idempotency_key"
)
_INDEXES = (  # (collection, keys, unique); created idempotently on first use
    ("normalized", ("source", "source_id", "observed_at"), True),
    ("normalized", ("symbol", "observed_at"), False),
    # version 5: view=latest's (asset, source) seek
    ("normalized", ("asset_id", "source", "observed_at"), False),
    # version 6: every sort of GET /data, with the record's _id as the unique tiebreaker (common.store.INDEXED_SORTS)
    *(("normalized", (field, "_id"), False) for field in SORTABLE_FIELDS),
    ("raw_batches", ("status", "seq"), False),
    ("raw_batches", ("source", "status", "seq"), False),
    ("quarantine", ("source", "created_at"), False),
    # version 7: retention (common.prune): done batches by age, unresolved entries by batch, resolved ones by age
    ("raw_batches", ("status", "created_at"), False),
    ("quarantine", ("batch_id", "resolved_at"), False),
    ("quarantine", ("resolved_at",), False),
    ("runs", ("stage", "started_at"), False),
    ("runs", ("started_at",), False),
    ("runs", ("status", "stage", "source"), False),
    ("runs", ("stage", "source", "status", "started_at"), False),
)
MIGRATION_BATCH = 1000


def ensure_indexes(db) -> None:
    """Created idempotently on first use."""
    for collection, keys, unique in _INDEXES:
        db[collection].create_index([(k, ASCENDING) for k in keys], **({"unique": True} if unique else {}))


def migrate(db, fresh: bool) -> int:
    """Bring the database up to SCHEMA_VERSION in place; returns the version found. Idempotent step by step, so
    an upgrade interrupted by a crash (or run by two processes at once) finishes on the next start."""
    meta = db.meta.find_one({"_id": "schema"})
    found = meta["version"] if meta else (SCHEMA_VERSION if fresh else 1)
    if found < 3:  # version 2 (lease epochs) needs no rewrite: a lease without one is taken over as epoch 0
        _rekey_records(db)
        # transform the CSV's batches once more: rows two coins with one ticker had collapsed into one come back
        db.raw_batches.update_many({"status": "done", "source": {"$in": sorted(CSV_SOURCES)}},
                                   {"$set": {"status": "pending"}, "$inc": {"version": 1}})
    if found < 4:  # version 4: run counts kept as runs are written; set (not added) here, so a rerun is harmless
        count_runs(db)
    # versions 5, 6 and 7 add indexes (`ensure_indexes` creates them on every start, before this runs); version 6's
    # (observed_at, _id) supersedes version 1's (observed_at)
    if found < 6 and "observed_at_1" in db.normalized.index_information():
        db.normalized.drop_index("observed_at_1")
    if found < SCHEMA_VERSION or not meta:
        db.meta.update_one({"_id": "schema"}, {"$max": {"version": SCHEMA_VERSION}}, upsert=True)
    return found


def run_count_id(stage: str, source: str | None, status: str) -> str:
    return f"{stage}|{source or ''}|{status}"


def count_runs(db) -> None:
    """The run_counts documents of the runs stored so far."""
    groups = db.runs.aggregate([{"$group": {"_id": {"stage": "$stage", "source": "$source", "status": "$status"},
                                            "count": {"$sum": 1}}}])
    for group in groups:
        key = group["_id"]
        db.run_counts.update_one(
            {"_id": run_count_id(key["stage"], key.get("source"), key["status"])},
            {"$set": {"stage": key["stage"], "source": key.get("source"), "status": key["status"],
                      "count": group["count"]}}, upsert=True)


def _rekey_records(db) -> None:
    """Version 3: each record under today's natural key and idempotency key (see common.store.migrations).
    The new document is written before the old one is deleted, so a crash in between leaves both, never neither,
    and the next start finishes the job."""
    last = None
    while True:
        docs = list(db.normalized.find({"_id": {"$gt": last}} if last is not None else {})
                    .sort("_id", ASCENDING).limit(MIGRATION_BATCH))
        if not docs:
            return
        ops = []
        for doc in docs:
            source_id = migrated_source_id(doc["source"], doc["source_id"], doc["asset_id"])
            observed_at = canonical_observed_at(doc["observed_at"])
            key = record_key(doc["source"], source_id, observed_at)
            if key == doc["_id"] or (source_id, observed_at) == (doc["source_id"], doc["observed_at"]):
                continue
            values = {name: doc.get(name) for name in VALUE_FIELDS}
            ops.append(UpdateOne(
                {"source": doc["source"], "source_id": source_id, "observed_at": observed_at},
                {"$set": values, "$setOnInsert": {"_id": key, **{f: doc[f] for f in FIRST_SEEN_FIELDS}}},
                upsert=True,
            ))
            ops.append(DeleteOne({"_id": doc["_id"]}))
        if ops:
            db.normalized.bulk_write(ops, ordered=True)
        last = docs[-1]["_id"]
