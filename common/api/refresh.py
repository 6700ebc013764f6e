"""POST /refresh: one pipeline pass, run inside the request, for a caller holding a valid bearer token.

Two kinds of caller (common/api/auth.py): an operator with an HS256 token from `etl token`, and, on Google Cloud,
the Cloud Scheduler job `etl-pass` with a Google-signed OIDC ID token, one pass per ETL_SCHEDULE tick (so scheduled
work is recorded as `pipeline` runs and pass-level alerts fire). Both meet the same 429 and 409 rules below.

Why inside the request: on a FaaS platform nothing may outlive the response (a thread left running is frozen or
killed with the instance), so the pass runs to its end before the answer, within the invocation's budget
(INVOCATION_BUDGET_S). The orchestrator may overrun its pass budget by one extract and one transform invocation and
by one lease TTL (a skipped stage is retried once after it), and alerts take up to ALERT_TIMEOUT_S afterwards; so the
pass gets half of what is left once those are reserved, and each stage invocation a quarter. When the pass budget
ran out with work left (the pass is `partial`), the answer is 202 with the pass id and `Location: /runs/<id>`:
what was done is recorded there and the next pass picks up the rest.

A pass already holding the `pipeline` lease (the trigger's, another refresh's) makes ours `skipped`: 409 with its
id. At most one refresh per REFRESH_MIN_S across every process: the last refresh time is kept in the store under
`refresh:last` and claimed by compare-and-set; a refresh that then ran nothing (409) gives its claim back.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import uuid
from typing import Callable

import flask

from common.api.auth import GoogleKeys, challenge, verify_bearer
from common.api.envelope import json_error, request_id_of
from common.clock import Deadline
from common.config import Settings
from common.errors import KeysUnavailable, RefreshDisabled, Unauthorized
from common.invokers import InProcessInvoker, StageInvoker
from common.orchestrator import run_pass
from common.store import Run, Store
from common.store.state import update_state
from common.wiring import Wiring

log = logging.getLogger(__name__)

STATE_KEY = "refresh:last"
InvokerFor = Callable[[Wiring], StageInvoker]


def refresh_blueprint(wiring: Wiring, invoker_for: InvokerFor = InProcessInvoker) -> flask.Blueprint:
    """The /refresh resource; `invoker_for` builds the stage invoker from the pass's (budget-trimmed) wiring."""
    blueprint = flask.Blueprint("refresh", __name__)
    google_keys = GoogleKeys()  # fetched on the first Google ID token, then cached for this process

    @blueprint.post("/refresh")
    def refresh():
        request_id = flask.g.get("request_id") or request_id_of(flask.request)
        try:
            claims = verify_bearer(flask.request.headers.get("Authorization"), wiring.settings, google_keys)
        except Unauthorized as exc:
            response = json_error(401, exc.code, exc.message, request_id)
            response.headers["WWW-Authenticate"] = challenge(exc)
            return response
        except (RefreshDisabled, KeysUnavailable) as exc:
            return json_error(503, exc.code, exc.message, request_id)
        return _refresh(wiring, invoker_for, request_id, str(claims.get("sub", "?"))[:64])

    return blueprint


def pass_settings(settings: Settings, budget_s: float) -> tuple[Settings, float]:
    """Settings for a pass that must end within `budget_s`, and that pass's own budget (see the module doc)."""
    reserve = settings.lease_ttl_s + settings.alert_timeout_s + min(5.0, budget_s / 10)
    usable = max(budget_s - reserve, budget_s / 4)
    pass_s, stage_s = usable / 2, usable / 4
    return dataclasses.replace(settings, pass_budget_s=pass_s, invocation_budget_s=stage_s), pass_s


def _refresh(wiring: Wiring, invoker_for: InvokerFor, request_id: str, subject: str) -> flask.Response:
    settings, store, clock = wiring.settings, wiring.store, wiring.clock
    claim = uuid.uuid4().hex
    wait_s = _claim(store, clock(), settings.refresh_min_s, claim)
    if wait_s is not None:
        response = json_error(429, "too_many_requests", f"at most one refresh per {settings.refresh_min_s:g}s; "
                              f"retry in {wait_s}s", request_id)
        response.headers["Retry-After"] = str(wait_s)
        return response
    trimmed, pass_s = pass_settings(settings, settings.invocation_budget_s)
    pass_wiring = dataclasses.replace(wiring, settings=trimmed)
    budget = Deadline(clock, pass_s)
    log.info("refresh requested by %r (request %s)", subject, request_id, extra={"request_id": request_id})
    run = run_pass(pass_wiring, invoker_for(pass_wiring))
    if run.status == "skipped":
        _give_back(store, claim)
        running = _running_pass(store)
        response = json_error(409, "pass_running", f"a pass is already running ({running or 'id unknown'}); "
                              "see /runs/<id>, or retry when it has finished", request_id)
        body = response.get_json()
        body["pass_id"] = running
        response.set_data(flask.json.dumps(body))
        if running:
            response.headers["Location"] = f"/runs/{running}"
        return response
    body = {"pass_id": run.run_id, "pass": run.to_dict()}
    if run.status == "partial" and budget.remaining() <= 0:
        response = flask.jsonify({**body, "location": f"/runs/{run.run_id}"})
        response.status_code = 202
        response.headers["Location"] = f"/runs/{run.run_id}"
        return response
    return flask.jsonify(body)


def _claim(store: Store, now: float, min_s: float, claim: str) -> int | None:
    """Take the refresh slot by compare-and-set; None when taken, else the seconds to wait (Retry-After)."""

    def change(last: dict | None) -> dict | None:
        if last and now - float(last.get("at", 0)) < min_s:
            return None
        return {"at": now, "claim": claim, "previous": (last or {}).get("at")}

    stored = update_state(store, STATE_KEY, change)
    if stored and stored.get("claim") == claim:
        return None
    return max(1, math.ceil(min_s - (now - float(stored["at"]))))


def _give_back(store: Store, claim: str) -> None:
    """Undo our claim (if it is still the last one): a refresh that ran nothing does not count."""

    def change(last: dict | None) -> dict | None:
        if not last or last.get("claim") != claim:
            return None
        return {"at": last.get("previous") or 0.0, "claim": None, "previous": None}

    update_state(store, STATE_KEY, change)


def _running_pass(store: Store) -> str | None:
    running: list[Run] = store.running_runs("pipeline", None)
    return max(running, key=lambda run: run.started_at).run_id if running else None
