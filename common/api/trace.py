"""The X-Run-ID every API answer carries: the last good pass, read at most once per interval.

Reading the ledger on every response doubled the store round trips of each request, and during an outage
doubled the wait before the 503 (each read waits for the store's timeout). So the value is kept per process
for `ttl_s`, a failed read is not retried before the interval ends either, a request whose handler already
saw the store fail never reads it, and only one thread refreshes at a time (the others answer the last value).
"""

from __future__ import annotations

import logging
import threading

from common.clock import Clock
from common.errors import EtlError
from common.store import Store

log = logging.getLogger(__name__)

LAST_GOOD = ("succeeded", "partial")
UNKNOWN = "unknown"
NO_RUN = "none"


class LastRunId:
    """The last good pass's run id (a `pipeline` run that succeeded, or was partial: it loaded data too), else the
    last good transform/load (stages invoked one by one), else any stage's; refreshed at most once per `ttl_s`."""

    def __init__(self, store: Store, clock: Clock, ttl_s: float = 5.0) -> None:
        self.store, self.clock, self.ttl_s = store, clock, ttl_s
        self._value = UNKNOWN
        self._read_at: float | None = None
        self._refreshing = threading.Lock()

    def current(self, store_failed: bool = False) -> str:
        """The run id; `store_failed` says this request already saw the store fail, so it is not asked again."""
        fresh = self._read_at is not None and self.clock() - self._read_at < self.ttl_s
        if fresh or store_failed or not self._refreshing.acquire(blocking=False):
            return self._value
        try:
            newest = self.store.latest_runs(LAST_GOOD)  # one read: the newest good run of each stage and source
            by_stage = {stage: max((r for r in newest if r.stage == stage), default=None,
                                   key=lambda r: (r.started_at, r.run_id))
                        for stage in ("pipeline", "transform_load", None)}
            by_stage[None] = max(newest, default=None, key=lambda r: (r.started_at, r.run_id))
            last = by_stage["pipeline"] or by_stage["transform_load"] or by_stage[None]
            self._value = last.run_id if last else NO_RUN
        except EtlError as exc:
            log.warning("X-Run-ID not refreshed: %s", exc.message)
        finally:
            self._read_at = self.clock()
            self._refreshing.release()
        return self._value
