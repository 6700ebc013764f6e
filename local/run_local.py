"""`make run`: the whole stack on one machine, no Docker — every function under functions-framework on loopback
(local/function_server.py) and the trigger (local/trigger.py) in this process: a pass at start, then one per tick of
ETL_SCHEDULE until stopped. `--emulator` (`make demo`) serves sources A and C from the emulator, in this process.

Ports: API on --port (PORT, default 3000), the stage functions on the next ones in registry order (A 3001, B 3002,
C 3003, transform_load 3004); `--port 0` takes any free ports. The output says which function serves where.
Store: the embedded SQLite file (SQLITE_PATH) unless MONGODB_URI is set.

A service manager's stop: SIGINT (Ctrl-C), SIGTERM and SIGHUP — whether they come to this process alone, through
`make` (which passes SIGTERM on) or to the whole process group, and even when the shell started us with SIGINT
ignored (`make run &` in a script) — stop the running pass (recorded as abandoned), send each function SIGTERM,
SIGKILL any still busy after STOP_GRACE_S (a stage killed mid-run is safe: writes are fenced and idempotent), reap
every process, and exit 0 with no traceback. Each function runs in its own session, so a terminal's Ctrl-C reaches
only this process and the stop happens once, in order; this process is the functions' subreaper and their parent-
death signal, so no worker is left behind, as an orphan or a zombie, even when this process is killed outright.
"""

from __future__ import annotations

import signal
import sys

_early_signals: list[int] = []


def _remember(number: int, _frame) -> None:
    _early_signals.append(number)


if __name__ == "__main__":  # a Ctrl-C while the imports below run still means "stop", not a traceback
    for _number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(_number, _remember)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Mapping  # noqa: E402

import requests  # noqa: E402

from common.config import Settings  # noqa: E402
from common.errors import ConfigError  # noqa: E402
from common.invokers import HttpInvoker  # noqa: E402
from common.logs import configure_logging, secret_values  # noqa: E402
from common.schedule import parse_schedule  # noqa: E402
from common.sources import STAGE_FUNCTIONS  # noqa: E402
from common.wiring import Wiring, build_store  # noqa: E402
from local.function_server import PR_SET_CHILD_SUBREAPER, prctl, server_env  # noqa: E402
from local.trigger import Trigger  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORT = 3000
DEMO_RATES = {"a": "10/10s", "c": "6/10s"}
FUNCTIONS = ("http_api", *STAGE_FUNCTIONS)
STOP_GRACE_S = 3.0  # SIGTERM -> SIGKILL for a function still serving a request
TRIGGER_GRACE_S = 1.5  # how long a stopped pass may take to record itself
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
log = logging.getLogger("local.run_local")

