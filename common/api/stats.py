"""GET /stats: what the pipeline has done, per source and overall, read from the store on each request.

Definitions (so the figures can be checked against the ledger):
- `runs`: every ledger entry of the source's extract stage (skipped and running included); `failed_runs` those
  that ended `failed`; `error_rate` = failed / (succeeded + partial + failed), null when none finished.
- `duration_ms`: average and p95 (nearest rank) over the finished runs among the newest `WINDOW` runs of that
  stage and source (a bounded window: the cost does not grow with the ledger).
- `last_success`: the newest run that ended `succeeded` or `partial` (a partial run delivered data), and when
  it finished.
- The answer is computed at most once per `CACHE_TTL_S` (5 s) per process (`generated_at` says when); while a
  new one is computed, other callers get the previous one.
- `overall.error_rate_24h` / `_7d`: over every stage run (extract, transform_load, quarantine_replay) started in
  that span; passes (`pipeline` runs) are left out, since a pass only sums up its stage runs.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
import flask

from common.api.params import single_values
from common.clock import Clock, iso_utc
from common.sources import SOURCE_NAMES
from common.store import FINISHED_STATUSES, Run, Store

WINDOW = 500
CACHE_TTL_S = 5.0
GOOD = ("succeeded", "partial")
PASS_STAGE = "pipeline"
DAY_S = 86400.0


def stats_blueprint(store: Store, clock: Clock, ttl_s: float = CACHE_TTL_S) -> flask.Blueprint:
    """/stats, computed at most once per `ttl_s` per process (about 30 store reads: ~22 ms over 100k runs);
    the figures move when a run ends, and a scrape or dashboard polling it must not load the store."""
    blueprint = flask.Blueprint("stats", __name__)
    cache: dict = {}
    computing = threading.Lock()

    @blueprint.get("/stats")
    def stats():
        single_values(flask.request.args, ())
        now = clock()
        fresh = "body" in cache and 0 <= now - cache["at"] < ttl_s
        # one computation at a time; while it runs, callers get the previous answer (at most one period older)
        # instead of queueing behind it: only the caller that computes waits (~22 ms over 100k runs)
        if not fresh and computing.acquire(blocking="body" not in cache):
            try:
                now = clock()
                if "body" not in cache or not 0 <= now - cache["at"] < ttl_s:  # kept encoded: a hit encodes nothing
                    cache.update(body=json.dumps(collect_stats(store, now), separators=(",", ":")).encode(), at=now)
            finally:
                computing.release()
        return flask.Response(cache["body"], mimetype="application/json")

    return blueprint


def collect_stats(store: Store, now: float) -> dict:
    counts = store.count_runs()
    last_good = {(run.stage, run.source): run for run in store.latest_runs(GOOD)}
    sources = {}
    for source in SOURCE_NAMES:
        pending = store.count_raw_batches(source, pending_only=True)
        sources[source] = {
            "records": store.count_normalized(source),
            "raw_batches": {"pending": pending, "done": store.count_raw_batches(source) - pending},
            **_stage_figures(store, counts, last_good, "extract", source),
            "quarantine_unresolved": store.count_quarantine(source, unresolved_only=True),
        }
    stages = {stage: _stage_figures(store, counts, last_good, stage, None) for stage in ("transform_load", PASS_STAGE)}
    overall = {
        "last_successful_pass": _when(last_good.get((PASS_STAGE, None))),
        "pass_duration_ms": stages[PASS_STAGE]["duration_ms"],
        "error_rate_24h": _error_rate(_stage_runs(store.count_runs(since=iso_utc(now - DAY_S)))),
        "error_rate_7d": _error_rate(_stage_runs(store.count_runs(since=iso_utc(now - 7 * DAY_S)))),
    }
    return {"sources": sources, "stages": stages, "overall": overall,
            "window": {"runs_per_stage_and_source": WINDOW}, "generated_at": iso_utc(now)}


def _stage_figures(store: Store, counts: dict, last_good: dict, stage: str, source: str | None) -> dict:
    by_status = Counter({status: n for (s, src, status), n in counts.items() if s == stage and src == source})
    durations = store.run_durations(stage, source, WINDOW)
    return {
        "runs": sum(by_status.values()), "failed_runs": by_status["failed"], "error_rate": _error_rate(by_status),
        "duration_ms": _durations(durations), "last_success": _when(last_good.get((stage, source))),
    }


def _stage_runs(counts: dict) -> Counter:
    """Runs by status over every stage but passes."""
    total: Counter = Counter()
    for (stage, _, status), n in counts.items():
        if stage != PASS_STAGE:
            total[status] += n
    return total


def _error_rate(by_status: Counter) -> float | None:
    finished = sum(by_status[status] for status in FINISHED_STATUSES)
    return by_status["failed"] / finished if finished else None


def _durations(values: list[int]) -> dict:
    if not values:
        return {"avg": None, "p95": None, "runs": 0}
    ordered = sorted(values)
    return {"avg": round(sum(ordered) / len(ordered)), "p95": ordered[math.ceil(0.95 * len(ordered)) - 1],
            "runs": len(ordered)}


def _when(run: Run | None) -> dict | None:
    return {"run_id": run.run_id, "at": run.finished_at or run.started_at} if run is not None else None
