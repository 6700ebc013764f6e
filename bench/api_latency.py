"""GET latency and throughput of the real API over HTTP, next to two references measured in the same run.

    .venv/bin/python bench/api_latency.py                          # 1,000,000 rows, 100,000 runs
    .venv/bin/python bench/api_latency.py --rows 200000            # quicker (the store builds in ~25 s)
    .venv/bin/python bench/api_latency.py --workdir /tmp/al --keep  # keep the built store; the next run reuses it

Issue 9's benchmark. The embedded SQLite store gets `--rows` normalized records (3 sources x 500 coins, hourly)
and `--runs` ledger runs (hourly passes of 5 runs) through the store's own write methods. Three functions-framework
processes on 127.0.0.1: the real `http_api`, a no-op handler and a *minimal* handler (an indexed newest-first read
of 100 rows from a plain copy of the records, stdlib json), both defined below. Per case: the first (cold)
request, `--seq-requests` sequential keep-alive requests (p50/p99, client-side), then `wrk` with `--connections`
connections for `--duration` s (req/s, p50/p99). Missed targets are reported, not exit codes: exit 1 only when a
measurement could not be taken (a server did not start, a case did not answer 200, wrk failed).
See bench/README.md for the cases, the targets and how to read them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from http.client import HTTPConnection
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from common.store import NORMALIZED_FIELDS, SCHEMA_VERSION  # noqa: E402 (light: no Flask, no driver)

REF_DB_ENV = "BENCH_REF_DB"
META_FILE = "meta.json"
GENERATOR = 1  # bump when the generated data changes: a kept store of another generator is not reused
COINS, SOURCES, CHUNK = 500, ("source_a", "source_b", "source_c"), 20_000
RUNS_PER_PASS = 5  # pipeline + extract a, b, c + transform_load
WRK_MARK = "BENCH_WRK "
WRK_LUA = """done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('%s{"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\\n',
    "BENCH_WRK ", summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""
SEQ_P99_MS, DATA_FLOOR, DATA_GOAL, STATS_SHARE, P99_FACTOR, METRICS_MS = 10.0, 1.0, 1.5, 0.5, 2.0, 50.0


class BenchError(Exception):
    """A measurement could not be taken."""


# ---------------------------------------------------------------------------------------------------- references
_local = threading.local()


def noop_handler(request):
    """The floor: what functions-framework (gunicorn, Flask) costs for an answer that does nothing."""
    return "ok"


def minimal_handler(request):
    """The irreducible work of a page: an indexed newest-first read of 100 rows, one dict each, stdlib json."""
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = sqlite3.connect(os.environ[REF_DB_ENV], check_same_thread=False)
    cursor = conn.execute("SELECT * FROM records ORDER BY observed_at DESC LIMIT 100")
    names = [column[0] for column in cursor.description]
    body = json.dumps({"data": [dict(zip(names, row)) for row in cursor]})
    return body, 200, {"Content-Type": "application/json"}


# ---------------------------------------------------------------------------------------------------- the store
@dataclass
class Dataset:
    store_path: Path
    ref_path: Path
    meta: dict
    reused: bool


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch * 1000) % 1000:03d}Z"


