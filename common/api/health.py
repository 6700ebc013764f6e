"""GET /health and GET /health/live in the format of draft-inadarei-api-health-check (`application/health+json`).

`/health` tells an operator (or a load balancer) whether the API can serve and whether the ETL behind it is
alive: `store:responseTime` (one ping, observed in ms; a store that does not answer is `fail`, 503, and nothing
else is asked, so the answer comes within the store's own timeout: 3 s for MongoDB), `scheduler:heartbeat` (the
trigger's heartbeat in shared state; `warn` when absent or older than twice the schedule period) and
`<source>:freshness` (the end of the source's last good extract, succeeded or partial; `warn` when there is none
or it is older than twice the schedule period). Stale data is `warn`, not `fail`: the API still serves what it
has, so the status is 200. `/health/live` says only that the process answers, and touches no dependency.
"""

from __future__ import annotations

import json
import logging
import time

import flask

from common.api.envelope import etl_error_response, request_id_of
from common.api.params import single_values
from common.clock import Clock, epoch_or_none, iso_utc
from common.errors import StoreError
from common.schedule import TRIGGER_HEARTBEAT_KEY, parse_schedule
from common.sources import SOURCE_NAMES
from common.store import Store

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/health+json"
GOOD = ("succeeded", "partial")
STALE_AFTER_PERIODS = 2
_RANK = {"pass": 0, "warn": 1, "fail": 2}


def health_blueprint(store: Store, clock: Clock, etl_schedule: str) -> flask.Blueprint:
    blueprint = flask.Blueprint("health", __name__)
    stale_after_s = STALE_AFTER_PERIODS * parse_schedule(etl_schedule).period_s

    @blueprint.get("/health/live")
    def live():
        single_values(flask.request.args, ())
        flask.g.store_failed = True  # not a failure: this answer must not ask the store, not even for X-Run-ID
        return _answer({"status": "pass", "description": "the API process answers"})

    @blueprint.get("/health")
    def health():
        single_values(flask.request.args, ())
        now = clock()
        checks: dict[str, list[dict]] = {}
        started = time.perf_counter()
        try:
            store.ping()
            checks["store:responseTime"] = [_check("datastore", "pass", now, round(_ms(started), 2), "ms")]
            checks["scheduler:heartbeat"] = [_heartbeat(store.get_state(TRIGGER_HEARTBEAT_KEY)[0], now, stale_after_s)]
            last_good = {run.source: run for run in store.latest_runs(GOOD) or [] if run.stage == "extract"}
        except StoreError as error:
            flask.g.store_failed = True
            envelope = json.loads(etl_error_response(error, _request_id()).get_data())  # logs the detail
            checks["store:responseTime"] = [{**_check("datastore", "fail", now, round(_ms(started), 2), "ms"),
                                             "output": envelope["error"]["message"]}]
            return _answer({"status": "fail", "description": "the data store is unavailable", "checks": checks,
                            **envelope}, 503)
        for source in SOURCE_NAMES:
            checks[f"{source}:freshness"] = [_freshness(source, last_good.get(source), now, stale_after_s)]
        status = max((entry["status"] for entry in sum(checks.values(), [])), key=_RANK.__getitem__)
        return _answer({"status": status, "description": "crypto-etl API and the ETL behind it", "checks": checks})

    return blueprint


def _heartbeat(beat: dict | None, now: float, stale_after_s: float) -> dict:
    at = epoch_or_none(beat.get("at")) if isinstance(beat, dict) else None
    if at is None:
        return {**_check("component", "warn", now, None), "output": "no trigger heartbeat: is the trigger running?"}
    entry = _check("component", "pass", now, iso_utc(at))
    if now - at > stale_after_s:
        entry.update(status="warn", output=f"heartbeat stale: last at {iso_utc(at)}, {now - at:.0f} s ago "
                                           f"(more than {stale_after_s:.0f} s, twice the schedule period)")
    return entry


def _freshness(source: str, run, now: float, stale_after_s: float) -> dict:
    at = epoch_or_none(run.finished_at or run.started_at) if run is not None else None
    if at is None:
        return {**_check("component", "warn", now, None), "output": f"{source}: no successful extract yet"}
    entry = _check("component", "pass", now, iso_utc(at))
    if now - at > stale_after_s:
        entry.update(status="warn", output=f"{source}: last successful extract {now - at:.0f} s ago (more than "
                                           f"{stale_after_s:.0f} s, twice the schedule period), run {run.run_id}")
    return entry


def _check(component_type: str, status: str, now: float, value, unit: str | None = None) -> dict:
    entry = {"componentType": component_type, "status": status, "observedValue": value, "time": iso_utc(now)}
    if unit:
        entry["observedUnit"] = unit
    return entry


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _request_id() -> str:
    return flask.g.get("request_id") or request_id_of(flask.request)


def _answer(body: dict, status: int = 200) -> flask.Response:
    response = flask.Response(json.dumps(body), status=status, mimetype=MEDIA_TYPE)
    response.headers["Cache-Control"] = "no-store"
    return response
