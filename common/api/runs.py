"""GET /runs and GET /runs/<run_id>: the run ledger for operators, filtered and keyset-paginated.

A page is served by the ledger's (started_at, run_id) order: the cursor is the position of the last run shown
(opaque to callers: URL-safe base64 of a JSON pair), so a walk neither repeats nor skips a run while new runs
arrive, and a deep page costs what the first one does. Lists carry each run without its summary (a pass's
summary lists every stage run and can be large); `/runs/<run_id>` gives the full entry.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

import flask

from common.api.params import bounded_int, choice, single_values
from common.errors import InputError, NotFound
from common.sources import SOURCE_NAMES
from common.store import RUN_STATUSES, Run, RunLedger

STAGES = ("extract", "transform_load", "quarantine_replay", "pipeline")
RUNS_PARAMS = ("stage", "source", "status", "limit", "cursor")
DEFAULT_LIMIT, MAX_LIMIT = 50, 200
MAX_CURSOR_CHARS = 512
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,512}={0,2}")
_RUN_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_STARTED_AT = re.compile(r"[0-9T:.Z+-]{1,40}")


def encode_cursor(run: Run) -> str:
    return base64.urlsafe_b64encode(json.dumps([run.started_at, run.run_id]).encode()).decode().rstrip("=")


def decode_cursor(raw: str | None) -> tuple[str, str] | None:
    """The (started_at, run_id) a cursor stands for; InputError naming `cursor` for anything else."""
    if not raw:
        return None
    invalid = InputError("cursor must be a next_cursor value returned by a previous page of /runs")
    if len(raw) > MAX_CURSOR_CHARS or not _CURSOR.fullmatch(raw):
        raise invalid
    try:
        position = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError):
        raise invalid from None
    if not (isinstance(position, list) and len(position) == 2 and all(isinstance(p, str) for p in position)
            and _STARTED_AT.fullmatch(position[0]) and _RUN_ID.fullmatch(position[1])):
        raise invalid
    return position[0], position[1]


def listed(run: Run) -> dict:
    """A run as a list shows it: everything but the summary and checkpoint, plus how many warnings and errors."""
    item = {k: v for k, v in run.to_dict().items() if k not in ("summary", "checkpoint")}
    item["warnings"] = len(run.summary.get("warnings") or [])
    item["errors"] = len(run.summary.get("errors") or [])
    return item


def runs_blueprint(ledger: RunLedger) -> flask.Blueprint:
    blueprint = flask.Blueprint("runs", __name__)

    @blueprint.get("/runs")
    def runs():
        try:
            values = single_values(flask.request.args, RUNS_PARAMS)
            limit = bounded_int(values, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
            query = {"stage": choice(values, "stage", STAGES, None),
                     "source": choice(values, "source", SOURCE_NAMES, None),
                     "status": choice(values, "status", RUN_STATUSES, None),
                     "before": decode_cursor(values.get("cursor"))}
        except InputError as error:  # what the caller sent is echoed escaped: every message stays ASCII
            raise InputError(error.message.encode("ascii", "backslashreplace").decode()) from None
        found = ledger.list_runs(**query, limit=limit + 1)
        pagination: dict = {"limit": limit}
        if len(found) > limit:
            found = found[:limit]
            pagination["next_cursor"] = encode_cursor(found[-1])
        return {"runs": [listed(run) for run in found], "pagination": pagination}

    @blueprint.get("/runs/<run_id>")
    def run(run_id: str):
        single_values(flask.request.args, ())
        found = ledger.get_run(run_id) if _RUN_ID.fullmatch(run_id) else None
        if found is None:
            shown = run_id if _RUN_ID.fullmatch(run_id) else "(not a run id)"
            raise NotFound(f"no run with id {shown}")
        return {"run": found.to_dict()}

    return blueprint
