"""MongoDB adapter, normalized records: the transform's commit (one bulk write per batch), keyset pages read from
one (field, _id) index per sort, and the per-asset latest view."""

from __future__ import annotations

from typing import Iterable, Sequence

from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.errors import BulkWriteError

from common.clock import iso_utc
from common.errors import InputError
from common.store import DATA_VERSION_KEY, FIRST_SEEN_FIELDS, NORMALIZED_FIELDS, DataQuery, Fence, RawBatch, Rows
from common.store.mongo_base import MongoBase, limited, not_newer_than, translated
from common.store.mongo_schema import KEY_FIELDS as _KEY_FIELDS
from common.store.mongo_schema import VALUE_FIELDS as _VALUE_FIELDS

_REAL_FIELDS = frozenset({"price_usd", "open_usd", "high_usd", "low_usd", "market_cap_usd", "volume_24h_usd"})


class MongoRecords(MongoBase):
    """Records, assets and the data version; quarantine rows arrive with the batch they came from."""

    # --- transform output ---------------------------------------------------------------------------------------
    @translated
    def commit_transformed(
        self, batch: RawBatch | None, records: Sequence[tuple], quarantine: Sequence[dict], assets: Iterable[dict],
        fence: Fence | None = None, resolves: Sequence[str] = (), resolved_by: str | None = None,
    ) -> None:
        now = iso_utc(self.clock())
        newer = not_newer_than(fence) if fence else {}
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
    @translated
    def read_page(self, query: DataQuery) -> Rows:
        where = _data_filter(query)
        direction = DESCENDING if query.descending else ASCENDING
        order = [(query.sort_by, direction), ("_id", direction)]
        collection, docs, wanted = self._database().normalized, [], query.limit + 1  # one more: a next page?
        for segment in _keyset_segments(query):
            docs += limited(collection.find({"$and": [where, segment]} if segment else where).sort(order),
                             wanted - len(docs), (query.page - 1) * query.limit)
            if len(docs) >= wanted:
                break
        items = [_item(d) for d in docs[:query.limit]]
        last = docs[query.limit - 1] if len(docs) > query.limit else None
        return Rows(items=items, after=(last.get(query.sort_by), last["_id"]) if last else None)

    @translated
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

    @translated
    def count_assets(self, query: DataQuery) -> int:
        return self._database().assets.count_documents(self._asset_filter(query))

    @translated
    def latest_by_source(self, query: DataQuery) -> list[dict]:
        db = self._database()
        assets = limited(db.assets.find(self._asset_filter(query)).sort("_id", ASCENDING), query.limit,
                          (query.page - 1) * query.limit)
        items = []
        for doc in assets:  # bounded: one index seek per (asset, source) on (asset_id, source, observed_at)
            for source in sorted(doc.get("sources", [])):
                if query.source and source != query.source:
                    continue
                newest = limited(db.normalized.find({"asset_id": doc["_id"], "source": source})
                                  .sort("observed_at", DESCENDING), 1)  # the index order: no in-memory sort
                items += [_item(d) for d in newest]
        return items

    @translated
    def count_normalized(self, source: str | None = None) -> int:
        return self._database().normalized.count_documents({"source": source} if source else {})

    @translated
    def list_assets(self) -> list[dict]:
        return [
            {"asset_id": d["_id"], "symbol": d["symbol"], "name": d["name"], "first_seen_at": d["first_seen_at"],
             "updated_at": d["updated_at"], "sources": sorted(d.get("sources", []))}
            for d in self._database().assets.find().sort("_id", ASCENDING)
        ]


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
    """As `common.store.sqlite_records._keyset_segments`, with the record's _id as the tiebreaker: a $lt/$gt on a number
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
