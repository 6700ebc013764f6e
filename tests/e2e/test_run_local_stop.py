"""`make run` / `make demo` stop like a service manager: through the real Makefile, on loopback, a temp store.

Each case starts the stack as a user would — in the foreground of its own process group (a terminal's job), or as
`make run &` from a non-interactive script (which starts the job with SIGINT ignored) — waits for the first pass,
then sends what a user sends: Ctrl-C (SIGINT to the whole group), `kill <make's pid>` (SIGTERM), `kill <python's
pid>`, or a terminal hang-up (SIGHUP to the group). Every process of the tree (make, the runner, each
functions-framework master and worker) must be gone — exited and reaped, no orphan, no zombie — within 5 s, with no
traceback anywhere in the output, and the runner must report exit status 0.

GNU make re-raises a fatal signal it caught on itself once its child has exited (commands.c, fatal_error_signal),
so make's own status is "killed by that signal" whenever the signal reached make; it is 0 when only the runner got
it (SIGTERM to the python pid; SIGINT to a background job, which make ignores)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import requests

from common.store.sqlite import SqliteStore
from tests.conftest import ROOT
from tests.e2e.conftest import stage_env

STOP_WITHIN_S = 5.0
START_WITHIN_S = 90.0
API_KEY = "sk-demo-0123456789abcdef"
JWT_SECRET = "j" * 48
SERVICES = {"run_local", "http_api", "extract_source_a", "extract_source_b", "extract_source_c", "transform_load"}


class Started:
    """One `make run|demo` as a user starts it, with its output in files (read while it runs)."""

    def __init__(self, tmp_path: Path, target: str, background: bool, **extra_env: str) -> None:
        self.tmp_path = tmp_path
        self.out, self.err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
        env = stage_env(tmp_path, SOURCE_B_PATH=str(ROOT / "data" / "Historical_Data.csv"), LOG_LEVEL="INFO",
                        SOURCE_A_URL="http://api.coinpaprika.invalid/v1/tickers",
                        SOURCE_C_URL="http://127.0.0.1:9/api/v3/coins/markets", HTTP_MAX_ATTEMPTS="1",
                        PORT="0", SOURCE_C_API_KEY=API_KEY, JWT_SECRET=JWT_SECRET, **extra_env)
        make = ["make", "-s", "--no-print-directory", target]
        self.background = background
        if background:  # a script: `make run &` (SIGINT ignored for the job), then waits for it
            self.pid_file = tmp_path / "make.pid"
            command = ["bash", "-c", f"trap : INT; {' '.join(make)} & echo $! > {self.pid_file}; "
                                     "while wait $!; status=$?; kill -0 $! 2>/dev/null; do :; done; "
                                     "echo \"make-exit=$status\" >&2"]  # the script outlives a Ctrl-C
        else:
            command = make
        with open(self.out, "w") as out, open(self.err, "w") as err:
            # a session of its own: its process group is what a terminal's Ctrl-C or hang-up reaches
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err,
                                            start_new_session=True)
        self.make_pid = self._make_pid()

    def _make_pid(self) -> int:
        if not self.background:
            return self.process.pid
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.pid_file.exists() and self.pid_file.read_text().strip():
                return int(self.pid_file.read_text())
            time.sleep(0.05)
        raise AssertionError("the script did not start make")

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_for_runner(self) -> None:
        """Until the runner catches SIGHUP: its first lines ran (the interpreter's own start-up, tens of ms before
        any of our code, is the one window where a signal still has Python's default effect)."""
        deadline = time.monotonic() + START_WITHIN_S
        while time.monotonic() < deadline:
            try:
                status = Path(f"/proc/{self.runner_pid()}/status").read_text()
                if int(status.split("SigCgt:")[1].split()[0], 16) & (1 << (signal.SIGHUP - 1)):
                    return
            except (ValueError, psutil.NoSuchProcess, FileNotFoundError):
                pass
            time.sleep(0.005)
        raise AssertionError("the runner did not start")

    def wait_for_first_pass(self) -> None:
        deadline = time.monotonic() + START_WITHIN_S
        while time.monotonic() < deadline:
            if "\npass " in "\n" + self.stdout():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no pass within {START_WITHIN_S:.0f}s\n{self.stdout()[-2000:]}\n{self.stderr()[-3000:]}")

    def tree(self) -> list[psutil.Process]:
        """make and everything under it (the runner, each function's master and workers)."""
        root = psutil.Process(self.make_pid)
        return [root, *root.children(recursive=True)]

    def runner_pid(self) -> int:
        [runner] = [p for p in psutil.Process(self.make_pid).children() if "local.run_local" in " ".join(p.cmdline())]
        return runner.pid

    def stop_all(self) -> None:
        """Teardown: whatever is left is killed (a failed test must not leave a stack behind)."""
        for process in reversed(self.tree_or_empty()):
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def tree_or_empty(self) -> list[psutil.Process]:
        try:
            return self.tree()
        except psutil.NoSuchProcess:
            return []


def alive(processes: list[psutil.Process]) -> list[str]:
    """Those still present: running, or exited but not reaped (zombies) — both fail the test."""
    left = []
    for process in processes:
        try:
            status = process.status()
            left.append(f"{process.pid} {status} {' '.join(process.cmdline())[:120]}")
        except psutil.ZombieProcess:
            left.append(f"{process.pid} zombie")
        except psutil.NoSuchProcess:
            pass
    return left


def stop_and_check(started: Started, send, expected_make_status: set[int],
                   started_up: bool = True) -> tuple[float, str, str]:
    """Send the signal, then require every process gone within STOP_WITHIN_S; returns (seconds, stdout, stderr).
    `started_up=False`: the signal comes during start-up, so processes started just after it are watched too."""
    tree = started.tree()
    if started_up:
        assert len(tree) >= 12, [p.cmdline() for p in tree]  # make, runner, 5 masters, 5 workers
    sent = time.monotonic()
    send()
    if not started_up:
        time.sleep(0.3)
        tree += [p for p in started.tree_or_empty() if p.pid not in {q.pid for q in tree}]
    if not started.background:
        try:
            started.process.wait(timeout=STOP_WITHIN_S)  # make is our child: reap it
        except subprocess.TimeoutExpired:
            pass
    while alive(tree) and time.monotonic() - sent < STOP_WITHIN_S:
        time.sleep(0.05)
    took, left = time.monotonic() - sent, alive(tree)
    if started.background:
        started.process.wait(timeout=STOP_WITHIN_S)
    out, err = started.stdout(), started.stderr()
    print(f"stopped in {took:.2f}s\n--- stdout\n{out[-1500:]}\n--- stderr\n{err[-3000:]}")
    assert left == [], f"still present {took:.1f}s after the signal: {left}"
    assert "Traceback" not in out + err
    assert "make: ***" not in err  # make reports a failing recipe (the runner's non-zero exit) this way
    if started.background:
        [status_line] = [line for line in err.splitlines() if line.startswith("make-exit=")]
        status = int(status_line.split("=")[1])
        status = -(status - 128) if status > 128 else status
    else:
        status = started.process.returncode
    assert status in expected_make_status, status
    entries = log_entries(err)
    finals = [entry for entry in entries if "exit_status" in entry]
    assert [entry["exit_status"] for entry in finals] == [0], finals  # the runner's own status
    assert API_KEY not in out + err and JWT_SECRET not in out + err
    return took, out, err


def log_entries(err: str) -> list[dict]:
    """stderr holds the log: every line one JSON object (stderr is not a terminal) from a known process."""
    entries = [json.loads(line) for line in err.splitlines() if line.strip() and not line.startswith("make-exit=")]
    assert {entry["service"] for entry in entries} <= SERVICES
    return entries


@pytest.fixture
def stack(tmp_path):
    started: list[Started] = []

    def start(target: str, background: bool = False, up: bool = True, **env: str) -> Started:
        started.append(Started(tmp_path, target, background, **env))
        if up:
            started[-1].wait_for_first_pass()
        else:
            started[-1].wait_for_runner()
        return started[-1]

    yield start
    for one in started:
        one.stop_all()


def test_make_run_ctrl_c_in_the_foreground_stops_everything(stack):
    started = stack("run")
    _, _, err = stop_and_check(started, lambda: os.killpg(started.process.pid, signal.SIGINT),
                               {0, -signal.SIGINT})
    entries = log_entries(err)
    assert {"run_local", "extract_source_b", "transform_load"} <= {entry["service"] for entry in entries}
    ended = [entry for entry in entries if entry["logger"] == "common.runs" and entry["service"] != "run_local"]
    assert ended and all(entry.get("run_id") and entry.get("request_id") for entry in ended), ended
    passes = [entry for entry in entries if entry["logger"] == "common.orchestrator"]
    assert passes and all(entry["message"].startswith(f"pass {entry['run_id']}:") for entry in passes)


def test_make_run_sigterm_to_make_in_the_foreground_stops_everything(stack):
    started = stack("run")
    stop_and_check(started, lambda: os.kill(started.make_pid, signal.SIGTERM), {0, -signal.SIGTERM})


def test_make_run_sigterm_to_the_python_pid_stops_everything_and_make_exits_0(stack):
    started = stack("run")
    runner = started.runner_pid()
    stop_and_check(started, lambda: os.kill(runner, signal.SIGTERM), {0})


def test_make_run_terminal_hang_up_stops_everything(stack):
    started = stack("run")
    stop_and_check(started, lambda: os.killpg(started.process.pid, signal.SIGHUP), {0, -signal.SIGHUP})


def test_background_make_run_from_a_script_stops_on_sigint_to_its_group(stack):
    started = stack("run", background=True)
    ignored = int(Path(f"/proc/{started.make_pid}/status").read_text().split("SigIgn:")[1].split()[0], 16)
    assert ignored & (1 << (signal.SIGINT - 1)), "the script did not start make with SIGINT ignored"
    stop_and_check(started, lambda: os.killpg(started.process.pid, signal.SIGINT), {0})


def test_background_make_run_from_a_script_stops_on_kill_of_makes_pid(stack):
    started = stack("run", background=True)
    stop_and_check(started, lambda: os.kill(started.make_pid, signal.SIGTERM), {0, -signal.SIGTERM})


def test_make_demo_ctrl_c_with_a_stage_in_flight_stops_everything_without_a_traceback(stack):
    """The issue's report: Ctrl-C on `make demo` printed a traceback. Here the stop comes while source A's extract
    is inside a 60 s answer from the emulator (a busy gunicorn worker), on a 2 s schedule."""
    started = stack("demo", ETL_SCHEDULE="2s")
    emulator = next(line.split()[1] for line in started.stdout().splitlines() if line.startswith("emulator:"))
    base = emulator.rsplit("/v1/", 1)[0]
    requests.post(f"{base}/_control/chaos", json={"source": "a", "slow_ms": 60_000, "slow_count": 100}, timeout=5)
    store = SqliteStore(str(started.tmp_path / "etl.sqlite3"))
    deadline = time.monotonic() + 30
    while not [run for run in store.list_runs(stage="extract", status="running") if run.source == "source_a"]:
        assert time.monotonic() < deadline, "source A's extract never got in flight"
        time.sleep(0.2)
    store.close()
    stop_and_check(started, lambda: os.killpg(started.process.pid, signal.SIGINT), {0, -signal.SIGINT})


def test_background_make_demo_stops_on_kill_of_makes_pid(stack):
    started = stack("demo", background=True)
    stop_and_check(started, lambda: os.kill(started.make_pid, signal.SIGTERM), {0, -signal.SIGTERM})


@pytest.mark.parametrize("after_s", [0.0, 1.0, 2.5])
def test_make_demo_ctrl_c_during_start_up_stops_everything_without_a_traceback(stack, after_s):
    """Ctrl-C while the runner is still importing, starting the functions or waiting for them to listen."""
    started = stack("demo", up=False)
    time.sleep(after_s)
    stop_and_check(started, lambda: os.killpg(started.process.pid, signal.SIGINT), {0, -signal.SIGINT},
                   started_up=False)


def test_functions_stop_on_their_own_when_the_runner_is_killed_outright(stack):
    """kill -9 of the runner: no handler runs, yet every function stops (the parent-death signal), so nothing keeps
    the ports. Their exit statuses are collected by whatever adopts them (init here), so a zombie is not counted."""
    started = stack("run")
    tree = started.tree()
    functions = [p for p in tree if "local.function_server" in " ".join(p.cmdline())]
    assert len(functions) == 10
    os.kill(started.runner_pid(), signal.SIGKILL)
    started.process.wait(timeout=STOP_WITHIN_S)
    deadline = time.monotonic() + STOP_WITHIN_S
    while [line for line in alive(functions) if not line.endswith("zombie")] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [line for line in alive(functions) if not line.endswith("zombie")] == []
