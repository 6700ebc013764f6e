"""Glue shared by the stage functions: one request in, one stage run, one JSON response out."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Callable

import flask

from common.errors import EtlError, MethodNotAllowed
from common.store import Run
from common.wiring import Wiring, get_wiring

log = logging.getLogger(__name__)

STATUS_CODES = {"succeeded": 200, "partial": 200, "skipped": 409, "failed": 500, "running": 202}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def request_id_of(request: flask.Request) -> str:
    """The caller's X-Request-ID when it is safe to echo, else a fresh one."""
    given = request.headers.get("X-Request-ID", "")
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex


def error_response(error: EtlError, request_id: str) -> flask.Response:
    response = flask.jsonify({"error": {**error.to_dict(), "request_id": request_id}})
    response.status_code = error.http_status
    response.headers["X-Request-ID"] = request_id
    return response


def stage_response(request: flask.Request, action: Callable[[Wiring], Run]) -> flask.Response:
    """Run one stage for a POST and answer with its ledger entry: 200 done/partial, 409 skipped, 500 failed."""
    request_id = request_id_of(request)
    if request.method != "POST":
        return error_response(MethodNotAllowed("use POST to run this stage"), request_id)
    try:
        run = action(get_wiring())
    except EtlError as exc:
        return error_response(exc, request_id)
    response = flask.jsonify({"run": run.to_dict()})
    response.status_code = STATUS_CODES[run.status]
    response.headers.update({"X-Request-ID": request_id, "X-Run-ID": run.run_id})
    return response