def _run_id(epoch: float, stage: str, suffix: str) -> str:
    """Shaped like `common.ids.new_run_id` (time-sortable), but deterministic."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch)) + f"-{stage}-{suffix}"


def _coins() -> list[tuple[str, str, float, float]]:
    from local.generate_csv import COINS as REAL

    return [REAL[i] if i < len(REAL) else (f"Synthcoin {i}", f"SYN{i}", 0.5 + (i * 37 % 500), 1e6 * (1 + i % 97))
            for i in range(COINS)]


def generate_rows(rows: int, end: float):
    """`rows` records, newest tick at `end`: every hour each source reports each coin (A and C: price, cap, volume;
    B, the CSV: OHLC too), observed a few seconds apart per coin; every 25th price is missing."""
    from common.ids import asset_id, csv_source_id, idempotency_key, slug

    coins = _coins()
    ticks = math.ceil(rows / (COINS * len(SOURCES)))
    for n in range(rows):
        tick, rest = divmod(n, COINS * len(SOURCES))
        source, coin = SOURCES[rest // COINS], rest % COINS
        name, symbol, price0, supply = coins[coin]
        at = end - 3600 * (ticks - 1 - tick) - coin * 7 % 300 - 3600
        observed = _iso(at)
        price = float(f"{price0 * math.exp(0.05 * math.sin(tick / 17 + coin) + 0.002 * (n % 11)):.8g}")
        source_id = {"source_a": f"{slug(symbol)}-{slug(name)}", "source_b": csv_source_id(symbol, name),
                     "source_c": slug(name)}[source]
        ohlc = (float(f"{price * 0.99:.8g}"), float(f"{price * 1.02:.8g}"), float(f"{price * 0.97:.8g}")) \
            if source == "source_b" else (None, None, None)
        values = {
            "idempotency_key": idempotency_key(source, source_id, observed), "source": source, "source_id": source_id,
            "symbol": symbol, "observed_at": observed, "asset_id": asset_id(symbol, name), "name": name,
            "price_usd": None if n % 25 == 0 else price, "open_usd": ohlc[0], "high_usd": ohlc[1], "low_usd": ohlc[2],
            "market_cap_usd": round(price * supply, 2), "volume_24h_usd": round(price * supply * 0.04, 2),
            "ingested_at": _iso(at + 95), "run_id": _run_id(at, "transform_load", f"{tick:08x}")}
        yield tuple(values[field] for field in NORMALIZED_FIELDS)


def generate_runs(count: int, end: float):
    """`count` ledger runs, oldest first: hourly passes (pipeline + extract a/b/c + transform_load) ending at `end`,
    with the failures and partial runs a real ledger has; the newest pass succeeded."""
    from common.store import Run

    passes = math.ceil(count / RUNS_PER_PASS)
    skip = passes * RUNS_PER_PASS - count  # the oldest pass is cut short when count is not a multiple
    for p in range(passes):
        start = end - 3600 * (passes - 1 - p)
        newest = p == passes - 1
        stages, runs = [], []
        for i, (source, seconds, fail_every, partial_every) in enumerate(
                (("source_a", 2.1, 23, 17), ("source_b", 0.4, 97, 0), ("source_c", 95.0, 13, 7))):
            status = "succeeded" if newest else (
                "failed" if p % fail_every == i else "partial" if partial_every and p % partial_every == 1 else
                "succeeded")
            runs.append(_run("extract", source, status, start + 0.01 * i, seconds * (1 + p % 5 / 10), p, i))
        transform_failed = not newest and p % 101 == 3
        runs.append(_run("transform_load", None, "failed" if transform_failed else "succeeded",
                         start + 1, 3.2 * (1 + p % 7 / 10), p, 3))
        for run in runs:
            stages.append({key: getattr(run, key) for key in ("stage", "source", "run_id", "status", "duration_ms",
                                                                "rows_in", "rows_out", "quarantined")}
                          | {"errors": run.summary["errors"]})
        worst = {run.status for run in runs[:3]}
        status = "failed" if transform_failed else "partial" if worst - {"succeeded"} else "succeeded"
        longest = max(r.duration_ms for r in runs)
        top = Run(run_id=_run_id(start, "pipeline", f"{p:08x}"), stage="pipeline", source=None, status=status,
                  started_at=_iso(start - 0.5), finished_at=_iso(start + longest / 1000), duration_ms=longest + 600,
                  rows_in=sum(r.rows_in for r in runs), rows_out=runs[-1].rows_out,
                  summary={"warnings": [], "errors": [], "stages": stages})
        for index, run in enumerate([top, *runs]):
            if p * RUNS_PER_PASS + index >= skip:
                yield run


def _run(stage, source, status, start, seconds, p, i):
    from common.store import Run

    rows = 0 if status == "failed" else 1500 + p % 300
    failure = f"{source}: 429 Too Many Requests after 4 attempts" if source else "store busy: database is locked"
    summary = {"warnings": [f"{source}: rate limit wait 12.0 s"] if status == "partial" else [],
               "errors": [failure] if status == "failed" else []}
    if stage == "extract" and source != "source_b":
        summary["http"] = {"requests": 1 + p % 5, "retries": p % 3, "statuses": {"200": 1 + p % 5},
                           "waited_s": {"rate_limit": round(seconds / 3, 2)}}
    if stage == "extract":
        summary["drift"] = []
        summary["batches"] = 1 if rows else 0
    return Run(run_id=_run_id(start, stage, f"{p:06x}{i:02x}"), stage=stage,
               source=source, status=status, started_at=_iso(start), finished_at=_iso(start + seconds),
               duration_ms=round(seconds * 1000), rows_in=rows, rows_out=rows, quarantined=p % 4 if rows else 0,
               summary=summary)


def build_dataset(workdir: Path, rows: int, runs: int) -> Dataset:
    """The store and the reference copy for (rows, runs, schema version, generator): reused when a finished build
    is there (its meta.json is written last), else built from scratch."""
    home = Path(workdir) / f"api_latency-r{rows}-n{runs}-schema{SCHEMA_VERSION}-gen{GENERATOR}"
    store_path, ref_path, meta_path = home / "etl.sqlite3", home / "reference.sqlite3", home / META_FILE
    if meta_path.exists():
        return Dataset(store_path, ref_path, json.loads(meta_path.read_text()), reused=True)
    from common.config import Settings
    from common.wiring import build_store

    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    started, end = time.perf_counter(), float(int(time.time()) // 3600 * 3600)
    store = build_store(Settings(mongodb_uri=None, sqlite_path=str(store_path)))
    ref = sqlite3.connect(ref_path, isolation_level=None)
    ref.execute(f"CREATE TABLE records ({', '.join(NORMALIZED_FIELDS)})")
    assets = [{"asset_id": _asset(coin), "source": source, "symbol": coin[1], "name": coin[0]}
              for coin in _coins()[:rows] for source in SOURCES]
    chunk: list[tuple] = []
    for row in generate_rows(rows, end):
        chunk.append(row)
        if len(chunk) == CHUNK:
            _commit(store, ref, chunk, assets)
            chunk, assets = [], []
    if chunk:
        _commit(store, ref, chunk, assets)
    ref.execute("CREATE INDEX records_observed_at ON records (observed_at)")
    ref.close()
    for run in generate_runs(runs, end):
        store.save_run(run)
    store.close()
    middle = end - 3600 * (math.ceil(rows / (COINS * len(SOURCES))) // 2)
    meta = {"rows": rows, "runs": runs, "schema_version": SCHEMA_VERSION, "generator": GENERATOR, "end": _iso(end),
            "window": [_iso(middle - 86400), _iso(middle)], "build_s": round(time.perf_counter() - started, 1)}
    meta_path.write_text(json.dumps(meta))
    return Dataset(store_path, ref_path, meta, reused=False)


def _asset(coin) -> str:
    from common.ids import asset_id

    return asset_id(coin[1], coin[0])


def _commit(store, ref, chunk, assets) -> None:
    store.commit_transformed(None, chunk, [], assets)
    ref.execute("BEGIN")
    ref.executemany(f"INSERT INTO records VALUES ({', '.join('?' * len(NORMALIZED_FIELDS))})", chunk)
    ref.execute("COMMIT")


# ---------------------------------------------------------------------------------------------------- the cases
@dataclass(frozen=True)
class Case:
    name: str
    server: str  # "api" | "noop" | "minimal"
    path: str
    optional: bool = False  # a route another piece of work adds: skipped with a note while it answers 404


def deep_cursor(dataset: Dataset) -> str:
    """The cursor of a page half-way down the default order: the `next_cursor` the API hands out after the row at
    depth rows/2 (made by `common.api.params.encode_cursor`), read once in this process (one OFFSET walk) before
    the servers start, so no measured request pays for it and the bench does not depend on the cursor's layout."""
    from common.api.app import create_app
    from common.config import Settings
    from common.wiring import Wiring, build_store

    settings = Settings(mongodb_uri=None, sqlite_path=str(dataset.store_path))
    store = build_store(settings)
    try:
        answer = create_app(Wiring(settings=settings, store=store)).test_client().get(
            f"/data?limit=1&page={max(1, dataset.meta['rows'] // 2)}")
    finally:
        store.close()
    if answer.status_code != 200 or "next_cursor" not in answer.get_json()["pagination"]:
        raise BenchError(f"no next_cursor half-way down /data: {answer.status_code} {answer.get_data()[:300]!r}")
    return answer.get_json()["pagination"]["next_cursor"]


