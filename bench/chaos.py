"""Crash-and-stall matrix (issue 7): real `etl` processes, one seeded fault per trial, compared with a clean run.

    .venv/bin/python bench/chaos.py --trials 100            # 25 trials per fault kind, ~10 min on 2 cores
    .venv/bin/python bench/chaos.py --seed 7 --trials 1 --fault stop_past_lease --target extract:b   # replay one

In the spirit of Jepsen: each trial starts from a fresh SQLite store, runs the extracts of A, B and C side by side
and then the transform (`python -m common.cli run ...`, sources A and C from one `local.emulator` process), injects
one fault at a seeded moment, drives every stage until it succeeds, and then checks the store against a clean run
and the run ledger against what every invocation answered. Faults: SIGKILL an extract or the transform (or its
normalize worker), SIGSTOP a stage past its lease expiry while another invocation takes over, or hold SQLite's
write lock while the stages run. Exit code 1 if anything was lost, duplicated, wrong or anomalous, or a recovery
took longer than 30 s; 2 if the harness itself could not run. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from local.generate_csv import HEADER, coin_rows  # noqa: E402

KINDS = ("kill_extract", "kill_transform", "stop_past_lease", "stall_store")
TARGETS = {  # cycled through in order, so a few trials already cover every target
    "kill_extract": ("extract:b", "extract:c", "extract:a"),
    "kill_transform": ("transform", "worker"),
    "stop_past_lease": ("extract:b", "transform", "extract:c", "extract:a"),
    "stall_store": ("transform", "extract:b", "extract:c"),
}
EXTRACTS = ("extract:a", "extract:b", "extract:c")
LEASE_TTL_S = 1.5
RECOVERY_LIMIT_S = 30.0
PHASE_LIMIT_S = 90.0  # a phase whose stages have not all succeeded by then did not converge
RETRY_S = 0.2  # pause before relaunching a stage whose invocation ended skipped, partial or failed
POLL_S = 0.001
SKIP_COLUMNS = {"ingested_at", "run_id", "id"}  # per-run metadata and the row id (first-ingest order): differ between runs
STATE_TABLES = ("checkpoints", "raw_batches", "normalized", "quarantine", "assets", "asset_sources")


def epoch(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


def ledger_key(stage: str) -> tuple[str, str | None]:
    """('extract', 'source_b') for 'extract:b'; the transform (and its worker) is ('transform_load', None)."""
    return ("extract", f"source_{stage[-1]}") if stage.startswith("extract") else ("transform_load", None)


@dataclass(frozen=True)
class Config:
    """One input: the CSV for source B and its chunk size (the emulator serves A and C for every config)."""

    name: str
    csv: Path
    chunk_rows: int


def write_inputs(folder: Path) -> dict[str, Config]:
    """`small`: 8 coins x 500 days in chunks of 20, two malformed lines (so the quarantine is compared too).
    `worker`: 200k rows in chunks of 50k, slow enough per batch that the transform starts its normalize worker."""
    def write(path: Path, coins: int, days: int, broken: dict[int, str]) -> Path:
        rng, lines = random.Random(1), []
        for index in range(coins):
            lines += [f"{serial},{row}" for serial, row in enumerate(coin_rows(index, days, rng), start=1)]
        for at, line in broken.items():
            lines[at] = line
        path.write_text(HEADER + "".join(line + "\n" for line in lines), encoding="utf-8")
        return path

    broken = {100: "101,Bitcoin,BTC,2019-04-11 23:59:59,1,1,1,oops,1,1", 2000: "1,Bitcoin,BTC,2019"}
    return {"small": Config("small", write(folder / "small.csv", 8, 500, broken), 20),
            "worker": Config("worker", write(folder / "worker.csv", 16, 12_500, {}), 50_000)}


class Db:
    """The harness's read-only view of a trial's store (autocommit, so it never holds a snapshot open)."""

    def __init__(self, path: Path) -> None:
        self.path, self.conn = path, None

    def rows(self, sql: str, params: tuple = (), strict: bool = False) -> list[tuple]:
        """While stages run, a store or table not created yet reads as empty; when checking (`strict`), a read
        that fails is the harness's problem (RuntimeError), never a lost row."""
        try:
            if self.conn is None:
                if not self.path.exists() and not strict:
                    return []
                self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30, isolation_level=None)
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if strict:
                raise RuntimeError(f"cannot read {self.path}: {exc}") from exc
            return []

    def progress(self, stage: str) -> int:
        if stage.startswith("extract"):
            found = self.rows("SELECT COUNT(*) FROM raw_batches WHERE source = ?", (ledger_key(stage)[1],))
        else:
            found = self.rows("SELECT COUNT(*) FROM raw_batches WHERE status = 'done'")
        return found[0][0] if found else 0

    def runs(self, strict: bool = False) -> list[dict]:
        return [json.loads(doc) for (doc,) in self.rows("SELECT doc FROM runs", strict=strict)]

    def stage_runs(self, stage: str) -> list[dict]:
        name, source = ledger_key(stage)
        return [run for run in self.runs() if run["stage"] == name and run["source"] == source]

    def state(self) -> dict[str, tuple[list[str], set[tuple]]]:
        """Every durable row a stage writes (not the ledger, leases or rate-limit state), with column names."""
        return {table: ([row[1] for row in self.rows(f"PRAGMA table_info({table})", strict=True)],
                        set(self.rows(f"SELECT * FROM {table}", strict=True))) for table in STATE_TABLES}

    def snapshot(self) -> tuple[dict, dict, int]:
        """Normalized rows by natural key (values without per-run metadata), quarantine by id, pending batches."""
        columns = [row[1] for row in self.rows("PRAGMA table_info(normalized)", strict=True)
                   if row[1] not in SKIP_COLUMNS]
        rows = self.rows(f"SELECT {', '.join(columns)} FROM normalized", strict=True)
        key = [columns.index(name) for name in ("source", "source_id", "observed_at")]
        normalized = {tuple(row[i] for i in key): dict(zip(columns, row)) for row in rows}
        quarantine = {q[0]: q[1:] for q in self.rows("SELECT id, row_number, raw, reason FROM quarantine", strict=True)}
        pending = self.rows("SELECT COUNT(*) FROM raw_batches WHERE status = 'pending'", strict=True)[0][0]
        return normalized, quarantine, pending

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@dataclass
class Invocation:
    """One `etl run` process and what it answered."""

    stage: str
    proc: subprocess.Popen
    out: Path
    killed: bool = False
    detached: bool = False  # stopped past its lease: the stage goes on without it, it is resumed later
    reply: dict | None = None

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def finish(self) -> None:
        try:
            self.reply = json.loads(self.out.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.reply = None

    @property
    def status(self) -> str | None:
        return self.reply["runs"][-1]["status"] if self.reply and self.reply.get("runs") else None


class Recovery:
    """Seconds from the fault until an invocation of the stage made progress: wrote a batch / marked one done,
    or finished `succeeded` (when there was nothing left to write)."""

    def __init__(self, db: Db, stage: str, since: float, in_flight: int = 0) -> None:
        self.db, self.stage, self.since = db, stage, since
        self.baseline, self.seconds = db.progress(stage) + in_flight, None

    def poll(self) -> None:
        if self.seconds is not None:
            return
        if self.db.progress(self.stage) > self.baseline or any(
                run["status"] == "succeeded" and (epoch(run["finished_at"]) or 0) >= self.since
                for run in self.db.stage_runs(self.stage)):
            self.seconds = time.time() - self.since


@dataclass
class Outcome:
    seed: int
    kind: str
    target: str
    landed: bool = False
    lost: int = 0
    duplicated: int = 0
    wrong: int = 0
    ledger: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    recovery_s: float | None = None
    notes: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.lost or self.duplicated or self.wrong or self.ledger or self.stale or self.other
                     or self.recovery_s is None or self.recovery_s > RECOVERY_LIMIT_S)

    def replay(self) -> str:
        return f"--seed {self.seed} --trials 1 --fault {self.kind} --target {self.target}"


