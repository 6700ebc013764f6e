"""A second process drawing on a source's shared budget: `python tests/e2e/limiter_probe.py DB URL N RATE`.

Acquires the source_c limiter from the shared SQLite store before each of N requests to URL (page 1)."""

from __future__ import annotations

import sys
import time

import requests

from common.clock import Deadline
from common.sources.ratelimit import SourceLimiter, parse_rate
from common.store.sqlite import SqliteStore


def main(db_path: str, url: str, count: int, rate: str) -> None:
    store = SqliteStore(db_path)
    limiter = SourceLimiter(store, "source_c", parse_rate(rate), time.time, time.sleep)
    deadline = Deadline(time.time, 300)
    with requests.Session() as session:
        for _ in range(count):
            limiter.acquire(deadline)
            session.get(url, params={"vs_currency": "usd", "order": "market_cap_desc", "per_page": 1, "page": 1},
                        timeout=10)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