def api_cases(meta: dict, cursor: str) -> list[Case]:
    low, high = (value.replace(".000Z", "Z") for value in meta["window"])
    return [
        Case("data page 1", "api", "/data?limit=100"),
        Case("data cursor ~half deep", "api", f"/data?limit=100&cursor={cursor}"),
        Case("data page=N (OFFSET)", "api", f"/data?limit=100&page={max(1, meta['rows'] // 200)}"),
        Case("data symbol=BTC", "api", "/data?limit=100&symbol=BTC"),
        Case("data from/to (1 day)", "api", f"/data?limit=100&from={low}&to={high}"),
        Case("data view=latest", "api", "/data?view=latest&limit=100"),
        Case("stats", "api", "/stats"),
        Case("metrics", "api", "/metrics"),
        Case("health", "api", "/health"),
        Case("health/live", "api", "/health/live"),  # no target: the app's own floor (it touches no store)
        Case("status page /", "api", "/", optional=True),
    ]


REFERENCES = (Case("no-op handler", "noop", "/"), Case("minimal handler", "minimal", "/"))


# ---------------------------------------------------------------------------------------------------- measuring
def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def sequential(port: int, path: str, count: int, max_s: float) -> dict:
    """`count` requests one after another on one keep-alive connection (stopping early after `max_s`)."""
    conn = HTTPConnection("127.0.0.1", port, timeout=60)
    conn.connect()
    times, size, deadline = [], 0, time.perf_counter() + max_s
    try:
        while len(times) < count and (len(times) < 5 or time.perf_counter() < deadline):
            started = time.perf_counter()
            conn.request("GET", path)
            answer = conn.getresponse()
            body = answer.read()
            times.append((time.perf_counter() - started) * 1000)
            if answer.status != 200:
                raise BenchError(f"GET {path[:80]} answered {answer.status}: {body[:300]!r}")
            size = len(body)
    finally:
        conn.close()
    return {"n": len(times), "seq_p50_ms": round(percentile(times, 50), 3),
            "seq_p99_ms": round(percentile(times, 99), 3), "bytes": size}