def write_locked(path: Path) -> bool:
    """True if some connection holds SQLite's write lock (live writers hold it for milliseconds, not 250 ms)."""
    conn = sqlite3.connect(path, timeout=0.25, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        conn.close()


def stopped(pid: int, within_s: float = 2.0) -> bool:
    """Wait until every thread of `pid` is really stopped: SIGSTOP is delivered asynchronously, and until it has
    landed on all of them (the lease heartbeat is a thread too) the process may still take the write lock."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            states = [Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                      for tid in os.listdir(f"/proc/{pid}/task")]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
        if states and all(state in ("T", "t") for state in states):
            return True
        time.sleep(0.0005)
    return False


def hold_write_lock(path: Path, seconds: float, times: dict) -> None:
    """The stalled store: BEGIN IMMEDIATE, sleep, COMMIT (from this harness process, on its own connection)."""
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        times["locked"] = time.time()
        time.sleep(seconds)
        conn.execute("COMMIT")
    finally:
        times["released"] = time.time()
        conn.close()


class Fault:
    """One seeded fault riding on one stage of a trial: armed until its moment comes, then fired."""

    def __init__(self, kind: str, target: str, rng: random.Random) -> None:
        self.kind, self.target, self.rng = kind, target, rng
        self.stage = "transform" if target == "worker" else target  # the stage whose invocation it hits
        self.at_batch: int | None = None
        self.after_s = rng.uniform(0, 0.6) if target == "worker" else rng.uniform(0, 0.005)  # A's run: ~10 ms
        self.stall_s = rng.uniform(0.5, 5.0)
        self.fired = False
        self.victim: Invocation | None = None
        self.worker_seen_at: float | None = None
        self.stopped_at: float | None = None
        self.lock_times: dict = {}
        self.lock_thread: threading.Thread | None = None

    def armed_in(self, stages) -> bool:
        return not self.fired and self.stage in stages

    def tick(self, trial: "Trial") -> None:
        if self.fired:
            self._after_fire(trial)
            return
        inv = trial.latest(self.stage)
        if inv is None:
            return
        if self.at_batch is None:  # a batch count early enough in the stage's work to land inside it: B writes
            # ~8 batches a millisecond, the harness polls every one or two, and taking the lock takes a few more
            todo = trial.expected(self.stage) * (0.5 if self.kind == "stall_store" else 0.9)
            self.at_batch = self.rng.randrange(max(1, round(todo)))
        if inv.exited() or self._due(trial, inv):
            self.fired = True
            self._fire(trial, inv)

    def _due(self, trial: "Trial", inv: Invocation) -> bool:
        if self.target == "worker":
            if self.worker_seen_at is None and trial.worker_pid(inv) is not None:
                self.worker_seen_at = time.time()
            return self.worker_seen_at is not None and time.time() - self.worker_seen_at >= self.after_s
        if trial.db.progress(self.stage) < self.at_batch:
            return False
        if self.at_batch == 0 and not any(r["status"] == "running" for r in trial.db.stage_runs(self.stage)):
            return False  # not even under its lease yet
        if trial.expected(self.stage) == 1:  # one batch (source A): a random moment inside the run
            time.sleep(self.after_s)
        return True

    def _fire(self, trial: "Trial", inv: Invocation) -> None:
        now, alive, self.victim = time.time(), not inv.exited(), inv
        trial.outcome.landed = alive and trial.mid_work(self.stage)
        if self.kind in ("kill_extract", "kill_transform") and self.target != "worker":
            inv.killed = True
            inv.proc.kill()
        elif self.target == "worker":
            pid = trial.worker_pid(inv)
            trial.outcome.landed = trial.outcome.landed and pid is not None
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
        elif self.kind == "stop_past_lease" and alive:
            self._stop_outside_a_transaction(trial, inv)
            now = self.stopped_at = time.time()
        elif self.kind == "stall_store":
            self.lock_thread = threading.Thread(target=hold_write_lock,
                                                args=(trial.db.path, self.stall_s, self.lock_times), daemon=True)
            self.lock_thread.start()
            return  # recovery is timed from the release
        # a killed worker leaves the batch being written in the main process to commit: that is not recovery
        trial.watch = Recovery(trial.db, self.stage, now, in_flight=1 if self.target == "worker" else 0)

    def _stop_outside_a_transaction(self, trial: "Trial", inv: Invocation) -> None:
        """SIGSTOP; a process stopped inside a write transaction blocks every writer of the file (SQLite's
        single write lock), which is the stall fault, not this one: resume it a moment and stop it again."""
        for attempt in range(200):
            inv.proc.send_signal(signal.SIGSTOP)
            if not stopped(inv.proc.pid):  # the signal is asynchronous: until it lands, the process may still
                trial.outcome.other.append("SIGSTOP did not take effect within 2 s")  # take the write lock
                return
            if not write_locked(trial.db.path):
                if attempt:
                    trial.outcome.notes.append(f"stop landed inside a write transaction {attempt}x; re-stopped")
                return
            inv.proc.send_signal(signal.SIGCONT)
            time.sleep(self.rng.uniform(0.0005, 0.003))
        trial.outcome.other.append("could not stop the process outside a write transaction in 200 tries")

    def _after_fire(self, trial: "Trial") -> None:
        if self.stopped_at and not self.victim.detached and time.time() > self.stopped_at + LEASE_TTL_S + 0.1:
            self.victim.detached = True  # its lease has expired: the stage goes on without it
            trial.stale = self.victim
        if "locked" in self.lock_times and "landed" not in self.lock_times:  # the stall begins now, not at the
            self.lock_times["landed"] = trial.outcome.landed = (  # trigger: the stage may be done by then
                not self.victim.exited() and trial.mid_work(self.stage))
        if "released" in self.lock_times and trial.watch is None:
            trial.watch = Recovery(trial.db, self.stage, self.lock_times["released"])


class Trial:
    """One fresh store, the pipeline run to completion (with at most one fault), then every check."""

    def __init__(self, bench: "Bench", config: Config, folder: Path, outcome: Outcome, fault: Fault | None) -> None:
        folder.mkdir(parents=True)
        self.bench, self.config, self.folder, self.outcome, self.fault = bench, config, folder, outcome, fault
        self.env = bench.env(config, folder / "etl.sqlite3")
        self.db = Db(folder / "etl.sqlite3")
        self.invocations: list[Invocation] = []
        self.watch: Recovery | None = None
        self.stale: Invocation | None = None
        self.seen_abandoned: set[str] = set()
        self.ledger_seen_at = 0.0
        self.extracted: dict[str, int] = {}  # batches per extract after the first pass (the clean run's is the
        # yardstick for "mid-work")

    # --- processes -------------------------------------------------------------------------------------------
    def launch(self, stage: str) -> Invocation:
        source, step = ("b", "transform") if not stage.startswith("extract") else (stage[-1], "extract")
        out = self.folder / f"inv-{len(self.invocations)}-{stage.replace(':', '-')}.out"
        with open(out, "wb") as stdout, open(out.with_suffix(".err"), "wb") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "common.cli", "run", "--source", source, "--stage", step,
                                     "--quiet"], cwd=ROOT, env=self.env, stdout=stdout, stderr=stderr)
        self.invocations.append(Invocation(stage, proc, out))
        return self.invocations[-1]

    def latest(self, stage: str) -> Invocation | None:
        return next((inv for inv in reversed(self.invocations) if inv.stage == stage), None)

    @staticmethod
    def worker_pid(inv: Invocation) -> int | None:
        """The transform's normalize worker (a `spawn` child), if it has one now."""
        try:
            for child in psutil.Process(inv.proc.pid).children(recursive=True):
                if any("spawn_main" in part for part in child.cmdline()):
                    return child.pid
        except psutil.Error:
            pass
        return None

    def expected(self, stage: str) -> int:
        """How much the stage has to do: batches of that source in the clean run, or batches written so far."""
        if stage.startswith("extract"):
            return self.bench.reference(self.config)["batches"][stage]
        return (self.db.rows("SELECT COUNT(*) FROM raw_batches") or [(0,)])[0][0]

    def mid_work(self, stage: str) -> bool:
        if stage.startswith("extract"):
            return self.db.progress(stage) < self.expected(stage)
        return bool(self.db.rows("SELECT 1 FROM raw_batches WHERE status = 'pending' LIMIT 1"))

    def look_at_ledger(self, strict: bool = False) -> None:
        """Remember every run ever marked abandoned: a later write must not turn it into a success."""
        self.seen_abandoned |= {run["run_id"] for run in self.db.runs(strict) if abandoned(run)}
        self.ledger_seen_at = time.time()

    def tick(self) -> None:
        if time.time() - self.ledger_seen_at > 0.02:
            self.look_at_ledger()
        if self.fault is not None:
            self.fault.tick(self)
        if self.watch is not None:
            self.watch.poll()

    def drive(self, stages) -> bool:
        """Run each stage until one invocation of it succeeds; relaunch after a kill, skip, partial or failure."""
        current: dict[str, Invocation | None] = dict.fromkeys(stages)
        next_at, done, limit = dict.fromkeys(stages, 0.0), set(), time.time() + PHASE_LIMIT_S
        while True:
            self.tick()
            now = time.time()
            for stage in stages:
                inv = current[stage]
                if stage in done or inv is None or not (inv.detached or inv.exited()):
                    if stage not in done and inv is None and now >= next_at[stage]:
                        current[stage] = self.launch(stage)
                    continue
                if not inv.detached:
                    inv.finish()
                if inv.status == "succeeded":
                    done.add(stage)
                    continue
                current[stage] = None
                next_at[stage] = now if inv.killed or inv.detached else now + RETRY_S
            if len(done) == len(stages) and not (self.fault and self.fault.armed_in(stages)):
                return True
            if now > limit:
                last = {stage: inv.status for stage, inv in current.items() if inv is not None}
                self.outcome.other.append(f"{', '.join(sorted(set(stages) - done))} did not succeed within "
                                          f"{PHASE_LIMIT_S:.0f} s (last answers: {last})")
                for inv in current.values():
                    if inv is not None and not inv.exited():
                        inv.killed = True
                        inv.proc.kill()
                        inv.proc.wait()
                return False
            time.sleep(POLL_S)

    def resume_stale(self) -> None:
        """SIGCONT the invocation stopped past its lease, once the takeover has finished; record what it wrote."""
        inv, self.stale = self.stale, None
        if inv is None:
            return
        before = self.db.state()
        self.look_at_ledger(strict=True)
        inv.proc.send_signal(signal.SIGCONT)
        try:
            inv.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.outcome.other.append("the resumed invocation did not end within 30 s")
            inv.killed = True
            inv.proc.kill()
            inv.proc.wait()
        inv.finish()
        self.outcome.stale += stale_writes(before, self.db.state(), inv)

    def run(self) -> None:
        try:
            for phase in (EXTRACTS, ("transform",)):
                if self.drive(phase):
                    self.resume_stale()
                self.extracted = self.extracted or {stage: self.db.progress(stage) for stage in EXTRACTS}
            if self.fault and self.fault.lock_thread:
                self.fault.lock_thread.join()
            for phase in (EXTRACTS, ("transform",)):  # the pipeline finishes: every stage succeeds once more
                self.drive(phase)
            if self.watch is not None:
                self.watch.poll()
                self.outcome.recovery_s = self.watch.seconds
        finally:
            for inv in self.invocations:
                if not inv.exited():
                    inv.proc.send_signal(signal.SIGCONT)
                    inv.proc.kill()
                    inv.proc.wait()


def changes(columns: list[str], old: tuple, new: tuple) -> str:
    """`column: old -> new` for what differs (inside JSON values too), long texts cut short."""
    def cut(value) -> str:
        return repr(value if not isinstance(value, str) or len(value) < 70 else value[:60] + "...")

    parts = []
    for name, before, after in zip(columns, old, new):
        if before == after:
            continue
        try:
            before, after = json.loads(before), json.loads(after)
            parts += [f"{name}.{key}: {cut(before.get(key))} -> {cut(after.get(key))}"
                      for key in {**before, **after} if before.get(key) != after.get(key)]
        except (TypeError, ValueError, AttributeError):
            parts.append(f"{name}: {cut(before)} -> {cut(after)}")
    return ", ".join(parts)


def stale_writes(before: dict, after: dict, inv: Invocation) -> list[str]:
    """What the resumed invocation changed in the store although another run had taken its lease over."""
    problems = []
    for table in STATE_TABLES:
        columns, old_rows, new_rows = before[table][0], before[table][1], after[table][1]
        new, gone = new_rows - old_rows, old_rows - new_rows
        if not (new or gone):
            continue
        sample = sorted(new or gone, key=repr)[0]
        old = next((row for row in gone if row[0] == sample[0]), None)
        shown = f"{sample[0]!r}: {changes(columns, old, sample)}" if old else f"{'new' if new else 'deleted'} " \
            f"row {sample[0]!r}"
        problems.append(f"resumed {inv.stage} (answered {inv.status}) changed {len(new)} and deleted "
                        f"{len(gone) - len(new) if len(gone) > len(new) else 0} row(s) of {table} after losing its "
                        f"lease, e.g. {shown}")
    return problems


def compare(trial: Trial, clean: dict) -> None:
    """Lost, duplicated and wrong rows against the clean run: normalized rows by natural key (all values but
    ingested_at/run_id) and quarantine entries by id (row_number, raw, reason)."""
    out = trial.outcome
    normalized, quarantine, pending = trial.db.snapshot()
    for got, want, what in ((normalized, clean["normalized"], "normalized"), (quarantine, clean["quarantine"],
                                                                               "quarantine")):
        lost, extra = want.keys() - got.keys(), got.keys() - want.keys()
        wrong = [key for key in want.keys() & got.keys() if got[key] != want[key]]
        out.lost, out.duplicated, out.wrong = out.lost + len(lost), out.duplicated + len(extra), out.wrong + len(wrong)
        for label, keys in (("lost", lost), ("extra", extra)):
            if keys:
                out.examples.append(f"{what} {label}: {len(keys)}, e.g. {sorted(keys, key=repr)[0]}")
        if wrong:
            key = sorted(wrong, key=repr)[0]
            out.examples.append(f"{what} wrong: {len(wrong)}, e.g. {key}: {got[key]} != clean {want[key]}")
    keys = [row.get("idempotency_key") for row in normalized.values()]
    if len(set(keys)) != len(keys):
        out.duplicated += len(keys) - len(set(keys))
        out.examples.append(f"{len(keys) - len(set(keys))} idempotency keys appear on more than one row")
    if pending:
        out.other.append(f"{pending} raw batch(es) still pending after every stage succeeded")


def abandoned(run: dict) -> bool:
    return any("abandoned" in error for error in run["summary"].get("errors", []))


def ledger_anomalies(runs: list[dict], invocations: list[Invocation], seen_abandoned: frozenset = frozenset()
                     ) -> tuple[list[str], list[str]]:
    """(ledger anomalies, other problems): final statuses, overlaps of successful runs, abandoned successes (now,
    or marked abandoned at any moment the harness looked: `seen_abandoned`), and every invocation's answer
    against its ledger entry."""
    anomalies, other, by_id = [], [], {run["run_id"]: run for run in runs}
    for run in runs:
        name = f"{run['stage']}:{run['source'] or '-'} {run['run_id']}"
        if run["status"] not in ("succeeded", "partial", "failed", "skipped"):
            anomalies.append(f"{name} left {run['status']!r}")
        if run["status"] == "succeeded" and (abandoned(run) or run["run_id"] in seen_abandoned):
            anomalies.append(f"{name} is succeeded and {'is' if abandoned(run) else 'was'} marked abandoned")
    worked = sorted((run for run in runs if run["status"] == "succeeded" and run["finished_at"] and (
        run["rows_in"] or run["summary"].get("batches") or run["summary"].get("pages"))), key=lambda r: r["started_at"])
    for i, first in enumerate(worked):
        for second in worked[i + 1:]:
            if (first["stage"], first["source"]) == (second["stage"], second["source"]) and \
                    epoch(second["started_at"]) < epoch(first["finished_at"]):
                anomalies.append(f"{first['stage']}:{first['source'] or '-'}: succeeded runs {first['run_id']} "
                                 f"({first['started_at']}..{first['finished_at']}, rows_in {first['rows_in']}) and "
                                 f"{second['run_id']} ({second['started_at']}..{second['finished_at']}, rows_in "
                                 f"{second['rows_in']}) overlapped while both did work")
    for inv in invocations:
        if inv.reply is None:
            if not inv.killed:
                err = inv.out.with_suffix(".err").read_text(encoding="utf-8", errors="replace").strip()
                other.append(f"{inv.stage} invocation exited {inv.proc.returncode} without an answer: "
                             f"{err.splitlines()[-1] if err else '(no stderr)'}")
            continue
        for answered in inv.reply.get("runs", []):
            recorded = by_id.get(answered["run_id"])
            if recorded is None:
                anomalies.append(f"{inv.stage} answered run {answered['run_id']} ({answered['status']}), "
                                 "which is not in the ledger")
            elif recorded["status"] != answered["status"]:
                anomalies.append(f"{inv.stage} run {answered['run_id']} answered {answered['status']!r}, the ledger "
                                 f"says {recorded['status']!r}")
    return anomalies, other


class Bench:
    """The inputs, one source emulator for every trial, and the clean reference of each input."""

    def __init__(self, workdir: Path, keep: bool) -> None:
        self.workdir, self.keep = workdir, keep
        self.configs = write_inputs(workdir)
        self.references: dict[str, dict] = {}
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        # one market snapshot for the whole bench (--snapshot-every 0): A and C answer the same records, with the
        # same last_updated (observed_at), to the clean run and to every trial, so their rows compare exactly
        self.emulator = subprocess.Popen(
            [sys.executable, "-m", "local.emulator", "--port", "0", "--snapshot-every", "0", "--coins", "90",
             "--seed", "1"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        first = self.emulator.stdout.readline()  # "source A: http://127.0.0.1:PORT/v1/tickers"
        if not first.startswith("source A: http"):
            raise RuntimeError(f"the emulator did not start: {first!r}")
        self.url = first.split(": ", 1)[1].strip().removesuffix("/v1/tickers")

    def env(self, config: Config, db_path: Path) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key != "MONGODB_URI"}
        env.update(PYTHONPATH=str(ROOT), SQLITE_PATH=str(db_path), SOURCE_B_PATH=str(config.csv),
                   CSV_CHUNK_ROWS=str(config.chunk_rows), LEASE_TTL_S=str(LEASE_TTL_S), TRANSFORM_WORKERS="1",
                   SOURCE_A_URL=f"{self.url}/v1/tickers", SOURCE_C_URL=f"{self.url}/api/v3/coins/markets",
                   SOURCE_A_RATE="100/1s", SOURCE_C_RATE="100/1s", SOURCE_C_PER_PAGE="20", SOURCE_C_MAX_PAGES="10",
                   LOG_LEVEL="WARNING")
        return env

    def reference(self, config: Config) -> dict:
        """The clean run of `config`: extracts side by side, then the transform, no fault; it must be clean."""
        if config.name not in self.references:
            outcome = Outcome(seed=0, kind="clean", target="-")
            trial = Trial(self, config, self.workdir / f"clean-{config.name}", outcome, None)
            trial.run()
            normalized, quarantine, pending = trial.db.snapshot()
            anomalies, other = ledger_anomalies(trial.db.runs(strict=True), trial.invocations)
            if pending or anomalies or other or outcome.other or not normalized:
                raise RuntimeError(f"the clean run of {config.name} is not clean: {anomalies + other + outcome.other}"
                                   f" ({pending} pending, {len(normalized)} rows)")
            self.references[config.name] = {"normalized": normalized, "quarantine": quarantine,
                                            "batches": trial.extracted}
            trial.db.close()
        return self.references[config.name]

    def trial(self, index: int, seed: int, kind: str, target: str) -> Outcome:
        outcome = Outcome(seed=seed, kind=kind, target=target)
        config = self.configs["worker" if target == "worker" else "small"]
        clean = self.reference(config)
        trial = Trial(self, config, self.workdir / f"trial-{index}-seed-{seed}", outcome,
                      Fault(kind, target, random.Random(seed)))
        try:
            trial.run()
            compare(trial, clean)
            anomalies, other = ledger_anomalies(trial.db.runs(strict=True), trial.invocations,
                                                frozenset(trial.seen_abandoned))
            outcome.ledger += anomalies
            outcome.other += other
        except RuntimeError as exc:  # the store could not be read: say so, count nothing as lost
            outcome.other.append(str(exc))
        finally:
            trial.db.close()
            if not self.keep:
                for path in sorted(trial.folder.iterdir()):
                    path.unlink()
                trial.folder.rmdir()
        return outcome

    def close(self) -> None:
        self.emulator.terminate()
        try:
            self.emulator.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.emulator.kill()
            self.emulator.wait()


def describe(outcome: Outcome) -> str:
    recovery = "never" if outcome.recovery_s is None else f"{outcome.recovery_s:.2f} s"
    head = (f"seed {outcome.seed:<6} {outcome.kind:<16} {outcome.target:<10} "
            f"{'landed' if outcome.landed else 'missed'}  recovery {recovery:<8}")
    head += "".join(f"({note}) " for note in outcome.notes)
    if not outcome.failed:
        return head + " ok"
    lines = [head + f" FAIL lost={outcome.lost} dup={outcome.duplicated} wrong={outcome.wrong} "
                    f"ledger={len(outcome.ledger)} stale={len(outcome.stale)} other={len(outcome.other)}"]
    lines += [f"      {text}" for text in (outcome.examples + outcome.ledger + outcome.stale + outcome.other)[:8]]
    lines.append(f"      replay: bench/chaos.py {outcome.replay()}")
    return "\n".join(lines)


def summarize(outcomes: list[Outcome]) -> dict:
    by_kind = {}
    for kind in dict.fromkeys(outcome.kind for outcome in outcomes):
        mine = [outcome for outcome in outcomes if outcome.kind == kind]
        recoveries = [o.recovery_s for o in mine if o.recovery_s is not None]
        by_kind[kind] = {
            "trials": len(mine), "landed": sum(o.landed for o in mine), "lost": sum(o.lost for o in mine),
            "duplicated": sum(o.duplicated for o in mine), "wrong": sum(o.wrong for o in mine),
            "ledger_anomalies": sum(len(o.ledger) for o in mine), "stale_writes": sum(len(o.stale) for o in mine),
            "other": sum(len(o.other) for o in mine), "never_recovered": len(mine) - len(recoveries),
            "recovery_median_s": round(statistics.median(recoveries), 2) if recoveries else None,
            "recovery_max_s": round(max(recoveries), 2) if recoveries else None,
            "failed_trials": sum(o.failed for o in mine),
        }
    return by_kind


def print_table(by_kind: dict) -> None:
    columns = ("trials", "landed", "lost", "duplicated", "wrong", "ledger_anomalies", "stale_writes", "other",
               "recovery_median_s", "recovery_max_s", "failed_trials")
    titles = ("trials", "landed", "lost", "dup", "wrong", "ledger", "stale", "other", "rec.med", "rec.max", "FAILED")
    print(f"{'fault':<16}" + "".join(f"{title:>8}" for title in titles))
    for kind, figures in by_kind.items():
        print(f"{kind:<16}" + "".join(f"{'-' if figures[c] is None else figures[c]:>8}" for c in columns))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, help="trials; fault kinds take turns (default 8)")
    parser.add_argument("--seed", type=int, default=1, help="trial i uses seed + i (default 1)")
    parser.add_argument("--fault", choices=KINDS, help="only this fault kind")
    parser.add_argument("--target", help="only this target (with --fault): " + "; ".join(
        f"{kind}: {', '.join(targets)}" for kind, targets in TARGETS.items()))
    parser.add_argument("--workdir", help="where inputs and stores go (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep every store and invocation output")
    args = parser.parse_args(argv)
    if args.target and (not args.fault or args.target not in TARGETS[args.fault]):
        parser.error("--target needs --fault and must be one of that fault's targets")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    kinds, outcomes, started = (args.fault,) if args.fault else KINDS, [], time.time()
    try:
        bench = Bench(workdir, args.keep)
    except (OSError, RuntimeError) as exc:
        print(f"harness error: {exc}", file=sys.stderr)
        return 2
    try:
        for index in range(args.trials):
            kind = kinds[index % len(kinds)]
            targets = TARGETS[kind]
            target = args.target or targets[(index // len(kinds)) % len(targets)]
            outcomes.append(bench.trial(index, args.seed + index, kind, target))
            print(f"[{index + 1:>3}/{args.trials}] {describe(outcomes[-1])}", flush=True)
    except RuntimeError as exc:
        print(f"harness error: {exc}", file=sys.stderr)
        return 2
    finally:
        bench.close()
        if not args.keep:
            import shutil
            shutil.rmtree(workdir, ignore_errors=True)
    by_kind = summarize(outcomes)
    print(f"\n{len(outcomes)} trials in {time.time() - started:.0f} s (lease TTL {LEASE_TTL_S} s; a recovery over "
          f"{RECOVERY_LIMIT_S:.0f} s fails)")
    print_table(by_kind)
    failing = [outcome for outcome in outcomes if outcome.failed]
    for outcome in failing:
        print(f"FAILED: bench/chaos.py {outcome.replay()}")
    print(json.dumps({"trials": len(outcomes), "seed": args.seed, "by_kind": by_kind,
                      "failing": [{"replay": o.replay(), "problems": (o.examples + o.ledger + o.stale + o.other)[:5]}
                                  for o in failing], "ok": not failing}))
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
