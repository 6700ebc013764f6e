"""MongoDB adapter. `MongoStore` is leases, checkpoints, shared state and raw batches here, records
(`mongo_records`) and the ledger (`mongo_ledger`) by role, on one client (`mongo_base`). Free-form structures
(checkpoints, batch positions, headers, rejects, run documents) are stored as JSON strings, so keys from external
payloads never become `$`-prefixed or dotted field names."""

from __future__ import annotations

import json

from pymongo import ASCENDING, DeleteOne, ReturnDocument
from pymongo.errors import DuplicateKeyError

from common.clock import iso_utc
from common.store import Fence, RawBatch
from common.store.mongo_base import limited, not_newer_than, translated
from common.store.mongo_ledger import MongoLedger
from common.store.mongo_records import MongoRecords


class MongoStore(MongoRecords, MongoLedger):
    """Store on one MongoDB database; safe to share between processes and threads."""

    # --- leases ----------------------------------------------------------------------------------------
    @translated
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

    @translated
    def renew_lease(self, fence: Fence, ttl_s: float, now: float) -> bool:
        result = self._database().leases.update_one(
            {"_id": fence.name, "owner": fence.owner, "epoch": fence.epoch}, {"$set": {"expires_at": now + ttl_s}}
        )
        return result.matched_count == 1

    @translated
    def release_lease(self, fence: Fence) -> None:
        self._database().leases.update_one(
            {"_id": fence.name, "owner": fence.owner, "epoch": fence.epoch}, {"$set": {"expires_at": 0}})

    # --- checkpoints ------------------------------------------------------------------------------------
    @translated
    def get_checkpoint(self, name: str) -> dict | None:
        doc = self._database().checkpoints.find_one({"_id": name})
        return json.loads(doc["value"]) if doc else None

    @translated
    def put_checkpoint(self, name: str, value: dict, fence: Fence | None = None) -> None:
        self._fenced(fence, lambda db, session: self._put_checkpoint(db, session, name, value, fence))

    def _put_checkpoint(self, db, session, name: str, value: dict, fence: Fence | None) -> None:
        where, fields = {"_id": name}, {"value": json.dumps(value), "updated_at": iso_utc(self.clock())}
        if fence is not None:
            where.update(not_newer_than(fence))
            fields["fence_epoch"] = fence.epoch
        try:
            db.checkpoints.update_one(where, {"$set": fields}, upsert=True, session=session)
        except DuplicateKeyError as exc:
            self._superseded(db, fence, exc)

    # --- shared state ---------------------------------------------------------------------------------------
    @translated
    def get_state(self, key: str) -> tuple[dict | None, int]:
        doc = self._database().shared_state.find_one({"_id": key})
        return (json.loads(doc["value"]), doc["version"]) if doc else (None, 0)

    @translated
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
    @translated
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
                {"_id": batch.batch_id, **(not_newer_than(fence) if fence else {})},
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

    @translated
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

    @translated
    def pending_raw_batches(self, limit: int, source: str | None = None) -> list[RawBatch]:
        where = {"status": "pending", **({"source": source} if source else {})}
        docs = limited(self._database().raw_batches.find(where).sort("seq", ASCENDING), limit)
        return [_batch(d) for d in docs]

    @translated
    def get_raw_batch(self, batch_id: str) -> RawBatch | None:
        doc = self._database().raw_batches.find_one({"_id": batch_id})
        return _batch(doc) if doc else None

    @translated
    def requeue_raw_batch(self, batch_id: str) -> bool:
        result = self._database().raw_batches.update_one(
            {"_id": batch_id}, {"$set": {"status": "pending"}, "$inc": {"version": 1}})
        return result.matched_count == 1

    @translated
    def count_raw_batches(self, source: str | None = None, pending_only: bool = False) -> int:
        where = {**({"source": source} if source else {}), **({"status": "pending"} if pending_only else {})}
        return self._database().raw_batches.count_documents(where)


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


def _batch(doc: dict) -> RawBatch:
    return RawBatch(
        batch_id=doc["_id"], source=doc["source"], run_id=doc["run_id"], format=doc["format"], payload=doc["payload"],
        row_count=doc["row_count"], first_row=doc["first_row"], header=json.loads(doc["header"]),
        rejects=json.loads(doc["rejects"]), position=json.loads(doc["position"]), version=doc["version"],
        created_at=doc["created_at"],
    )