def first_request(port: int, path: str) -> tuple[int, float]:
    conn = HTTPConnection("127.0.0.1", port, timeout=120)
    conn.connect()
    started = time.perf_counter()
    conn.request("GET", path)
    answer = conn.getresponse()
    answer.read()
    conn.close()
    return answer.status, (time.perf_counter() - started) * 1000


def parse_wrk(stdout: str) -> dict:
    line = next((line for line in stdout.splitlines() if line.startswith(WRK_MARK)), None)
    if line is None:
        raise BenchError(f"wrk printed no summary:\n{stdout[-1500:]}")
    raw = json.loads(line[len(WRK_MARK):])
    requests = raw["requests"]
    return {"requests": requests, "req_s": round(requests / (raw["duration_us"] / 1e6), 1),
            "p50_ms": raw["p50_us"] / 1000, "p99_ms": raw["p99_us"] / 1000, "non_2xx": raw["status"],
            "socket_errors": raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
            "bytes_per_response": round(raw["bytes"] / requests) if requests else 0}


def load(port: int, path: str, args: argparse.Namespace, script: Path) -> dict:
    command = ["wrk", f"-t{min(2, args.connections)}", f"-c{args.connections}", f"-d{args.duration}s",
               "--timeout", "30s", "-s", str(script), f"http://127.0.0.1:{port}{path}"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=args.duration + 90)
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with {proc.returncode}: {proc.stderr[-800:]}")
    result = parse_wrk(proc.stdout)
    if result["non_2xx"]:
        raise BenchError(f"wrk on {path[:80]}: {result['non_2xx']} of {result['requests']} answers were not 2xx")
    if not result["requests"]:  # none finished within --duration: slow, not broken (the verdicts fail it)
        result.update(p50_ms=None, p99_ms=None)
    return result


