"""CSV ingest benchmark: the pipeline against a raw csv+SQLite floor, a no-op rerun, and memory flatness.

    .venv/bin/python bench/ingest_csv.py                      # 1,000,000 rows (a minute or two)
    .venv/bin/python bench/ingest_csv.py --rows 200000        # quicker
    .venv/bin/python bench/ingest_csv.py --workdir /tmp/b --keep   # keep the CSVs and databases to inspect

One invocation generates the input (`local.generate_csv`) and runs every measurement in its own fresh
subprocess (this same file with `--child ...`), so the ratios compare numbers taken minutes apart on the same
machine. See bench/README.md for what each number means. Exit code 0 unless something errored or a row count
did not verify; missed targets are reported with FAIL markers, not with the exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Targets (see bench/README.md).
MAX_RATIO_TO_FLOOR = 4.0  # pipeline work time / floor work time
MAX_PEAK_RSS_MB = 200.0  # peak RSS of the pipeline child at --rows, MiB
MAX_RSS_GROWTH = 1.25  # peak RSS at --rows / peak RSS at --small-rows
MAX_NOOP_PCT = 2.0  # no-op rerun time as a percentage of the first run's time


class BenchError(Exception):
    """A measurement could not be taken (child crashed, wrong row count, ...)."""


# ----------------------------------------------------------------------------------------------------------
# children: each runs in a fresh interpreter and prints one JSON line as the last line of stdout
# ----------------------------------------------------------------------------------------------------------
def _proc_status_kib(field: str) -> int | None:
    """VmRSS / VmHWM of this process from /proc (KiB), or None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _memory_report(baseline_rss_kib: int | None) -> dict:
    return {
        # ru_maxrss is KiB on Linux. Caveat: Linux carries the spawning process's peak over the exec, so this is
        # max(parent RSS at spawn, our peak); the parent keeps itself small so this is our own peak in practice.
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "vm_hwm_kib": _proc_status_kib("VmHWM"),  # high-water mark of this address space only
        # the transform's normalize worker (a reaped child process): its peak counts too, added to ours below
        "children_maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        "baseline_rss_kib": baseline_rss_kib,  # RSS after imports, before the timed work
    }


def _cpu_s() -> float:
    """CPU seconds of this process plus its reaped children (the transform's normalize worker)."""
    times = os.times()
    return time.process_time() + times.children_user + times.children_system


