"""Issue 7 item 1 end to end: another process appends to the CSV while the extract reads it.

A real writer process appends (unbuffered `os.write`) while the real extract runs against a real SQLite file.
First, deterministically: the writer appends rows and half a line while the extract is between chunks, and
finishes the line during the settle wait. Then free-running: the writer appends lines in pieces while the real
`etl run --source b` is started again and again; once it stops, one more run must leave exactly its rows loaded.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

from common.clock import Deadline
from common.config import Settings
from common.extract import checkpoint_name, extract_csv
from common.runs import run_stage
from common.sources import source_spec
from common.wiring import build_store
from tests.conftest import csv_lines, write_csv
from tests.e2e.conftest import etl_cli, stage_env

WRITER = r"""
import os, random, sys, time
path = sys.argv[1]
fd = os.open(path, os.O_WRONLY | os.O_APPEND)
if len(sys.argv) > 2:  # free-running: every line in two or three writes, with short pauses between them
    rng = random.Random(int(sys.argv[2]))
    for line in sys.stdin:
        data = line.encode()
        cuts = sorted(rng.sample(range(1, len(data)), 2))
        for piece in (data[:cuts[0]], data[cuts[0]:cuts[1]], data[cuts[1]:]):
            os.write(fd, piece)
            time.sleep(rng.uniform(0, 0.002))
    sys.stdout.write("done\n")
else:  # on command: append exactly these bytes, then acknowledge
    for line in sys.stdin:
        os.write(fd, bytes.fromhex(line.strip()))
        sys.stdout.write("ok\n")
        sys.stdout.flush()
"""

FULL_LINE = "151,Bitcoin,BTC,2030-01-01 23:59:59,14136.822,13493.039,13500,13869.875,18207227040.29,253850238322.34"
FRAGMENT, REST = FULL_LINE[:-9], FULL_LINE[-9:] + "\n"


class Writer:
    """A separate process appending to the file, on command."""

    def __init__(self, path) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)

    def append(self, text: str) -> None:
        self.process.stdin.write(text.encode().hex() + "\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline() == "ok\n"

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=10)
        self.process.stdout.close()


def loaded(db_path) -> dict[tuple[str, str], float]:
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT symbol, observed_at, market_cap_usd FROM normalized").fetchall()
    return {(symbol, observed[:10]): cap for symbol, observed, cap in rows}


def quarantined(db_path) -> list[tuple]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT row_number, raw, reason FROM quarantine").fetchall()


def test_rows_and_half_a_line_appended_during_the_extract_are_never_loaded_truncated(tmp_path):
    env = stage_env(tmp_path, CSV_CHUNK_ROWS="40")
    settings = Settings.from_env(env)
    path = settings.source_b_path
    lines = csv_lines(coins=1, days=150)
    write_csv(path, lines[:100])
    writer = Writer(path)
    store = build_store(settings)
    spec = source_spec("source_b", settings)

    def progress(rows: int, *_):
        if rows == 40:  # the first chunk is durable; the extract goes on reading while the writer appends
            writer.append("".join(line + "\n" for line in lines[100:]) + FRAGMENT)

    def settle_wait(seconds: float) -> None:
        writer.append(REST)  # the writer finishes the line while the extract waits for the file to settle

    deadline = Deadline(time.time, settings.invocation_budget_s)
    run = run_stage("extract", spec.name, store, lease_ttl_s=settings.lease_ttl_s, clock=time.time,
                    budget_s=settings.invocation_budget_s,
                    work=lambda run, keeper: extract_csv(spec, keeper.store, settings, run, keeper, deadline,
                                                         progress, sleep=settle_wait))
    writer.close()
    checkpoint = store.get_checkpoint(checkpoint_name("source_b"))
    store.close()
    assert run.status == "succeeded" and run.rows_in == 150
    assert any("held back" in warning for warning in run.summary["warnings"])
    with open(path, "rb") as handle:
        assert checkpoint["offset"] == handle.read().index(FULL_LINE.encode())  # never past the line's start

    cli = subprocess.run(etl_cli("run", "--source", "b", "--quiet"), env=env, capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    values = loaded(settings.sqlite_path)
    assert len(values) == 151 and values[("BTC", "2030-01-01")] == 253850238322.34
    assert quarantined(settings.sqlite_path) == []


def test_a_free_running_writer_and_repeated_runs_end_with_exactly_its_rows(tmp_path):
    env = stage_env(tmp_path, CSV_CHUNK_ROWS="50", CSV_SETTLE_S="1")
    settings = Settings.from_env(env)
    lines = csv_lines(coins=3, days=400)
    write_csv(settings.source_b_path, lines[:200])
    with subprocess.Popen([sys.executable, "-c", WRITER, settings.source_b_path, "7"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as writer:
        writer.stdin.write("".join(line + "\n" for line in lines[200:]))
        writer.stdin.close()  # the writer goes on by itself, a line at a time, in pieces
        runs = 0
        while writer.poll() is None or runs == 0:
            cli = subprocess.run(etl_cli("run", "--source", "b", "--quiet"), env=env, capture_output=True,
                                 text=True, timeout=120)
            assert cli.returncode == 0, cli.stdout + cli.stderr
            runs += 1
        assert writer.stdout.read() == "done\n"
    cli = subprocess.run(etl_cli("run", "--source", "b", "--quiet"), env=env, capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode == 0, cli.stdout + cli.stderr

    expected = {}
    for line in lines:
        fields = line.split(",")
        expected[(fields[2], fields[3][:10])] = float(fields[9])
    assert loaded(settings.sqlite_path) == expected
    assert quarantined(settings.sqlite_path) == []
