"""A second process drawing on a source's shared budget: `python tests/e2e/limiter_probe.py DB URL N RATE [STALL_S]`.

Acquires the source_c limiter from the shared SQLite store before each of N requests to URL (page 1). With STALL_S,
every answer of the store on the limiter's key arrives STALL_S seconds late (a real sleep after the call did its
work), as from a stalled network or a busy database."""

from __future__ import annotations

import sys
import time

import requests

from common.clock import Deadline
from common.config import parse_rate
from common.sources.ratelimit import SourceLimiter
from common.store.sqlite import SqliteStore


class LateStore(SqliteStore):
    """Answers get_state/cas_state on limiter keys `stall_s` late."""

    def __init__(self, path: str, stall_s: float) -> None:
        super().__init__(path)
        self.stall_s = stall_s

    def get_state(self, key):
        result = super().get_state(key)
        if key.startswith("limiter:"):
            time.sleep(self.stall_s)
        return result

    def cas_state(self, key, value, expected_version, *args, **kwargs):
        result = super().cas_state(key, value, expected_version, *args, **kwargs)
        if key.startswith("limiter:"):
            time.sleep(self.stall_s)
        return result


def main(db_path: str, url: str, count: int, rate: str, stall_s: float = 0.0) -> None:
    store = LateStore(db_path, stall_s) if stall_s else SqliteStore(db_path)
    limiter = SourceLimiter(store, "source_c", parse_rate(rate), time.time, time.sleep)
    deadline = Deadline(time.time, 300)
    with requests.Session() as session:
        for _ in range(count):
            limiter.acquire(deadline)
            session.get(url, params={"vs_currency": "usd", "order": "market_cap_desc", "per_page": 1, "page": 1},
                        timeout=10)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]) if len(sys.argv) > 5 else 0.0)