def child_floor(csv_path: str, db_path: str) -> dict:
    """csv.reader over the file + executemany of the raw rows (strings as read) into a fresh SQLite file."""
    import csv
    import sqlite3

    baseline = _proc_status_kib("VmRSS")
    started, cpu_started = time.perf_counter(), _cpu_s()
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    with open(csv_path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        conn.execute(f"CREATE TABLE raw ({', '.join(f'c{i}' for i in range(len(header)))})")
        conn.execute("BEGIN")
        conn.executemany(f"INSERT INTO raw VALUES ({', '.join('?' * len(header))})", reader)
        conn.execute("COMMIT")
    conn.close()  # the final WAL checkpoint is part of the work, as it is for the pipeline
    work_s, cpu_s = time.perf_counter() - started, _cpu_s() - cpu_started
    check = sqlite3.connect(db_path)
    count = check.execute("SELECT COUNT(*) FROM raw").fetchone()[0]
    check.close()
    return {"kind": "floor", "work_s": work_s, "cpu_s": cpu_s, "rows_loaded": count, **_memory_report(baseline)}


def child_pipeline(kind: str, csv_path: str, db_path: str) -> dict:
    """One pass over source B (extract + transform/load, through the orchestrator) into the embedded SQLite store at
    `db_path` (fresh or not)."""
    imports_started = time.perf_counter()
    from common.config import Settings
    from common.invokers import InProcessInvoker
    from common.orchestrator import run_pass
    from common.store.sqlite import SqliteStore
    from common.wiring import Wiring, build_store

    import_s = time.perf_counter() - imports_started
    settings = Settings(mongodb_uri=None, sqlite_path=db_path, source_b_path=csv_path)
    baseline = _proc_status_kib("VmRSS")

    started, cpu_started = time.perf_counter(), _cpu_s()
    store = build_store(settings)
    wiring = Wiring(settings=settings, store=store)
    one_pass = run_pass(wiring, InProcessInvoker(wiring), sources=("source_b",),
                        notify=lambda *_args, **_kwargs: {"skipped": "bench: alerts are not measured"})
    store.close()  # as the floor does: closing the last connection checkpoints the WAL
    work_s, cpu_s = time.perf_counter() - started, _cpu_s() - cpu_started

    check = SqliteStore(db_path)
    counts = {
        "rows_loaded": check.count_normalized(),
        "quarantined": check.count_quarantine(),
        "pending_batches": check.count_raw_batches(pending_only=True),
        "raw_batches": check.count_raw_batches(),
    }
    runs = {}
    for entry in one_pass.summary.get("stages", []):  # a stage invoked more than once (partial) is summed
        run = check.get_run(entry["run_id"]) if entry["run_id"] else None
        summary = run.summary if run else {"errors": entry["errors"]}
        seen = runs.setdefault(entry["stage"], {"status": None, "duration_ms": 0, "rows_in": 0, "rows_out": 0,
                                                "quarantined": 0, "batches": 0, "warnings": [], "errors": []})
        seen["status"] = entry["status"]
        for counter in ("duration_ms", "rows_in", "rows_out", "quarantined"):
            seen[counter] += entry[counter] or 0
        seen["batches"] += summary.get("batches") or 0
        seen["warnings"] += summary.get("warnings", [])
        seen["errors"] += summary.get("errors", [])
    check.close()
    return {"kind": kind, "work_s": work_s, "cpu_s": cpu_s, "import_s": import_s, **counts, "runs": runs,
            "pass_status": one_pass.status, **_memory_report(baseline)}


def child_main(args: argparse.Namespace) -> int:
    if args.child == "floor":
        result = child_floor(args.csv, args.db)
    else:
        result = child_pipeline(args.child, args.csv, args.db)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


# ----------------------------------------------------------------------------------------------------------
# parent: generate the inputs, spawn the children, check, report
# ----------------------------------------------------------------------------------------------------------
def log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def spawn(kind: str, csv_path: Path, db_path: Path) -> dict:
    """Run one child; its JSON plus `wall_s` (spawn to exit, as seen from here, interpreter start-up included)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("MONGODB_URI", None)  # children build their settings explicitly; never touch a real database
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--csv", str(csv_path),
               "--db", str(db_path)]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    wall_s = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError(f"child {kind!r} exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise BenchError(f"child {kind!r} printed no JSON result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    result["wall_s"] = wall_s
    result["stderr"] = proc.stderr.strip()
    return result


def generate_csv(path: Path, rows: int) -> dict:
    from local.generate_csv import generate

    started = time.perf_counter()
    written = generate(str(path), rows)
    elapsed = time.perf_counter() - started
    if written != rows:
        raise BenchError(f"generator wrote {written} rows, expected {rows}")
    return {"rows": written, "bytes": path.stat().st_size, "generate_s": elapsed}


def remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def db_bytes(path: Path) -> int:
    return sum(Path(str(path) + s).stat().st_size for s in ("", "-wal") if Path(str(path) + s).exists())


def peak_mib(result: dict) -> float:
    """Our peak plus the largest child's (the normalize worker runs beside us): an upper bound of the total."""
    return (result["ru_maxrss_kib"] + result.get("children_maxrss_kib", 0)) / 1024


def check_pipeline(result: dict, expected_rows: int, *, noop: bool = False) -> list[str]:
    """Problems that make a pipeline measurement invalid (not missed targets)."""
    problems = []
    if result.get("pass_status") != "succeeded":
        problems.append(f"{result['kind']}: the pass {result.get('pass_status')}")
    for stage, run in result["runs"].items():
        if run["status"] != "succeeded":
            problems.append(f"{result['kind']}: {stage} run {run['status']}: {run['errors'] or run['warnings']}")
    if result["rows_loaded"] != expected_rows:
        problems.append(f"{result['kind']}: count_normalized() = {result['rows_loaded']:,}, expected {expected_rows:,}")
    if result["pending_batches"]:
        problems.append(f"{result['kind']}: {result['pending_batches']} raw batches still pending")
    if noop:
        for stage, run in result["runs"].items():
            if run["rows_in"] or run["rows_out"]:
                problems.append(f"noop: {stage} processed rows ({run['rows_in']} in, {run['rows_out']} out)")
    return problems


def git_state() -> dict:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "common", "local"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.splitlines()
        return {"head": head or None, "uncommitted_in_common_local": len(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"head": None, "uncommitted_in_common_local": None}


def mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL <<<<<<"


def parent_main(args: argparse.Namespace) -> int:
    rows, small_rows = args.rows, args.small_rows
    if min(rows, small_rows, args.floor_runs, args.pipeline_runs) < 1:
        raise BenchError("--rows, --small-rows, --floor-runs and --pipeline-runs must be >= 1")
    if args.workdir:
        workdir = Path(args.workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        owns_workdir = False
    else:
        workdir = Path(tempfile.mkdtemp(prefix="bench_ingest_csv_"))
        owns_workdir = True
    big_csv, small_csv = workdir / f"Historical_Data_{rows}.csv", workdir / f"Historical_Data_{small_rows}.csv"
    floor_db, pipe_db, small_db = workdir / "floor.sqlite3", workdir / "pipeline.sqlite3", workdir / "small.sqlite3"
    created = [big_csv, small_csv]
    try:
        for db in (floor_db, pipe_db, small_db):
            remove_db(db)
        log(f"workdir {workdir}")
        log(f"generating {rows:,} rows")
        big = generate_csv(big_csv, rows)
        if small_rows == rows:
            small_csv, small = big_csv, big
        else:
            log(f"generating {small_rows:,} rows")
            small = generate_csv(small_csv, small_rows)
        parent_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        # Interleaved (floor, pipeline, floor, ...) so slow spells on a noisy machine hit both; the fastest of
        # each is used. The floor is cheap, so it is sampled several times by default: a floor measured in a slow
        # moment would flatter the ratio, the minimum cannot.
        floors, pipes = [], []
        plan = (("floor", args.floor_runs, floor_db, floors, "csv.reader + executemany, fresh SQLite file"),
                ("pipeline", args.pipeline_runs, pipe_db, pipes, "extract + transform/load, fresh store"))
        for index in range(max(args.floor_runs, args.pipeline_runs)):
            for kind, runs, db, samples, what in plan:
                if index < runs:
                    log(f"{kind} #{index + 1}/{runs}: {what}")
                    remove_db(db)
                    samples.append(spawn(kind, big_csv, db))
                    samples[-1]["db_bytes"] = db_bytes(db)
                    log(f"{kind} #{index + 1}: {samples[-1]['work_s']:.2f}s")
        floor = min(floors, key=lambda r: r["work_s"])
        pipe = min(pipes, key=lambda r: r["work_s"])
        log("no-op rerun: same file, same store as the last pipeline run")
        noop = spawn("noop", big_csv, pipe_db)
        log(f"no-op: {noop['work_s']:.3f}s")
        log(f"pipeline at {small_rows:,} rows, fresh store (memory flatness)")
        small_run = spawn("pipeline_small", small_csv, small_db)
        log(f"small pipeline: {small_run['work_s']:.2f}s")
        if not args.keep:
            remove_db(floor_db)  # the rest goes in `finally`

        problems = []
        for sample in floors:
            if sample["rows_loaded"] != rows:
                problems.append(f"floor: loaded {sample['rows_loaded']:,} rows, expected {rows:,}")
        for sample in pipes:
            problems += check_pipeline(sample, rows)
        problems += check_pipeline(noop, rows, noop=True)
        problems += check_pipeline(small_run, small_rows)

        ratio = pipe["work_s"] / floor["work_s"]
        wall_ratio = pipe["wall_s"] / floor["wall_s"]
        cpu_ratio = pipe["cpu_s"] / floor["cpu_s"] if floor["cpu_s"] > 0 else float("nan")
        peak, peak_small = max(peak_mib(sample) for sample in pipes), peak_mib(small_run)
        growth = peak / peak_small
        noop_pct = 100 * noop["work_s"] / pipe["work_s"]
        targets = {
            "ratio_to_floor": {"value": round(ratio, 3), "rule": f"<= {MAX_RATIO_TO_FLOOR:g}",
                               "pass": ratio <= MAX_RATIO_TO_FLOOR},
            "peak_rss_mb": {"value": round(peak, 1), "rule": f"< {MAX_PEAK_RSS_MB:g} MiB (ru_maxrss at --rows)",
                            "pass": peak < MAX_PEAK_RSS_MB},
            "rss_flat": {"value": round(growth, 3),
                         "rule": f"peak RSS at {rows:,} rows <= {MAX_RSS_GROWTH:g} x peak RSS at {small_rows:,} rows",
                         "pass": growth <= MAX_RSS_GROWTH},
            "noop_pct_of_first": {"value": round(noop_pct, 3), "rule": f"< {MAX_NOOP_PCT:g} %",
                                  "pass": noop_pct < MAX_NOOP_PCT},
        }

        # ---------------------------------------------------------------- readable report
        out = []
        add = out.append
        git = git_state()
        add("")
        add(f"CSV ingest benchmark  (python {sys.version.split()[0]}, {os.cpu_count()} CPUs, git {git['head']}, "
            f"{git['uncommitted_in_common_local']} uncommitted file(s) under common/ local/)")
        add(f"  input     {rows:,} rows, {big['bytes'] / 1e6:.1f} MB  (generated in {big['generate_s']:.1f}s); "
            f"small input {small_rows:,} rows, {small['bytes'] / 1e6:.1f} MB")
        add(f"  workdir   {workdir}{'  (kept)' if args.keep else '  (removed at exit)'}")
        floor_samples = ", ".join(f"{r['work_s']:.3f}" for r in floors)
        pipe_samples = ", ".join(f"{r['work_s']:.3f}" for r in pipes)
        add(f"  samples   floor work s: {floor_samples}; pipeline work s: {pipe_samples}  (the fastest of each is "
            f"used; floor spread max/min {max(r['work_s'] for r in floors) / floor['work_s']:.2f}x)")
        add("")
        add("  timings: 'work' = perf_counter inside the child around the work only (connect .. close);")
        add("           'cpu'  = user+sys of the child and its normalize worker over the same span (less sensitive to noise);")
        add("           'wall' = child spawn to exit seen from the parent (interpreter start-up + imports included)")
        add(f"  {'':<22}{'work s':>9}{'cpu s':>9}{'wall s':>9}{'overhead s':>12}{'rows/s (work)':>15}"
            f"{'peak RSS MiB':>14}{'db MB':>8}")
        for label, res, n, size in (("floor (csv+sqlite)", floor, rows, floor["db_bytes"]),
                                    ("pipeline", pipe, rows, pipe["db_bytes"]),
                                    ("no-op rerun", noop, rows, None),
                                    (f"pipeline {small_rows:,}", small_run, small_rows, None)):
            rate = f"{n / res['work_s']:,.0f}" if res["kind"] != "noop" else "-"
            add(f"  {label:<22}{res['work_s']:>9.3f}{res['cpu_s']:>9.3f}{res['wall_s']:>9.3f}"
                f"{res['wall_s'] - res['work_s']:>12.3f}"
                f"{rate:>15}{peak_mib(res):>14.1f}{(f'{size / 1e6:.0f}' if size else '-'):>8}")
        add("")
        for label, res in (("pipeline", pipe), ("no-op rerun", noop), (f"pipeline {small_rows:,}", small_run)):
            ext, tr = res["runs"]["extract"], res["runs"]["transform_load"]
            add(f"  {label:<22} extract {ext['status']} {ext['duration_ms'] / 1000:.3f}s ({ext['batches']} batches, "
                f"{ext['rows_out']:,} rows) | transform_load {tr['status']} {tr['duration_ms'] / 1000:.3f}s "
                f"({tr['batches']} batches, {tr['rows_out']:,} rows, {tr['quarantined']} quarantined) | "
                f"normalized rows {res['rows_loaded']:,}")
        add("")
        add("  memory (MiB): peak = the child's peak RSS + its largest child's (the normalize worker; an upper bound of "
            "both together); VmHWM = the child's own address space only; baseline = RSS after imports")
        for label, res in (("floor", floor), ("pipeline", pipe), ("no-op rerun", noop),
                           (f"pipeline {small_rows:,}", small_run)):
            hwm = res["vm_hwm_kib"] / 1024 if res["vm_hwm_kib"] else float("nan")
            base = res["baseline_rss_kib"] / 1024 if res["baseline_rss_kib"] else float("nan")
            worker = res.get("children_maxrss_kib", 0) / 1024
            add(f"  {label:<22} peak {peak_mib(res):7.1f} (worker {worker:5.1f})   VmHWM {hwm:7.1f}   "
                f"baseline {base:6.1f}   growth over baseline {peak_mib(res) - base:7.1f}")
        add(f"  (parent's own peak RSS when spawning: {parent_rss_mib:.1f} MiB; "
            "a child's ru_maxrss cannot be below it)")
        add("")
        add("  targets")
        for name, shown, rule, key in (
            ("ratio_to_floor", f"{ratio:.2f}x", f"pipeline work / floor work <= {MAX_RATIO_TO_FLOOR:g} "
             f"(for reference: cpu {cpu_ratio:.2f}x, wall incl. start-up {wall_ratio:.2f}x)", "ratio_to_floor"),
            ("peak_rss_mb", f"{peak:.1f}", f"peak RSS at {rows:,} rows < {MAX_PEAK_RSS_MB:g} MiB", "peak_rss_mb"),
            ("rss_growth_ratio", f"{growth:.3f}", f"{peak:.1f} / {peak_small:.1f} MiB; flat means <= "
             f"{MAX_RSS_GROWTH:g}", "rss_flat"),
            ("noop_pct_of_first", f"{noop_pct:.3f}%", f"no-op rerun work / first run work < {MAX_NOOP_PCT:g}%",
             "noop_pct_of_first"),
        ):
            add(f"    {name:<18} {shown:>9}   {rule:<80} {mark(targets[key]['pass'])}")
        if rows <= small_rows:
            add(f"    note: --rows {rows:,} <= --small-rows {small_rows:,}, so the flatness check says little")
        for res in (floor, pipe, noop, small_run):
            if res["stderr"]:
                add(f"  child {res['kind']} stderr: {res['stderr'][-1500:]}")
        if problems:
            add("")
            for problem in problems:
                add(f"  ERROR (measurement invalid): {problem}")
        all_pass = all(t["pass"] for t in targets.values())
        add("")
        missed = ", ".join(name for name, target in targets.items() if not target["pass"])
        add(f"  overall: {'all targets met' if all_pass else 'FAIL: ' + missed}"
            f"{'; ROW COUNTS DID NOT VERIFY' if problems else ''}")
        print("\n".join(out))

        summary = {
            "rows": rows,
            "floor_s": round(floor["work_s"], 4),
            "pipeline_s": round(pipe["work_s"], 4),
            "rows_per_s": round(rows / pipe["work_s"]),
            "ratio_to_floor": round(ratio, 3),
            "peak_rss_mb": round(peak, 1),
            "peak_rss_mb_small": round(peak_small, 1),
            "small_rows": small_rows,
            "rss_growth_ratio": round(growth, 3),
            "noop_s": round(noop["work_s"], 4),
            "noop_pct_of_first": round(noop_pct, 3),
            "floor_samples_s": [round(r["work_s"], 4) for r in floors],
            "pipeline_samples_s": [round(r["work_s"], 4) for r in pipes],
            "floor_cpu_s": round(floor["cpu_s"], 3),
            "pipeline_cpu_s": round(pipe["cpu_s"], 3),
            "cpu_ratio_to_floor": round(cpu_ratio, 3),
            "floor_wall_s": round(floor["wall_s"], 3),
            "pipeline_wall_s": round(pipe["wall_s"], 3),
            "noop_wall_s": round(noop["wall_s"], 3),
            "extract_s": round(pipe["runs"]["extract"]["duration_ms"] / 1000, 3),
            "transform_load_s": round(pipe["runs"]["transform_load"]["duration_ms"] / 1000, 3),
            "rows_loaded": pipe["rows_loaded"],
            "noop_rows_loaded": noop["rows_loaded"],
            "verified": not problems,
            "targets": targets,
            "all_pass": all_pass,
        }
        print(json.dumps(summary))
        return 1 if problems else 0
    finally:
        if not args.keep:
            if owns_workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                for path in created:
                    path.unlink(missing_ok=True)
                for db in (floor_db, pipe_db, small_db):
                    remove_db(db)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the main input (default 1,000,000)")
    parser.add_argument("--small-rows", type=int, default=100_000,
                        help="rows in the input used for the memory-flatness comparison (default 100,000)")
    parser.add_argument("--workdir", help="directory for the CSVs and databases (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated CSVs and databases")
    parser.add_argument("--floor-runs", type=int, default=3,
                        help="floor samples, interleaved with the pipeline runs; the fastest is used (default 3)")
    parser.add_argument("--pipeline-runs", type=int, default=1,
                        help="pipeline samples on a fresh store each; the fastest is used (default 1)")
    parser.add_argument("--child", choices=("floor", "pipeline", "noop", "pipeline_small"), help=argparse.SUPPRESS)
    parser.add_argument("--csv", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        return child_main(args)
    try:
        return parent_main(args)
    except BenchError as exc:
        print(f"bench error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
