"""The storage port: everything that must outlive an invocation goes through `Store`.

Adapters: `common.store.sqlite.SqliteStore` (embedded default) and `common.store.mongo.MongoStore`.
Nothing above this port knows which one it has; `common.wiring` is the only place that picks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

NORMALIZED_FIELDS: tuple[str, ...] = (
    "idempotency_key", "source", "source_id", "symbol", "observed_at", "asset_id", "name",
    "price_usd", "open_usd", "high_usd", "low_usd", "market_cap_usd", "volume_24h_usd",
    "ingested_at", "run_id",
)
"""Order of the tuples handed to `Store.commit_transformed` (tuples, not dicts: 1M rows per run is normal)."""

FIRST_SEEN_FIELDS = frozenset({"ingested_at", "run_id"})
"""Kept from the first write of a record; every other field is overwritten by later writes."""

SCHEMA_VERSION = 8
"""1: the first release; 2: lease epochs (fencing); 3: CSV records keyed by symbol + name, fixed-width timestamps;
4: run counts per (stage, source, status) kept as runs are written, runs indexed by (stage, source, status, start);
5: normalized records indexed by (asset, source, time) for view=latest; 6: an index per sortable field with a unique
record position as tiebreaker (SQLite: records in a rowid table; MongoDB: the record's _id); 7: retention indexes
(done batches by age, unresolved quarantine by batch, resolved quarantine by age) for `common.prune`; 8: SQLite keeps
the records per source as it commits them (a count read instead of an index walk: 35 ms per source at 1M records)."""

DATA_VERSION_KEY = "records:data_version"
"""The shared-state document whose version `commit_transformed` bumps in the same write (see `data_version`)."""

SORTABLE_FIELDS = ("observed_at", "symbol", "price_usd", "market_cap_usd", "volume_24h_usd", "ingested_at")
INDEXED_SORTS = SORTABLE_FIELDS
"""Sorts of GET /data read from an index in their full order: every one, as (field, record position). Cheap to keep
only because the entries are narrow (SQLite: a value and the row id) and a bulk load builds them after loading
(`RecordStore.begin_bulk_load`): kept row by row through a 1M-row CSV load they cost 22-34 s, built after it 2-3 s."""
RUN_STATUSES = ("running", "succeeded", "partial", "failed", "skipped")
FINISHED_STATUSES = ("succeeded", "partial", "failed")  # a run that ran to an end (skipped: it never started)


@dataclass(frozen=True)
class Fence:
    """A lease as held by one run. `epoch` only grows (across every lease), so a write carrying an older epoch
    comes from a writer that lost its lease (stalled past expiry, then taken over) and is refused."""

    name: str
    owner: str
    epoch: int


@dataclass
class RawBatch:
    """One chunk of a source as received; `batch_id` is deterministic so a replayed chunk overwrites itself."""

    batch_id: str
    source: str
    run_id: str
    format: str  # "csv_lines": newline-joined CSV lines under `header`; "json": a JSON document
    payload: str
    row_count: int
    first_row: int = 1
    header: list[str] | None = None
    rejects: list[dict] = field(default_factory=list)  # rows the extract could not even decode
    position: dict = field(default_factory=dict)
    version: int = 0  # set by the store; bumps on every overwrite
    created_at: str = ""


@dataclass
class Run:
    """One invocation of one stage, as recorded in the run ledger."""

    run_id: str
    stage: str
    source: str | None
    status: str = "running"
    started_at: str = ""
    finished_at: str | None = None
    duration_ms: int | None = None
    rows_in: int = 0
    rows_out: int = 0
    quarantined: int = 0
    checkpoint: dict | None = None
    summary: dict = field(default_factory=lambda: {"warnings": [], "errors": []})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DataQuery:
    """A validated read of normalized records.

    Order: `sort_by`, then the record's position in the store (SQLite: its row id, in first-ingest order; MongoDB:
    its _id) as the unique tiebreaker, both in one direction; NULL values of `sort_by` count as lower than any value
    (first ascending, last descending), as both SQLite and MongoDB sort them. `after`: `Rows.after` of the previous
    page, (sort value, position): keyset paging, only rows strictly after it (then `page` must be 1). `from_at`
    inclusive, `to_at` exclusive, both canonical `YYYY-MM-DDTHH:MM:SS.sssZ` on observed_at."""

    page: int = 1
    limit: int = 100
    symbol: str | None = None
    source: str | None = None
    asset_id: str | None = None
    sort_by: str = "observed_at"
    descending: bool = True
    symbols: tuple[str, ...] = ()
    from_at: str | None = None
    to_at: str | None = None
    after: tuple | None = None

    def __post_init__(self) -> None:
        if self.sort_by not in SORTABLE_FIELDS:  # adapters put it into a query: never trust it
            raise ValueError(f"sort_by must be one of {SORTABLE_FIELDS}, got {self.sort_by!r}")
        if self.page < 1 or self.limit < 1:
            raise ValueError("page and limit must be >= 1")
        if self.after is not None and (len(self.after) != 2 or self.page != 1):
            raise ValueError("after is (value, position) and goes with page 1")

    def wanted_symbols(self) -> tuple[str, ...]:
        """`symbol` and `symbols` together (either may be empty)."""
        return tuple(dict.fromkeys((*self.symbols, *((self.symbol,) if self.symbol else ()))))



@dataclass(frozen=True)
class Rows:
    """A page of records; `after` continues the order behind the last of them (None: nothing follows)."""

    items: list[dict]
    after: tuple | None


@dataclass(frozen=True)
class Page:
    items: list[dict]
    total: int


class LeaseStore(ABC):
    """Single flight per stage, with fencing tokens."""

    @abstractmethod
    def acquire_lease(self, name: str, owner: str, ttl_s: float, now: float) -> Fence | None:
        """Atomically take `name` if free, expired, or already ours. A takeover draws a new, larger epoch;
        None when someone else holds it."""

    @abstractmethod
    def renew_lease(self, fence: Fence, ttl_s: float, now: float) -> bool:
        """Extend our lease; False when it was lost (taken over: the epoch moved on)."""

    @abstractmethod
    def release_lease(self, fence: Fence) -> None:
        """Let the lease expire now if we still hold it (the epoch is kept: it never goes back)."""


class SharedState(ABC):
    """Small versioned documents shared by every process: rate-limiter windows, adaptive rates, learned mappings
    and formats, incidents (see `common.store.state.update_state`)."""

    @abstractmethod
    def get_state(self, key: str) -> tuple[dict | None, int]:
        """The document stored under `key` and its version (None, 0 when absent)."""

    @abstractmethod
    def cas_state(self, key: str, value: dict, expected_version: int, fence: Fence | None = None) -> bool:
        """Compare-and-set: store `value` as version `expected_version + 1` only if the stored version is still
        `expected_version` (0 = absent). False means another process changed it first: re-read and retry."""


class BatchStore(ABC):
    """Raw batches as received, and the extract checkpoints that follow them."""

    @abstractmethod
    def get_checkpoint(self, name: str) -> dict | None: ...

    @abstractmethod
    def put_checkpoint(self, name: str, value: dict, fence: Fence | None = None) -> None: ...

    @abstractmethod
    def put_raw_batch(self, batch: RawBatch, checkpoint: tuple[str, dict] | None = None,
                      fence: Fence | None = None) -> None:
        """Upsert the batch (as pending, version bumped), then the checkpoint; never the checkpoint alone."""

    @abstractmethod
    def pending_raw_batches(self, limit: int, source: str | None = None) -> list[RawBatch]:
        """Oldest batches not yet transformed (in write order)."""

    @abstractmethod
    def count_raw_batches(self, source: str | None = None, pending_only: bool = False) -> int: ...

    @abstractmethod
    def get_raw_batch(self, batch_id: str) -> RawBatch | None: ...

    @abstractmethod
    def requeue_raw_batch(self, batch_id: str) -> bool:
        """Make a batch pending again (version bumped) so the next transform re-reads it; False if unknown."""

    @abstractmethod
    def prune_raw_batches(self, before: str, limit: int, fence: Fence | None = None) -> int:
        """Delete up to `limit` batches first written before `before` (ISO 8601) that are done and that no
        unresolved quarantine entry points at (a replay re-reads its row from the batch); returns how many. Pending
        batches are never deleted. One short write: checks and deletes are atomic (or conditional on the version
        seen), so a batch rewritten meanwhile stays."""


class RecordStore(ABC):
    """Normalized records and master assets: the transform's output and the API's reads."""

    @abstractmethod
    def commit_transformed(
        self,
        batch: RawBatch | None,
        records: Sequence[tuple],
        quarantine: Sequence[dict],
        assets: Iterable[dict],
        fence: Fence | None = None,
        resolves: Sequence[str] = (),
        resolved_by: str | None = None,
    ) -> None:
        """Upsert records (tuples in NORMALIZED_FIELDS order) and assets, add quarantine entries, then mark
        the batch done if its version is unchanged (no batch: a quarantine replay). Idempotent: replaying a batch
        changes nothing. `resolves`: quarantine entries this commit supersedes (rows of an earlier version of the
        batch that now load), marked resolved by `resolved_by` in the same write."""

    def query_normalized(self, query: DataQuery) -> Page:
        """A page of records and the total matching the filters (which costs a count: the API caches it)."""
        return Page(items=self.read_normalized(query), total=self.count_matching(query))

    def read_normalized(self, query: DataQuery) -> list[dict]:
        return self.read_page(query).items

    @abstractmethod
    def read_page(self, query: DataQuery) -> Rows:
        """Up to `query.limit` records in the query's order, and where the next page starts; each sort is served by
        an index, and a keyset page (`after`) costs the same however deep it is. A malformed `after` (a position
        of another adapter or a forged cursor) raises InputError."""

    def begin_bulk_load(self, fence: Fence | None = None) -> bool:
        """Before loading the pending raw batches: an adapter may drop the sort indexes when the backlog is large
        next to the records already stored (building them afterwards costs far less than keeping them row by row).
        Reads stay right meanwhile, only slower. Returns whether it did."""
        return False

    def finish_bulk_load(self, fence: Fence | None = None) -> None:
        """Build every sort index that is missing (after a bulk load, or after one that crashed)."""

    @abstractmethod
    def count_matching(self, query: DataQuery) -> int:
        """How many records match the query's filters (paging and order ignored)."""

    @abstractmethod
    def data_version(self) -> int:
        """A number that changes on every `commit_transformed` (bumped in the same write): aggregates over
        records may be cached against it."""

    @abstractmethod
    def latest_by_source(self, query: DataQuery) -> list[dict]:
        """View `latest`: for the assets of page `query.page` (`query.limit` assets by asset_id, filtered by
        symbol, source, asset_id), the newest record of each (asset, source); one index seek per pair."""

    @abstractmethod
    def count_assets(self, query: DataQuery) -> int:
        """How many assets `latest_by_source` pages over."""

    @abstractmethod
    def count_normalized(self, source: str | None = None) -> int: ...

    @abstractmethod
    def list_assets(self) -> list[dict]:
        """Master assets with the sources that reported them, ordered by asset_id."""


