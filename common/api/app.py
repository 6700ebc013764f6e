"""Flask app factory for the public API: JSON everywhere, one error shape, traceability headers."""

from __future__ import annotations

import functools
import logging
import math
import time

import flask
from werkzeug.exceptions import HTTPException

from common.api.params import parse_data_query, single_values
from common.config import Settings
from common.errors import EtlError
from common.http import request_id_of
from common.wiring import Wiring, get_wiring, wiring_for

log = logging.getLogger(__name__)

LAST_GOOD = ("succeeded", "partial")


def create_app(wiring: Wiring) -> flask.Flask:
    """Build the API around one store; every test builds its own."""
    app = flask.Flask(__name__)
    app.json.sort_keys = False
    store = wiring.store

    @app.before_request
    def start_clock() -> None:
        flask.g.started = time.perf_counter()
        flask.g.request_id = request_id_of(flask.request)

    @app.after_request
    def trace_headers(response: flask.Response) -> flask.Response:
        response.headers["X-Request-ID"] = flask.g.get("request_id") or request_id_of(flask.request)
        response.headers["X-API-Latency-Ms"] = f"{(time.perf_counter() - flask.g.get('started', time.perf_counter())) * 1000:.2f}"
        try:
            last = store.last_run(LAST_GOOD, stage="transform_load") or store.last_run(LAST_GOOD)
        except EtlError:
            last = None
        response.headers["X-Run-ID"] = last.run_id if last else "none"
        return response

    @app.errorhandler(EtlError)
    def etl_error(error: EtlError):
        return _error(error.http_status, error.code, error.message)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        code = (error.name or "error").lower().replace(" ", "_")
        return _error(error.code or 500, code, error.description or error.name)

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        log.exception("unhandled error in API request %s", flask.g.get("request_id"))
        return _error(500, "internal_error", "internal server error; see the logs for the request id")

    @app.get("/health")
    def health():
        single_values(flask.request.args, ())
        store.ping()
        return {"status": "ok", "store": wiring.settings.store_kind}

    @app.get("/data")
    def data():
        query = parse_data_query(flask.request.args)
        page = store.query_normalized(query)
        return {
            "data": page.items,
            "pagination": {
                "page": query.page, "limit": query.limit, "total": page.total,
                "pages": math.ceil(page.total / query.limit),
            },
        }

    return app


def _error(status: int, code: str, message: str):
    body = {"error": {"code": code, "message": message, "request_id": flask.g.get("request_id")}}
    return flask.jsonify(body), status


@functools.lru_cache(maxsize=8)
def _app_for(settings: Settings) -> flask.Flask:
    return create_app(wiring_for(settings))


def app_for_environment() -> flask.Flask:
    """The API for the current environment, built once per process (and per settings)."""
    return _app_for(get_wiring().settings)
