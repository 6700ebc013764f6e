"""Offline `make run`: the real local/run_local.py on loopback with source A's host unresolvable and source C's
port closed. Source B's rows must be on the API within 10 s of start while A and C fail with their reasons.

A name that does not resolve fails at once; a refused connection is retried (it may be a server restarting), each
attempt within the source's rate budget — at C's default 3/1m that is a minute or more, so C gets 2 attempts and a
faster rate here to keep the test short. B's rows do not wait for it either way."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import requests

from common.store.sqlite import SqliteStore
from tests.conftest import ROOT
from tests.e2e.conftest import stage_env

START_WITHIN_S = 10.0


def free_block(size: int) -> int:
    """A base port with `size` free ports after it (run_local puts the functions on consecutive ports)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + size > 65535:
            continue
        try:
            held = []
            for port in range(base, base + size):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError("no block of free ports")


def test_offline_make_run_serves_b_within_seconds_while_a_and_c_fail_with_reasons(tmp_path):
    base = free_block(5)
    env = stage_env(tmp_path, SOURCE_B_PATH=str(ROOT / "data" / "Historical_Data.csv"), LOG_LEVEL="INFO",
                    SOURCE_A_URL="http://api.coinpaprika.invalid/v1/tickers",  # never resolves (RFC 6761)
                    SOURCE_C_URL="http://127.0.0.1:9/api/v3/coins/markets",  # discard port: refused
                    HTTP_MAX_ATTEMPTS="2", SOURCE_C_RATE="60/1m")
    started = time.monotonic()
    process = subprocess.Popen(["make", "--no-print-directory", "run"], cwd=ROOT, env={**env, "PORT": str(base)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    api, first_rows_s = f"http://127.0.0.1:{base}", None
    try:
        while time.monotonic() - started < 60 and process.poll() is None:
            try:
                body = requests.get(f"{api}/data", params={"source": "source_b", "limit": 1}, timeout=2).json()
                if body["pagination"]["total"] > 0:
                    first_rows_s = time.monotonic() - started
                    break
            except (requests.ConnectionError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        print(f"source B's first rows on the API {first_rows_s} s after start")
        assert first_rows_s is not None and first_rows_s < START_WITHIN_S, first_rows_s
        store = SqliteStore(env["SQLITE_PATH"])
        deadline = time.monotonic() + 30
        while not store.list_runs(stage="pipeline", status="partial") and time.monotonic() < deadline:
            time.sleep(0.2)
        [one_pass] = store.list_runs(stage="pipeline")
        assert one_pass.status == "partial" and one_pass.summary["sources"] == {
            "source_a": "failed", "source_b": "succeeded", "source_c": "failed"}
        reasons = {e["source"]: e["errors"][0] for e in one_pass.summary["stages"] if e["status"] == "failed"}
        assert "cannot resolve host api.coinpaprika.invalid" in reasons["source_a"]
        assert "source_c: cannot connect" in reasons["source_c"]
        store.close()
    finally:
        time.sleep(6)  # idle a while first, as a person would before Ctrl-C (keep-alive connections time out)
        stop_started = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground group
        try:
            output = process.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output = process.communicate()[0]
        stop_s = time.monotonic() - stop_started
    print(output[-3000:])
    assert "pass " in output and "partial" in output and "cannot resolve host" in output  # the pass, as printed
    for port, name in zip(range(base, base + 5), ("http_api", "extract_source_a", "extract_source_b",
                                                  "extract_source_c", "transform_load")):
        assert f"{port}" in output and name in output  # which stage serves on which port
    assert stop_s < 15
    leftovers = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"])
                 if any(f"--port {port}" in " ".join(p.info["cmdline"] or []) for port in range(base, base + 5))]
    assert leftovers == [], "a function process (a gunicorn worker) outlived `make run`"