class QuarantineStore(ABC):
    """Rows that could not be loaded, with their reason, until a replay or a correction loads them."""

    @abstractmethod
    def list_quarantine(self, source: str | None = None, limit: int = 100, offset: int = 0,
                        unresolved_only: bool = False) -> list[dict]:
        """Entries (id, source, run_id, batch_id, row_number, raw, reason, created_at, resolved_at, resolved_by)."""

    @abstractmethod
    def count_quarantine(self, source: str | None = None, unresolved_only: bool = False) -> int: ...

    @abstractmethod
    def resolve_quarantine(self, ids: Sequence[str], run_id: str, fence: Fence | None = None) -> int:
        """Mark entries as loaded by a replay run; returns how many were still unresolved."""

    @abstractmethod
    def prune_quarantine(self, before: str, limit: int, fence: Fence | None = None) -> int:
        """Delete up to `limit` entries resolved before `before`; unresolved ones never. Returns how many."""


class RunLedger(ABC):
    """Every invocation of every stage, as recorded runs."""

    @abstractmethod
    def save_run(self, run: Run, fence: Fence | None = None) -> bool:
        """Insert the run's ledger entry, or replace it while the stored one is still `running`: a final status is
        written once. False when the stored entry is already final (nothing written)."""

    @abstractmethod
    def get_run(self, run_id: str) -> Run | None: ...

    @abstractmethod
    def list_runs(self, stage: str | None = None, source: str | None = None, limit: int = 50,
                  status: str | None = None, before: tuple[str, str] | None = None) -> list[Run]:
        """Newest first (started_at, then run_id); `source=None` matches any source. `before`: the
        (started_at, run_id) of the last run of the previous page (keyset paging: only runs strictly after it)."""

    @abstractmethod
    def running_runs(self, stage: str, source: str | None) -> list[Run]:
        """Every run of exactly this stage and source still recorded as `running` (served from an index)."""

    @abstractmethod
    def run_durations(self, stage: str, source: str | None, limit: int) -> list[int]:
        """`duration_ms` of the FINISHED_STATUSES runs among the newest `limit` runs of exactly this stage and
        source (None: runs without one), newest first; read without loading whole run documents where the store
        can (/stats reads five windows of 500 on every recompute)."""

    @abstractmethod
    def last_run(self, statuses: Sequence[str], stage: str | None = None) -> Run | None:
        """The newest run (by start time) whose status is in `statuses`."""

    @abstractmethod
    def count_runs(self, since: str | None = None) -> dict[tuple[str, str | None, str], int]:
        """How many runs per (stage, source, status), among those started at or after `since` (ISO 8601; None: all,
        read from counts kept as runs are written, so it costs the same however long the ledger)."""

    @abstractmethod
    def latest_runs(self, statuses: Sequence[str]) -> list[Run]:
        """For every (stage, source), its newest run (by start time, then run_id) whose status is in `statuses`."""

    @abstractmethod
    def prune_runs(self, before: str, limit: int, fence: Fence | None = None) -> int:
        """Delete up to `limit` finished runs started before `before`; never a `running` one, nor the newest run of
        each (stage, source, status) (health, alerts and /metrics' last-run gauges read those). The counts behind
        `count_runs()` are not touched: counters stay monotonic. Returns how many."""


class Store(LeaseStore, SharedState, BatchStore, RecordStore, QuarantineStore, RunLedger):
    """The storage port: the union of the role ports, plus the lifecycle. Consumers may depend on a role only.

    Every durable write of a run takes `fence=`: it happens only while that lease is current, checked atomically with the
    write, else `LeaseLost` is raised and nothing is written; `fence=None` is unfenced (tests, migrations, skipped runs)."""

    @abstractmethod
    def ping(self) -> None:
        """Raise `StoreError` unless the store answers."""

    @abstractmethod
    def migrate(self) -> tuple[int, int]:
        """Upgrade a store written by an older version in place, up to SCHEMA_VERSION; returns (from, to).
        Runs on first use too; idempotent, and safe when several processes start at once."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections held by this process."""

    def reclaim_space(self, max_bytes: int = 8 << 20) -> int:
        """Give space freed by deletions back to the system, at most about `max_bytes` per call (one short write);
        returns how many bytes it gave back (0: nothing left to give, or the adapter's engine reuses free space
        on its own). Changes no content, so it needs no fence."""
        return 0

    def size_bytes(self) -> int | None:
        """What the store occupies (None: unknown)."""
        return None