# ---------------------------------------------------------------------------------------------------- servers
def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(name: str, target: str, source: Path, env: dict, rundir: Path) -> tuple[subprocess.Popen, int]:
    """One functions-framework process on loopback, as `make run` starts the functions (its own session)."""
    port, home = free_port(), rundir / name
    home.mkdir(parents=True)
    with open(home / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "functions_framework", "--target", target, "--source", str(source),
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**env, "XDG_RUNTIME_DIR": str(home)})  # gunicorn >= 25 puts a control socket there
    return proc, port


def wait_ready(proc: subprocess.Popen, port: int, path: str, log: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            first_request(port, path)
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"server on port {port} did not start:\n{log.read_text()[-2000:]}") from None
            time.sleep(0.1)


# ---------------------------------------------------------------------------------------------------- verdicts
@dataclass(frozen=True)
class Verdict:
    case: str
    target: str
    value: float | None  # None: nothing measured (no request finished under load)
    limit: float
    passed: bool


def verdicts(results: dict[str, dict]) -> list[Verdict]:
    """Issue 9's targets: /data and /stats against the minimal and no-op handlers measured in the same run."""
    noop, minimal = results["no-op handler"], results["minimal handler"]
    out = []
    for case, r in results.items():
        def check(target: str, value: float | None, limit: float, at_least: bool = False) -> None:
            passed = value is not None and (value >= limit if at_least else value <= limit)
            out.append(Verdict(case, target, value, round(limit, 3), passed))

        if case.startswith("data ") or case == "stats":
            check(f"seq p99 <= {SEQ_P99_MS:g} ms", r["seq_p99_ms"], SEQ_P99_MS)
        if case.startswith("data "):
            check("load req/s >= minimal", r["req_s"], DATA_FLOOR * minimal["req_s"], at_least=True)
            check(f"goal: load req/s >= {DATA_GOAL:g}x minimal", r["req_s"], DATA_GOAL * minimal["req_s"],
                  at_least=True)
            check(f"load p99 <= {P99_FACTOR:g}x minimal's", r["load_p99_ms"], P99_FACTOR * minimal["load_p99_ms"])
        elif case == "stats":
            check(f"load req/s >= {STATS_SHARE:.0%} of no-op", r["req_s"], STATS_SHARE * noop["req_s"], at_least=True)
            check(f"load p99 <= {P99_FACTOR:g}x no-op's", r["load_p99_ms"], P99_FACTOR * noop["load_p99_ms"])
        elif case == "metrics":
            check(f"seq p99 <= {METRICS_MS:g} ms", r["seq_p99_ms"], METRICS_MS)
    return out


# ---------------------------------------------------------------------------------------------------- report
def log(message: str) -> None:
    sys.stderr.write(f"[api_latency {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def git_head() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "common", "functions"], cwd=REPO_ROOT,
                               capture_output=True, text=True).stdout.strip()
        return f"{head}{f' + {len(dirty.splitlines())} uncommitted file(s) in common/ functions/' if dirty else ''}"
    except OSError:
        return "unknown"


def best_reference(samples: list[dict]) -> dict:
    """The faster of the samples taken before and after the cases: comparing against it is the stricter reading."""
    return {"cold_ms": samples[0]["cold_ms"], "n": sum(s["n"] for s in samples), "bytes": samples[-1]["bytes"],
            **{key: min((s[key] for s in samples if s[key] is not None), default=None)
               for key in ("seq_p50_ms", "seq_p99_ms", "load_p50_ms", "load_p99_ms")},
            "req_s": max(s["req_s"] for s in samples), "socket_errors": sum(s["socket_errors"] for s in samples)}


