"""GET /data at a million rows: first page, a deep cursor page, OFFSET page 5000, filters, view=latest.

    .venv/bin/python bench/api_data.py                  # 1,000,000 rows (loading takes a minute or two)
    .venv/bin/python bench/api_data.py --rows 200000    # quicker
    .venv/bin/python bench/api_data.py --db /tmp/api.sqlite3 --keep   # reuse a loaded store on the next run

Requests go through the Flask app in process (test client: no HTTP server, no network), sequentially, after
one warm-up request each; p50/p99 of `--repeat` requests. A measurement, not a test: nothing fails on a figure.
The last line of the report is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from common.api.app import create_app  # noqa: E402
from common.api.params import encode_cursor  # noqa: E402
from common.config import Settings  # noqa: E402
from common.store import NORMALIZED_FIELDS, DataQuery  # noqa: E402
from common.store.sqlite import SqliteStore  # noqa: E402
from common.wiring import Wiring  # noqa: E402

SOURCES = ("source_a", "source_b", "source_c")
COINS = 500
CHUNK = 20_000


def load(store: SqliteStore, rows: int) -> None:
    """`rows` records: 500 coins x 3 sources, one observation a minute each, every tenth price missing."""
    base = time.mktime(time.strptime("2024-01-01", "%Y-%m-%d")) - time.timezone
    assets = [{"asset_id": f"c{c}-coin{c}", "source": s, "symbol": f"C{c}", "name": f"Coin {c}"}
              for c in range(COINS) for s in SOURCES]
    chunk = []
    for n in range(rows):
        coin, source = n % COINS, SOURCES[(n // COINS) % 3]
        at = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(base + 60 * (n // (COINS * 3))))
        values = {"idempotency_key": f"k{n}", "source": source, "source_id": f"c{coin}", "symbol": f"C{coin}",
                  "observed_at": at, "asset_id": f"c{coin}-coin{coin}", "name": f"Coin {coin}",
                  "price_usd": None if n % 10 == 0 else (n * 7919 % 100_000) / 7.0, "open_usd": None,
                  "high_usd": None, "low_usd": None, "market_cap_usd": float(n % 9973) * 1e6,
                  "volume_24h_usd": float(n % 7919) * 1e3, "ingested_at": at, "run_id": "bench"}
        chunk.append(tuple(values[f] for f in NORMALIZED_FIELDS))
        if len(chunk) == CHUNK:
            store.commit_transformed(None, chunk, [], assets if n < CHUNK else [])
            chunk = []
    if chunk:
        store.commit_transformed(None, chunk, [], assets)


def measure(client, path: str, repeat: int) -> dict:
    response = client.get(path)  # warm-up (and the totals cache fill, as in a running API)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200
    times.sort()
    return {"p50_ms": round(statistics.median(times), 2), "p99_ms": round(times[int(0.99 * (len(times) - 1))], 2),
            "bytes": len(response.get_data())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--db", default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    path = args.db or os.path.join(tempfile.mkdtemp(prefix="api_data_"), "etl.sqlite3")
    store = SqliteStore(path)
    if store.count_normalized() != args.rows:
        started = time.perf_counter()
        load(store, args.rows)
        print(f"loaded {args.rows} rows in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    app = create_app(Wiring(settings=Settings(sqlite_path=path), store=store))
    client = app.test_client()
    deep = args.rows // 2
    deep_query = DataQuery(limit=1, page=deep)  # the row before the cursor page, read once (OFFSET) for the setup
    cursor = encode_cursor(DataQuery(), store.read_page(deep_query).after)
    price_deep = DataQuery(sort_by="price_usd", limit=1, page=deep)
    price_cursor = encode_cursor(DataQuery(sort_by="price_usd"), store.read_page(price_deep).after)
    cases = {
        "page 1 (limit=100)": "/data?limit=100",
        f"cursor page {deep} rows deep": f"/data?limit=100&cursor={cursor}",
        f"cursor page {deep} deep, sort_by=price_usd": f"/data?limit=100&sort_by=price_usd&cursor={price_cursor}",
        "page=5000 (OFFSET 499,900)": "/data?limit=100&page=5000",
        "symbol=C7": "/data?limit=100&symbol=C7",
        "symbol=C1,C2,C3 sort_by=price_usd": "/data?limit=100&symbol=C1,C2,C3&sort_by=price_usd",
        "from/to (one hour)": "/data?limit=100&from=2024-01-01T03:00:00Z&to=2024-01-01T04:00:00Z",
        "view=latest (100 assets)": "/data?view=latest&limit=100",
    }
    results = {}
    for name, url in cases.items():
        results[name] = measure(client, url, args.repeat if "page=5000" not in url else max(5, args.repeat // 10))
        print(f"{name:45s} p50 {results[name]['p50_ms']:9.2f} ms  p99 {results[name]['p99_ms']:9.2f} ms  "
              f"{results[name]['bytes']} bytes")
    store.close()
    if not args.keep and not args.db:
        os.remove(path)
    print(json.dumps({"rows": args.rows, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
