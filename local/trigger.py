"""The trigger (the container standing in for Cloud Scheduler): one pass of the orchestrator per tick of ETL_SCHEDULE.

    python -m local.trigger               # stages over HTTP: EXTRACT_SOURCE_A_URL ... TRANSFORM_LOAD_URL
    python -m local.trigger --in-process  # stages in this process (no functions needed)
    python -m local.trigger --once        # one pass now; exit 0 only if it succeeded

- A pass per tick, never two at once: the pass runs under the `pipeline` lease, and a tick is claimed in the store
  (`trigger:last_tick`), so two triggers on one store do not both start a pass for it.
- No burst after downtime: on start, at most one pass — when no tick was ever served, the last one's pass did not
  finish (killed), or a tick passed while the trigger was down; then the next tick after *now*. Ticks that pass
  while a pass runs are not made up either.
- A pass that finds the `pipeline` lease held (a killed trigger's pass holds it until its TTL) is tried once more
  after LEASE_TTL_S, if that comes before the next tick.
- Heartbeat in the store under `trigger:heartbeat`: {"at", "pid", "state": "idle"|"running", "pass_run_id",
  "next_tick"} (times ISO 8601 UTC), written on every tick and every `--heartbeat-s` (10 s) while idle or running.
- SIGTERM/SIGINT/SIGHUP: the running pass is stopped (recorded `failed`, listing the stages it abandoned, its lease
  released) and the trigger exits within a few seconds, logging what was abandoned.
- Logs: `service` "trigger" (or the runner's, inside `make run`), and the pass's `run_id` on every record logged while
  a pass runs (common/logs.py: JSON lines, or text on a terminal).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from typing import Callable, TextIO

from common.clock import iso_utc
from common.config import Settings
from common.errors import ConfigError, EtlError
from common.invokers import HttpInvoker, InProcessInvoker, StageInvoker
from common.logs import configure_logging, secret_values, set_log_context
from common.orchestrator import describe_pass, run_pass
from common.schedule import TRIGGER_HEARTBEAT_KEY as HEARTBEAT_KEY
from common.schedule import TRIGGER_LAST_TICK_KEY as LAST_TICK_KEY
from common.schedule import Schedule, parse_schedule
from common.store import Run
from common.store.state import update_state
from common.wiring import Wiring, get_wiring

log = logging.getLogger("local.trigger")
__all__ = ["HEARTBEAT_KEY", "LAST_TICK_KEY", "Trigger", "main", "on_signals"]

SLICE_S = 0.25  # how often a waiting trigger looks up (a stop is noticed within this)


class Trigger:
    """Runs passes on a schedule until stopped. `wait(seconds) -> stopping?` and the wiring's clock are injected in
    tests; by default the wait is real and a stop cuts it short."""

    def __init__(self, wiring: Wiring, invoker: StageInvoker, schedule: Schedule, *, run_on_start: bool = False,
                 heartbeat_s: float = 10.0, grace_s: float = 5.0, wait: Callable[[float], bool] | None = None,
                 one_pass: Callable[..., Run] = run_pass, out: TextIO | None = None) -> None:
        self.wiring, self.store, self.clock = wiring, wiring.store, wiring.clock
        self.invoker, self.schedule, self.run_on_start = invoker, schedule, run_on_start
        self.heartbeat_s, self.grace_s, self.one_pass, self.out = heartbeat_s, grace_s, one_pass, out
        self.stopping, self.cancel = threading.Event(), threading.Event()
        self.wait = wait or self.stopping.wait
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stop_reason: str | None = None
        self.current: Run | None = None
        self.next_tick: float | None = None

    def stop(self, reason: str = "stop requested") -> None:
        """Stop soon: cut a wait short and stop the running pass (safe from a signal handler)."""
        self.stop_reason = self.stop_reason or reason
        self.stopping.set()
        self.cancel.set()

    def run(self, max_passes: int | None = None) -> int:
        """Serve ticks until stopped (or `max_passes` passes); 0, or with --once 1 unless the pass succeeded."""
        passes, last = 0, None
        due = self.run_on_start or self._missed()
        while not self.stopping.is_set():
            if due:
                tick, due = self.clock(), False
            else:
                tick = self.schedule.next_after(self.clock())
                if self._idle_until(tick):
                    break
            if not self._claim(tick):
                log.info("tick %s: claimed by another trigger", iso_utc(tick))
                continue
            last = self._pass(tick)
            retry_at = self.clock() + self.wiring.settings.lease_ttl_s
            if (last and last.status == "skipped" and retry_at < self.schedule.next_after(tick)
                    and not self._idle_until(retry_at)):
                last = self._pass(tick)  # a dead holder's lease has lapsed by now; a live one keeps it
            self._finish_tick(tick, last)
            passes += 1
            if max_passes is not None and passes >= max_passes:
                break
        if self.stopping.is_set() and not (last and "abandoned" in last.summary) and self.current is None:
            log.warning("trigger stopping (%s): idle, no pass abandoned", self.stop_reason)
        return 0 if max_passes is None or (last is not None and last.status == "succeeded") else 1

    # --- ticks ---------------------------------------------------------------------------------------------------
    def _missed(self) -> bool:
        """Whether a pass is due on start: never served, the last tick's pass did not finish, or a tick went by."""
        try:
            stored, _ = self.store.get_state(LAST_TICK_KEY)
        except EtlError as exc:
            log.warning("trigger: last tick unreadable (%s); running a pass on start", exc.message)
            return True
        if not stored or not stored.get("finished"):
            return True
        return self.schedule.next_after(stored["tick"]) <= self.clock()

    def _claim(self, tick: float) -> bool:
        def claim(stored: dict | None) -> dict | None:
            if stored and stored.get("tick", 0) >= tick:
                return None  # another trigger serves this tick (or a later one)
            return {"tick": tick, "at": iso_utc(tick), "claimed_by": self.instance, "finished": False}

        try:
            now = update_state(self.store, LAST_TICK_KEY, claim)
        except EtlError as exc:  # the pass will meet the same store and record what it can
            log.warning("trigger: tick not recorded (%s); running the pass anyway", exc.message)
            return True
        return bool(now) and now.get("claimed_by") == self.instance and now.get("tick") == tick

    def _finish_tick(self, tick: float, run: Run | None) -> None:
        def finish(stored: dict | None) -> dict | None:
            if not stored or stored.get("tick") != tick or stored.get("claimed_by") != self.instance:
                return None
            if run is None or "abandoned" in run.summary:
                return None  # unfinished: the next start runs a pass
            return {**stored, "finished": True, "pass_run_id": run.run_id, "status": run.status}

        try:
            update_state(self.store, LAST_TICK_KEY, finish)
        except EtlError as exc:
            log.warning("trigger: end of tick not recorded: %s", exc.message)

    def _idle_until(self, moment: float) -> bool:
        """Wait until `moment`, beating; True when stopped meanwhile."""
        self.next_tick = moment
        while (left := moment - self.clock()) > 0:
            self._beat("idle")
            if self.wait(min(self.heartbeat_s, left)):
                return True
        return self.stopping.is_set()

    # --- one pass ------------------------------------------------------------------------------------------------
    def _pass(self, tick: float) -> Run | None:
        self.next_tick, result = self.schedule.next_after(max(tick, self.clock())), {}

        def started(run: Run) -> None:
            self.current = run
            set_log_context(run_id=run.run_id)  # this thread serves this pass only
            self._beat("running")

        def body() -> None:
            result["run"] = self.one_pass(self.wiring, self.invoker, cancel=self.cancel, on_start=started)

        worker = threading.Thread(target=body, name="trigger-pass", daemon=True)
        worker.start()
        self._beat("running")
        beat_at = time.monotonic() + self.heartbeat_s
        while worker.is_alive() and not self.stopping.is_set():
            worker.join(SLICE_S)
            if time.monotonic() >= beat_at:
                self._beat("running")
                beat_at = time.monotonic() + self.heartbeat_s
        if self.stopping.is_set():
            worker.join(self.grace_s)
        run = result.get("run")
        if run is None:  # stopped, and the pass did not wind down within the grace period
            pass_id = self.current.run_id if self.current else None
            log.warning("trigger stopping (%s): pass %s still running after %.1fs; abandoned as it stands (its "
                        "lease lapses and the next pass marks it abandoned)", self.stop_reason,
                        pass_id or "(not started)", self.grace_s, extra={"run_id": pass_id})
            return None
        self.current = None
        if "abandoned" in run.summary:
            what = ", ".join(" ".join(filter(None, (a["stage"], a["source"]))) for a in run.summary["abandoned"])
            log.warning("trigger stopping (%s): pass %s abandoned with %s in flight", self.stop_reason,
                        run.run_id, what or "nothing", extra={"run_id": run.run_id})
        if self.out is not None:
            self.out.write(describe_pass(run.to_dict()))
            self.out.flush()
        self._beat("idle")
        return run

    def _beat(self, state: str) -> None:
        doc = {"at": iso_utc(self.clock()), "pid": os.getpid(), "state": state,
               "pass_run_id": self.current.run_id if self.current and state == "running" else None,
               "next_tick": iso_utc(self.next_tick) if self.next_tick else None}
        try:
            update_state(self.store, HEARTBEAT_KEY, lambda _stored: doc)
        except EtlError as exc:  # the store is down: the trigger goes on, the heartbeat goes stale
            log.warning("trigger: heartbeat not written: %s", exc.message)