def origin(dataset: Dataset) -> str:
    return "reused" if dataset.reused else f"built in {dataset.meta['build_s']} s"


def report(args, dataset: Dataset, results: dict, samples: dict, skipped: dict, checks: list[Verdict]) -> str:
    noop, minimal = results["no-op handler"]["req_s"], results["minimal handler"]["req_s"]
    lines = [
        "",
        f"API latency benchmark  (python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f} at the end, git {git_head()})",
        f"  store     {dataset.meta['rows']:,} rows, {dataset.meta['runs']:,} runs, schema {SCHEMA_VERSION}: "
        f"{dataset.store_path} ({origin(dataset)})",
        f"  load      wrk -t{min(2, args.connections)} -c{args.connections} -d{args.duration}s per case (req/s, "
        f"p50/p99 as wrk measures them); sequential: up to {args.seq_requests} requests on one keep-alive "
        "connection, timed client-side; cold = the first request of that URL since the server started",
        "  references (no-op, minimal) are measured before and after the cases; the faster sample is used: "
        + "; ".join(f"{name} {', '.join(format(s['req_s'], '.0f') for s in runs)} req/s"
                    for name, runs in samples.items()),
        "",
        f"  {'case':<24}{'bytes':>8}{'cold ms':>9}{'seq p50':>9}{'seq p99':>9}{'req/s':>9}{'load p50':>10}"
        f"{'load p99':>10}{'x minimal':>11}{'x no-op':>9}{'errors':>8}",
    ]
    for name, r in results.items():
        under_load = "".join("-".rjust(10) if r[key] is None else f"{r[key]:>10.2f}" for key in ("load_p50_ms",
                                                                                                "load_p99_ms"))
        lines.append(f"  {name:<24}{r['bytes']:>8}{r['cold_ms']:>9.1f}{r['seq_p50_ms']:>9.2f}{r['seq_p99_ms']:>9.2f}"
                     f"{r['req_s']:>9.0f}{under_load}{r['req_s'] / minimal:>11.2f}{r['req_s'] / noop:>9.2f}"
                     f"{r['socket_errors']:>8}")
    for name, reason in skipped.items():
        lines.append(f"  {name:<24}skipped: {reason}")
    lines += ["", "  targets (issue 9; times in ms; a 'goal' is reported, not required)"]
    for v in checks:
        mark = ("met" if v.passed else "not met") if v.target.startswith("goal") else "PASS" if v.passed else "FAIL <<<"
        value = "-" if v.value is None else f"{v.value:.2f}"
        lines.append(f"    {mark:<9} {v.case:<24} {v.target:<34} {value:>9}  (limit {v.limit:.2f})")
    required = [v for v in checks if not v.target.startswith("goal")]
    missed = sorted({f"{v.case}: {v.target}" for v in required if not v.passed})
    lines += ["", f"  overall: {len(required) - len(missed)} of {len(required)} targets met"
              + (f"; missed: {'; '.join(missed)}" if missed else "")]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- main