def start_function(name: str, host: str, port: int, env: Mapping[str, str], **streams) -> subprocess.Popen:
    """One function as its own functions-framework process (as on a FaaS platform), in its own session (signals
    come from us only, once), stopped by SIGTERM if this process dies."""
    # gunicorn >= 25 puts a control socket in XDG_RUNTIME_DIR; one directory per process avoids a clash
    runtime_dir = ROOT / ".run" / f"{name}-{port}"
    runtime_dir.mkdir(parents=True, exist_ok=True)
    try:
        settings = Settings.from_env(env)
    except ConfigError:
        settings = Settings()  # the function reports the error itself
    return subprocess.Popen(
        [sys.executable, "-m", "local.function_server", "--target", name, "--host", host, "--port", str(port),
         "--stop-with-parent", str(os.getpid())],
        cwd=ROOT, env={**server_env(settings, env), "PYTHONPATH": str(ROOT), "XDG_RUNTIME_DIR": str(runtime_dir)},
        start_new_session=True, **streams,  # streams: stdout=/stderr= (tests); default: this process's
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


def wait_until_up(urls: Mapping[str, str], processes: Mapping[str, subprocess.Popen], stopping: threading.Event,
                  timeout_s: float = 60.0) -> str | None:
    """None when every function answers (or a stop came first), else why not."""
    deadline = time.monotonic() + timeout_s
    for name, url in urls.items():
        while not stopping.is_set():
            if processes[name].poll() is not None:
                return f"{name} exited with status {processes[name].returncode} before listening on {url}"
            try:
                requests.get(url, timeout=2)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    return f"{url} ({name}) did not come up within {timeout_s:.0f}s"
                stopping.wait(0.1)
    return None


def stop(processes: list[subprocess.Popen], grace_s: float = STOP_GRACE_S, since: float | None = None) -> None:
    """Stop function processes: SIGTERM each (gunicorn's graceful stop: idle workers exit at once), then SIGKILL
    the process group (master, workers and what they started) of any still running `grace_s` after `since` (a
    worker busy with a stage), and reap everything, orphans included."""
    for process in processes:
        _signal(process, signal.SIGTERM)
    deadline = (since or time.monotonic()) + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the group is the master and its workers
        except (ProcessLookupError, PermissionError):
            pass
        process.wait()
    reap_orphans()


def reap_orphans(timeout_s: float = 2.0) -> None:
    """Wait for children adopted as subreaper (workers of a master killed with them) until none is left."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            time.sleep(0.02)


def _signal(process: subprocess.Popen, number: int) -> None:
    if process.returncode is None:
        try:
            os.kill(process.pid, number)
        except ProcessLookupError:
            pass


class Stopper:
    """What a stop signal does: note it, stop the trigger, and tell every function to stop (no waiting here)."""

    def __init__(self) -> None:
        self.event, self.reason, self.at = threading.Event(), "", 0.0
        self.processes: list[subprocess.Popen] = []
        self.triggers: list[Trigger] = []

    def __call__(self, number: int, _frame=None) -> None:
        if not self.event.is_set():
            self.reason, self.at = signal.Signals(number).name, time.monotonic()
            self.event.set()
        for trigger in self.triggers:
            trigger.stop(self.reason)
        for process in self.processes:
            _signal(process, signal.SIGTERM)

    def install(self) -> None:
        for number in STOP_SIGNALS:
            signal.signal(number, self)
        for number in _early_signals:
            self(number)


def main(argv: list[str] | None = None) -> int:
    stopper = Stopper()
    stopper.install()
    prctl(PR_SET_CHILD_SUBREAPER, 1)  # workers whose master is killed with them are ours to reap
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or DEFAULT_PORT),
                        help=f"the API's port (PORT, default {DEFAULT_PORT}); the stages take the next ones "
                             "(0: any free ports)")
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
    configure_logging(settings.log_level, settings.log_format, service="run_local", secrets=secret_values(settings))
    emulator, status = None, 0
    try:
        if args.emulator and not stopper.event.is_set():
            emulator, settings = start_emulator(args.host, args.port, env)
        status = serve(args, env, settings, schedule, stopper)
    finally:
        stop(stopper.processes, since=stopper.at or None)
        if emulator is not None:
            emulator.stop()
    log.info("stopped%s: every process exited", f" ({stopper.reason})" if stopper.reason else "",
             extra={"exit_status": status})
    return status


def start_emulator(host: str, port: int, env: dict[str, str]):
    """Sources A and C from the emulator in this process (port + 10, or a free one); `env` points at it."""
    from local.emulator import Emulator, EmulatorConfig, RateLimit

    emulator_port = pick_ports(host, port + 10 if port else 0, 1)[0]
    emulator = Emulator(EmulatorConfig(host=host, port=emulator_port, snapshot_every=60,
                                       rate_a=RateLimit.parse(DEMO_RATES["a"]),
                                       rate_c=RateLimit.parse(DEMO_RATES["c"]))).start()
    base = emulator.url
    env.update(SOURCE_A_URL=f"{base}/v1/tickers", SOURCE_C_URL=f"{base}/api/v3/coins/markets",
               SOURCE_A_RATE=DEMO_RATES["a"], SOURCE_C_RATE=DEMO_RATES["c"])
    print(f"emulator:            {base}/v1/tickers  {base}/api/v3/coins/markets  {base}/_control/log", flush=True)
    return emulator, Settings.from_env(env)


def serve(args: argparse.Namespace, env: dict[str, str], settings: Settings, schedule, stopper: Stopper) -> int:
    """Start the functions, then run the trigger until stopped; the exit status."""
    urls, by_name = {}, {}
    for name, port in zip(FUNCTIONS, pick_ports(args.host, args.port, len(FUNCTIONS))):
        if stopper.event.is_set():
            return 0
        by_name[name] = start_function(name, args.host, port, env)
        stopper.processes.append(by_name[name])
        urls[name] = f"http://{args.host}:{port}"
    problem = wait_until_up(urls, by_name, stopper.event)
    if stopper.event.is_set():
        return 0
    if problem:
        log.error("run_local: %s", problem)
        print(f"run_local: {problem}", file=sys.stderr, flush=True)
        return 1
    print(f"{'http_api':<20} {urls['http_api']}/data   {urls['http_api']}/health", flush=True)
    for name in STAGE_FUNCTIONS:
        print(f"{name:<20} POST {urls[name]}/   (port {urls[name].rsplit(':', 1)[1]})", flush=True)
    print(f"store:               {settings.store_kind}{'' if settings.mongodb_uri else ' ' + settings.sqlite_path}",
          flush=True)
    print(f"schedule:            {schedule.expression!r} (UTC): a pass now, then one per tick; Ctrl-C stops",
          flush=True)
    settings = dataclasses.replace(settings, **{f"{name}_url": urls[name] for name in STAGE_FUNCTIONS})
    wiring = Wiring(settings=settings, store=build_store(settings))
    trigger = Trigger(wiring, HttpInvoker.from_settings(settings), schedule, run_on_start=True, out=sys.stdout,
                      grace_s=TRIGGER_GRACE_S)
    stopper.triggers.append(trigger)
    if stopper.event.is_set():
        return 0
    status = trigger.run(max_passes=1 if args.once else None)
    return 0 if stopper.event.is_set() else status


if __name__ == "__main__":
    sys.exit(main())
