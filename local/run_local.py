"""`make run`: the whole stack on one machine, no Docker — every function under functions-framework on loopback and
the trigger (local/trigger.py) in this process: a pass at start, then one per tick of ETL_SCHEDULE until Ctrl-C.

Ports: API on --port (PORT, default 8080), the stage functions on the next ones in registry order (A 8081, B 8082,
C 8083, transform_load 8084); `--port 0` takes any free ports. The output says which function serves where.
Store: the embedded SQLite file (SQLITE_PATH) unless MONGODB_URI is set.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable

import requests

from common.config import Settings
from common.errors import ConfigError
from common.invokers import HttpInvoker
from common.logs import configure_logging
from common.schedule import parse_schedule
from common.sources import STAGE_FUNCTIONS
from common.wiring import Wiring, build_store
from local.trigger import Trigger

ROOT = Path(__file__).resolve().parent.parent
DEMO_RATES = {"a": "10/10s", "c": "6/10s"}
FUNCTIONS = ("http_api", *STAGE_FUNCTIONS)


def start_function(name: str, host: str, port: int, env: dict[str, str]) -> subprocess.Popen:
    """One function as its own functions-framework process (as on a FaaS platform)."""
    # gunicorn >= 25 puts a control socket in XDG_RUNTIME_DIR; one directory per process avoids a clash
    runtime_dir = ROOT / ".run" / f"{name}-{port}"
    runtime_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "functions_framework", "--target", name,
         "--source", str(ROOT / "functions" / name / "main.py"), "--host", host, "--port", str(port)],
        cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT), "XDG_RUNTIME_DIR": str(runtime_dir)},
        start_new_session=True,  # signals come from us only, once (Ctrl-C reaches this runner, not each worker)
    )


def pick_ports(host: str, base: int, count: int) -> list[int]:
    """`count` consecutive ports from `base`, or any free ones when `base` is 0."""
    if base:
        return list(range(base, base + count))
    ports = []
    for _ in range(count):
        with socket.socket() as probe:
            probe.bind((host, 0))
            ports.append(probe.getsockname()[1])
    return ports


def wait_until_up(urls: Iterable[str], stopping: threading.Event, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    for url in urls:
        while not stopping.is_set():
            try:
                requests.get(url, timeout=2)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not come up within {timeout_s:.0f}s") from None
                stopping.wait(0.1)


def stop(processes: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    """Stop functions-framework processes: one SIGTERM each (gunicorn's graceful stop), then, for any that did not
    exit in time, SIGKILL to its whole process group, so no worker outlives its master."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the group is the master and its workers
        except ProcessLookupError:
            pass
        process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")),
                        help="the API's port; the stages take the next ones (0: any free ports)")
    parser.add_argument("--schedule", help="overrides ETL_SCHEDULE (cron, UTC, or an interval such as 30s)")
    parser.add_argument("--once", action="store_true", help="one pass, then stop everything (exit 1 unless it "
                                                            "succeeded)")
    parser.add_argument("--emulator", action="store_true",
                        help="serve sources A and C from the local emulator (offline demo, limits scaled to 10 s)")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    if args.schedule:
        env["ETL_SCHEDULE"] = args.schedule
    try:
        settings = Settings.from_env(env)
        schedule = parse_schedule(settings.etl_schedule)
    except ConfigError as exc:
        print(f"run_local: {exc.message}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    stopping, trigger_box = threading.Event(), []

    def on_signal(number, _frame) -> None:
        stopping.set()
        for trigger in trigger_box:
            trigger.stop(signal.Signals(number).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    processes: list[subprocess.Popen] = []
    try:
        if args.emulator:
            emulator_port = pick_ports(args.host, args.port + 10 if args.port else 0, 1)[0]
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "local.emulator", "--host", args.host, "--port", str(emulator_port),
                 "--rate-a", DEMO_RATES["a"], "--rate-c", DEMO_RATES["c"], "--snapshot-every", "60"], cwd=ROOT))
            base = f"http://{args.host}:{emulator_port}"
            env.update(SOURCE_A_URL=f"{base}/v1/tickers", SOURCE_C_URL=f"{base}/api/v3/coins/markets",
                       SOURCE_A_RATE=DEMO_RATES["a"], SOURCE_C_RATE=DEMO_RATES["c"])
            settings = Settings.from_env(env)
            print(f"emulator:            {base}/v1/tickers  {base}/api/v3/coins/markets  {base}/_control/log",
                  flush=True)
        urls = {}
        for name, port in zip(FUNCTIONS, pick_ports(args.host, args.port, len(FUNCTIONS))):
            processes.append(start_function(name, args.host, port, env))
            urls[name] = f"http://{args.host}:{port}"
        wait_until_up(urls.values(), stopping)
        if stopping.is_set():
            return 0
        print(f"{'http_api':<20} {urls['http_api']}/data   {urls['http_api']}/health", flush=True)
        for name in STAGE_FUNCTIONS:
            print(f"{name:<20} POST {urls[name]}/   (port {urls[name].rsplit(':', 1)[1]})", flush=True)
        print(f"store:               {settings.store_kind}"
              f"{'' if settings.mongodb_uri else ' ' + settings.sqlite_path}", flush=True)
        print(f"schedule:            {schedule.expression!r} (UTC): a pass now, then one per tick; Ctrl-C stops",
              flush=True)
        settings = dataclasses.replace(settings, **{f"{name}_url": urls[name] for name in STAGE_FUNCTIONS})
        wiring = Wiring(settings=settings, store=build_store(settings))
        trigger = Trigger(wiring, HttpInvoker.from_settings(settings), schedule, run_on_start=True, out=sys.stdout)
        trigger_box.append(trigger)
        if stopping.is_set():
            return 0
        return trigger.run(max_passes=1 if args.once else None)
    finally:
        stop(processes)


if __name__ == "__main__":
    sys.exit(main())