def measure(args, dataset: Dataset, rundir: Path) -> tuple[dict, dict, dict]:
    cursor = deep_cursor(dataset)
    env = {key: value for key, value in os.environ.items() if key != "MONGODB_URI"}
    env.update(PYTHONPATH=str(REPO_ROOT), SQLITE_PATH=str(dataset.store_path), **{REF_DB_ENV: str(dataset.ref_path)})
    script = rundir / "summary.lua"
    script.write_text(WRK_LUA)
    servers, ports = [], {}
    try:
        for name, target, source, probe in (
                ("api", "http_api", REPO_ROOT / "functions" / "http_api" / "main.py", "/health/live"),
                ("noop", "noop_handler", Path(__file__).resolve(), "/"),
                ("minimal", "minimal_handler", Path(__file__).resolve(), "/")):
            proc, ports[name] = start_server(name, target, source, env, rundir)
            servers.append(proc)
            wait_ready(proc, ports[name], probe, rundir / name / "server.log")
        cases, skipped, cold = [*REFERENCES, *api_cases(dataset.meta, cursor)], {}, {}
        for case in cases:  # every URL's first request, before any case is warmed by another
            status, cold[case.name] = first_request(ports[case.server], case.path)
            if case.optional and status == 404:
                skipped[case.name] = f"{case.path} answers 404 (not built yet)"
            elif status != 200:
                raise BenchError(f"{case.name}: GET {case.path[:80]} answered {status}")
        samples: dict[str, list[dict]] = {ref.name: [] for ref in REFERENCES}
        results: dict[str, dict] = {}
        for case in [*REFERENCES, *(c for c in cases[len(REFERENCES):] if c.name not in skipped), *REFERENCES]:
            log(f"{case.name}: {args.seq_requests} sequential requests, then wrk for {args.duration} s")
            seq = sequential(ports[case.server], case.path, args.seq_requests, args.seq_max_s)
            loaded = load(ports[case.server], case.path, args, script)
            result = {"cold_ms": round(cold[case.name], 2), **seq, "req_s": loaded["req_s"],
                      "load_p50_ms": loaded["p50_ms"], "load_p99_ms": loaded["p99_ms"],
                      "socket_errors": loaded["socket_errors"]}
            if case.name in samples:
                if result["load_p99_ms"] is None:
                    raise BenchError(f"{case.name}: no request finished under load in {args.duration} s")
                samples[case.name].append(result)
            else:
                results[case.name] = result
        results = {**{name: best_reference(runs) for name, runs in samples.items()}, **results}
        return results, samples, skipped
    finally:
        from local.run_local import stop

        stop(servers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="normalized records (default 1,000,000)")
    parser.add_argument("--runs", type=int, default=100_000, help="ledger runs (default 100,000)")
    parser.add_argument("--duration", type=int, default=5, help="seconds of wrk per case (default 5)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    parser.add_argument("--seq-requests", type=int, default=200, help="sequential requests per case (default 200)")
    parser.add_argument("--seq-max-s", type=float, default=20.0,
                        help="stop a case's sequential requests after this long (at least 5 are made; default 20)")
    parser.add_argument("--workdir", help="where the store is built (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the built store; a later run with the same "
                                                            "--workdir, --rows and --runs reuses it")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rows < 2 * COINS * len(SOURCES) // 10 or args.runs < RUNS_PER_PASS or args.connections < 1:
        print("api_latency: --rows must be at least 300, --runs at least 5, --connections at least 1", file=sys.stderr)
        return 2
    if not shutil.which("wrk"):
        print("api_latency: wrk is not installed (Debian: apt-get install -y wrk)", file=sys.stderr)
        return 1
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="api_latency_"))
    rundir = workdir / f"run-{os.getpid()}"
    dataset = None
    try:
        log(f"store: {args.rows:,} rows, {args.runs:,} runs under {workdir}")
        dataset = build_dataset(workdir, args.rows, args.runs)
        log(f"store {origin(dataset)}: {dataset.store_path}")
        rundir.mkdir(parents=True)
        results, samples, skipped = measure(args, dataset, rundir)
        checks = verdicts(results)
        print(report(args, dataset, results, samples, skipped, checks))
        required = [v for v in checks if not v.target.startswith("goal")]
        print(json.dumps({"rows": args.rows, "runs": args.runs, "schema_version": SCHEMA_VERSION,
                          "duration_s": args.duration, "connections": args.connections, "cases": results,
                          "reference_samples": samples, "skipped": skipped,
                          "verdicts": [asdict(v) for v in checks], "all_pass": all(v.passed for v in required)}))
        return 0
    except BenchError as exc:
        print(f"api_latency: ERROR (measurement invalid): {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
        if not args.keep:
            if not args.workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            elif dataset is not None and not dataset.reused:
                shutil.rmtree(dataset.store_path.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
