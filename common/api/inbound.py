"""Inbound glue for the stage functions: one request in, one stage run, one JSON response out.

Whatever goes wrong — a wrong method or path, a request target over the limit, settings or a store that cannot
be built, a bug — the answer is the shared JSON envelope (`common.api.envelope`), never functions-framework's
HTML page or a traceback.
"""

from __future__ import annotations

from typing import Callable

import flask
from werkzeug.exceptions import HTTPException, NotFound

from common.api.envelope import any_error_response, etl_error_response, request_id_of
from common.api.limits import check_target
from common.errors import MethodNotAllowed
from common.logs import log_context
from common.store import Run
from common.wiring import Wiring, get_wiring

STATUS_CODES = {"succeeded": 200, "partial": 200, "skipped": 409, "failed": 500, "running": 202}

__all__ = ["STATUS_CODES", "json_framework_errors", "request_id_of", "stage_response"]


def stage_response(request: flask.Request, action: Callable[[Wiring], Run]) -> flask.Response:
    """Run one stage for a POST to `/` and answer with its ledger entry: 200 done/partial, 409 skipped, 500 failed."""
    request_id = request_id_of(request)
    try:
        check_target(request.environ)
        if request.path != "/":
            raise NotFound("a stage function runs at / only")
        if request.method != "POST":
            response = etl_error_response(MethodNotAllowed("use POST to run this stage"), request_id)
            response.headers["Allow"] = "POST"
            return response
        with log_context(request_id=request_id):
            run = action(get_wiring())
    except Exception as exc:  # noqa: BLE001 - the edge: every failure becomes the JSON envelope
        return any_error_response(exc, request_id)
    response = flask.jsonify({"run": run.to_dict()})
    response.status_code = STATUS_CODES[run.status]
    response.headers.update({"X-Request-ID": request_id, "X-Run-ID": run.run_id})
    return response


def json_framework_errors(errorhandler) -> None:
    """Answer functions-framework's own errors (its /favicon.ico and /robots.txt 404s, a crash) in JSON.

    `errorhandler` is `functions_framework.errorhandler`, which registers on the framework's Flask app while it
    loads the function's module."""
    errorhandler(HTTPException)(_framework_error)
    errorhandler(Exception)(_framework_error)


def _framework_error(error: Exception) -> flask.Response:
    return any_error_response(error, request_id_of(flask.request))
