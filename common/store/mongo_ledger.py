"""MongoDB adapter, the ledger: runs (counted by kind, so metrics stay monotonic after pruning) and quarantine."""

from __future__ import annotations

import json
from typing import Sequence

from pymongo import ASCENDING, DESCENDING
from pymongo.errors import DuplicateKeyError

from common.clock import iso_utc
from common.store import FINISHED_STATUSES, Fence, Run
from common.store.mongo_base import MongoBase, limited, translated
from common.store.mongo_schema import run_count_id

_QUARANTINE_FIELDS = ("id", "source", "run_id", "batch_id", "row_number", "raw", "reason", "created_at",
                      "resolved_at", "resolved_by")


class MongoLedger(MongoBase):
    """The run ledger and the quarantine's reads, resolutions and pruning."""

    @staticmethod
    def _quarantine_filter(source: str | None, unresolved_only: bool) -> dict:
        return {**({"source": source} if source else {}), **({"resolved_at": None} if unresolved_only else {})}

    @translated
    def list_quarantine(self, source: str | None = None, limit: int = 100, offset: int = 0,
                        unresolved_only: bool = False) -> list[dict]:
        cursor = self._database().quarantine.find(self._quarantine_filter(source, unresolved_only)).sort(
            [("created_at", ASCENDING), ("batch_id", ASCENDING), ("row_number", ASCENDING)]
        )
        return [
            {"id": d["_id"], **{name: d.get(name) for name in _QUARANTINE_FIELDS[1:]}}
            for d in limited(cursor, limit, offset)
        ]

    @translated
    def count_quarantine(self, source: str | None = None, unresolved_only: bool = False) -> int:
        return self._database().quarantine.count_documents(self._quarantine_filter(source, unresolved_only))

    @translated
    def resolve_quarantine(self, ids: Sequence[str], run_id: str, fence: Fence | None = None) -> int:
        if not ids:
            return 0
        return self._fenced(fence, lambda db, session: db.quarantine.update_many(
            {"_id": {"$in": list(ids)}, "resolved_at": None},
            {"$set": {"resolved_at": iso_utc(self.clock()), "resolved_by": run_id}}, session=session,
        ).modified_count)

    @translated
    def prune_quarantine(self, before: str, limit: int, fence: Fence | None = None) -> int:
        resolved = {"resolved_at": {"$ne": None, "$lt": before}}
        ids = [d["_id"] for d in self._database().quarantine.find(resolved, {"_id": 1})
               .sort("resolved_at", ASCENDING).limit(limit)]
        if not ids:
            return 0
        return self._fenced(fence, lambda db, session: db.quarantine.delete_many(
            {"_id": {"$in": ids}, **resolved}, session=session).deleted_count)

    # --- run ledger ------------------------------------------------------------------------------------------------
    @translated
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

    @translated
    def get_run(self, run_id: str) -> Run | None:
        doc = self._database().runs.find_one({"_id": run_id})
        return Run(**json.loads(doc["doc"])) if doc else None

    @translated
    def list_runs(self, stage: str | None = None, source: str | None = None, limit: int = 50,
                  status: str | None = None, before: tuple[str, str] | None = None) -> list[Run]:
        where = {name: value for name, value in (("stage", stage), ("source", source), ("status", status))
                 if value is not None}
        if before:
            where["$or"] = [{"started_at": {"$lt": before[0]}}, {"started_at": before[0], "_id": {"$lt": before[1]}}]
        return self._runs(where, limit)

    @translated
    def count_runs(self, since: str | None = None) -> dict[tuple[str, str | None, str], int]:
        if not since:
            return {(d["stage"], d.get("source"), d["status"]): d["count"]
                    for d in self._database().run_counts.find({"count": {"$gt": 0}})}
        pipeline = [*([{"$match": {"started_at": {"$gte": since}}}] if since else []),
                    {"$group": {"_id": {"stage": "$stage", "source": "$source", "status": "$status"},
                                "count": {"$sum": 1}}}]
        return {(d["_id"]["stage"], d["_id"].get("source"), d["_id"]["status"]): d["count"]
                for d in self._database().runs.aggregate(pipeline)}

    @translated
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

    @translated
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

    @translated
    def running_runs(self, stage: str, source: str | None) -> list[Run]:
        cursor = self._database().runs.find({"status": "running", "stage": stage, "source": source}, {"doc": 1})
        runs = [Run(**json.loads(d["doc"])) for d in cursor]
        return sorted(runs, key=lambda r: (r.started_at, r.run_id))

    @translated
    def run_durations(self, stage: str, source: str | None, limit: int) -> list[int]:
        cursor = self._database().runs.find({"stage": stage, "source": source}, {"status": 1, "doc": 1}).sort(
            [("started_at", DESCENDING), ("_id", DESCENDING)])
        durations = [json.loads(d["doc"]).get("duration_ms") for d in limited(cursor, limit)
                     if d["status"] in FINISHED_STATUSES]
        return [ms for ms in durations if ms is not None]

    @translated
    def last_run(self, statuses: Sequence[str], stage: str | None = None) -> Run | None:
        where = {"status": {"$in": list(statuses)}, **({"stage": stage} if stage is not None else {})}
        runs = self._runs(where, 1)
        return runs[0] if runs else None

    def _runs(self, where: dict, limit: int) -> list[Run]:
        cursor = self._database().runs.find(where, {"doc": 1}).sort([("started_at", DESCENDING), ("_id", DESCENDING)])
        return [Run(**json.loads(d["doc"])) for d in limited(cursor, limit)]
