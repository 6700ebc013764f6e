"""`make run`: the whole stack on one machine, no Docker — every function under functions-framework on
loopback, one pipeline run at start, then the trigger every hour until Ctrl-C.

Ports: API 8080 (PORT), stage functions on the next ports. Store: the embedded SQLite file (SQLITE_PATH).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from local.trigger import STAGES, Endpoints, run_pipeline, wait_until_up

ROOT = Path(__file__).resolve().parent.parent
DEMO_RATES = {"a": "10/10s", "c": "6/10s"}
FUNCTIONS = ("http_api", "extract_source_a", "extract_source_b", "extract_source_c", "transform_load")


def start_function(name: str, host: str, port: int, env: dict[str, str]) -> subprocess.Popen:
    """One function as its own functions-framework process (as on a FaaS platform)."""
    # gunicorn >= 25 puts a control socket in XDG_RUNTIME_DIR; one directory per process avoids a clash
    runtime_dir = ROOT / ".run" / f"{name}-{port}"
    runtime_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "functions_framework", "--target", name,
         "--source", str(ROOT / "functions" / name / "main.py"), "--host", host, "--port", str(port)],
        cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT), "XDG_RUNTIME_DIR": str(runtime_dir)},
    )


def start_functions(host: str, base_port: int, env: dict[str, str]) -> tuple[list[subprocess.Popen], dict[str, str]]:
    """Start every function; return the processes and their URLs."""
    processes, urls = [], {}
    for offset, name in enumerate(FUNCTIONS):
        processes.append(start_function(name, host, base_port + offset, env))
        urls[name] = f"http://{host}:{base_port + offset}"
    return processes, urls


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--every", type=float, default=3600.0, help="seconds between pipeline runs")
    parser.add_argument("--once", action="store_true", help="run the pipeline once, then stop everything")
    parser.add_argument("--emulator", action="store_true",
                        help="serve sources A and C from the local emulator (offline demo, limits scaled to 10 s)")
    args = parser.parse_args()

    env = dict(os.environ)
    processes: list[subprocess.Popen] = []
    if args.emulator:
        emulator_port = args.port + 10
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "local.emulator", "--host", args.host, "--port", str(emulator_port),
             "--rate-a", DEMO_RATES["a"], "--rate-c", DEMO_RATES["c"], "--snapshot-every", "60"], cwd=ROOT))
        base = f"http://{args.host}:{emulator_port}"
        env.update(SOURCE_A_URL=f"{base}/v1/tickers", SOURCE_C_URL=f"{base}/api/v3/coins/markets",
                   SOURCE_A_RATE=DEMO_RATES["a"], SOURCE_C_RATE=DEMO_RATES["c"])
        print(f"emulator:  {base}/v1/tickers  {base}/api/v3/coins/markets  {base}/_control/log", flush=True)
    started, urls = start_functions(args.host, args.port, env)
    processes += started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        wait_until_up(urls.values(), timeout_s=60)
        endpoints = Endpoints.from_urls(urls)
        print(f"API:       {urls['http_api']}/data   {urls['http_api']}/health", flush=True)
        for name in STAGES:
            print(f"stage:     POST {urls[name]}/", flush=True)
        while True:
            ok = run_pipeline(endpoints)
            if args.once:
                return 0 if ok else 1
            print(f"next pipeline run in {args.every:.0f}s (Ctrl-C stops the stack)", flush=True)
            time.sleep(args.every)
    except KeyboardInterrupt:
        return 0
    finally:
        stop(processes)


if __name__ == "__main__":
    sys.exit(main())