def on_signals(trigger: Trigger) -> None:
    """SIGTERM, SIGINT and SIGHUP stop the trigger (main thread only)."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda number, _frame: trigger.stop(signal.Signals(number).name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in-process", action="store_true", help="run the stages in this process, not over HTTP")
    parser.add_argument("--run-now", action="store_true", help="a pass on start even if no tick was missed")
    parser.add_argument("--once", action="store_true", help="one pass now, then exit (0 only if it succeeded)")
    parser.add_argument("--heartbeat-s", type=float, default=10.0, help="heartbeat interval (default 10 s)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_level, settings.log_format, service="trigger",
                          secrets=secret_values(settings))
        wiring = get_wiring()
        schedule = parse_schedule(wiring.settings.etl_schedule)
        invoker = InProcessInvoker(wiring) if args.in_process else HttpInvoker.from_settings(wiring.settings)
    except ConfigError as exc:
        print(f"trigger: {exc.message}", file=sys.stderr)
        return 2
    trigger = Trigger(wiring, invoker, schedule, run_on_start=args.run_now or args.once,
                      heartbeat_s=args.heartbeat_s, out=sys.stdout)
    on_signals(trigger)
    log.info("trigger: schedule %r (next tick %s)", schedule.expression, iso_utc(schedule.next_after(time.time())))
    return trigger.run(max_passes=1 if args.once else None)


if __name__ == "__main__":
    sys.exit(main())
