"""MongoDB adapter, the part every role shares: pymongo, selected by wiring when `MONGODB_URI` is set.

The client is created lazily, once per process (gunicorn imports modules before it forks, and pymongo clients are
not fork-safe), and indexes are created idempotently on first use. Writes under a lease are fenced: in one
transaction where the server has them, else by the documents' `fence_epoch`.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from typing import Self

from bson.errors import BSONError
from pymongo import MongoClient, uri_parser
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from common.clock import system_clock
from common.errors import ConfigError, LeaseLost, StoreError
from common.store import SCHEMA_VERSION, Fence, Store
from common.store.mongo_schema import ensure_indexes, migrate

DEFAULT_DB_NAME = "etl_db"
_CREDENTIALS = re.compile(r"//[^/@\s]*@")


def translated(method):
    """Map driver errors to `StoreError` at the port's boundary."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (PyMongoError, BSONError) as exc:
            raise StoreError(f"MongoDB {method.__name__} failed: {exc}", operation=method.__name__) from exc

    return wrapper


def limited(cursor, limit: int, offset: int = 0) -> list[dict]:
    """LIMIT/OFFSET with SQL meaning: 0 returns nothing, a negative limit means no limit."""
    if limit == 0:
        return []
    cursor = cursor.skip(max(offset, 0))
    return list(cursor.limit(limit) if limit > 0 else cursor)


def not_newer_than(fence: Fence) -> dict:
    """Filter: documents no newer writer has touched (their `fence_epoch` is ours or older, or absent)."""
    return {"$or": [{"fence_epoch": {"$lte": fence.epoch}}, {"fence_epoch": {"$exists": False}}]}


class MongoBase(Store):
    """The client, migrations and fenced transactions; the roles (`MongoRecords`, `MongoLedger`, `MongoStore`) build
    on it."""

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
    def from_uri(cls, uri: str, clock=system_clock, timeout_s: float = 3.0) -> Self:
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

    @translated
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

    @translated
    def ping(self) -> None:
        self._database().command("ping")

    def close(self) -> None:
        with self._lock:
            if self._uri and self._client is not None and self._pid == os.getpid():
                self._client.close()
            if self._uri:
                self._client = None
            self._db = None


def _supports_transactions(db) -> bool:
    """Multi-document transactions need a replica set or a sharded cluster; a standalone server has neither."""
    try:
        hello = db.command("hello")
    except (PyMongoError, NotImplementedError):
        return False
    return "setName" in hello or hello.get("msg") == "isdbgrid"
