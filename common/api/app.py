"""Flask app factory for the public API: JSON everywhere, one error shape, traceability headers."""

from __future__ import annotations

import functools
import json
import time

import flask
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from common.api.data import data_blueprint
from common.api.envelope import (any_error_response, etl_error_response, http_error_response, request_id_of,
                                 unexpected_error_response)
from common.api.health import health_blueprint
from common.api.limits import check_target
from common.api.metrics import metrics_blueprint
from common.api.openapi import openapi_blueprint
from common.api.refresh import refresh_blueprint
from common.api.runs import runs_blueprint
from common.api.stats import stats_blueprint
from common.api.status import status_blueprint
from common.api.trace import LastRunId
from common.config import Settings
from common.errors import EtlError, StoreError
from common.invokers import invoker_for
from common.logs import log_context
from common.wiring import Wiring, get_wiring, wiring_for


def create_app(wiring: Wiring) -> flask.Flask:
    """Build the API around one store; every test builds its own."""
    app = flask.Flask(__name__)
    app.json.sort_keys = False
    store = wiring.store
    run_id = LastRunId(store, wiring.clock)

    @app.before_request
    def start() -> None:
        flask.g.started = time.perf_counter()
        flask.g.request_id = request_id_of(flask.request)
        check_target(flask.request.environ)

    @app.after_request
    def trace_headers(response: flask.Response) -> flask.Response:
        """The three traceability values, as headers on every answer and as `meta` in every JSON object body."""
        started = flask.g.get("started", time.perf_counter())
        meta = {"request_id": _request_id(),
                "run_id": run_id.current(store_failed=flask.g.get("store_failed", False)),
                "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
        _add_meta(response, meta)
        response.headers["X-Request-ID"] = meta["request_id"]
        response.headers["X-Run-ID"] = meta["run_id"]
        response.headers["X-API-Latency-Ms"] = f"{meta['latency_ms']:.2f}"
        return response

    @app.errorhandler(EtlError)
    def etl_error(error: EtlError):
        flask.g.store_failed = isinstance(error, StoreError)
        return etl_error_response(error, _request_id())

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        return http_error_response(error, _request_id())

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        return unexpected_error_response(error, _request_id())

    app.register_blueprint(data_blueprint(store))
    app.register_blueprint(refresh_blueprint(wiring, invoker_for))
    app.register_blueprint(runs_blueprint(store))
    app.register_blueprint(health_blueprint(store, wiring.clock, wiring.settings.etl_schedule))
    app.register_blueprint(metrics_blueprint(store, wiring.settings.etl_schedule))
    app.register_blueprint(stats_blueprint(store, wiring.clock))
    app.register_blueprint(openapi_blueprint())
    app.register_blueprint(status_blueprint(store, wiring.clock, wiring.settings.etl_schedule))
    # <observability blueprints>
    return app


def _add_meta(response: flask.Response, meta: dict) -> None:
    """`meta` in a JSON object body (the API's own answers and its errors); other bodies are left as they are.
    Spliced in before the closing brace rather than decoded and encoded again: a 1,000-row page stays cheap."""
    if response.is_streamed or not (response.mimetype == "application/json" or response.mimetype.endswith("+json")):
        return
    body = response.get_data().rstrip()
    if not (body.startswith(b"{") and body.endswith(b"}")):
        return
    inner = body[1:-1].strip()
    encoded = json.dumps(meta, separators=(",", ":")).encode()
    response.set_data(b"{" + inner + (b"," if inner else b"") + b'"meta":' + encoded + b"}")


def _request_id() -> str:
    if "request_id" not in flask.g:
        flask.g.request_id = request_id_of(flask.request)
    return flask.g.request_id


@functools.lru_cache(maxsize=8)
def _app_for(settings: Settings) -> flask.Flask:
    return create_app(wiring_for(settings))


def app_for_environment() -> flask.Flask:
    """The API for the current environment, built once per process (and per settings).

    Raises `ConfigError` (an `EtlError`) when the settings or the store cannot be built."""
    return _app_for(get_wiring().settings)


class ApiHandler:
    """The `http_api` function's body: serves each request through the API app of this process's environment.

    The app is built on the first request (after gunicorn forks) and kept for the process's life, as any server
    keeps the settings it started with: reading the whole environment again per request cost ~0.1 ms, a third of a
    cached answer. Until it can be built (bad settings, a store that cannot be opened) every request answers the
    JSON error, and the next one tries again."""

    def __init__(self) -> None:
        self._app: flask.Flask | None = None

    def __call__(self, request: flask.Request) -> flask.Response:
        request_id = request_id_of(request)
        app = self._app
        if app is None:
            try:
                app = self._app = app_for_environment()
            except Exception as exc:  # noqa: BLE001 - whatever stops the app being built is answered in JSON
                return any_error_response(exc, request_id)
        request.environ["HTTP_X_REQUEST_ID"] = request_id  # a generated id is the one the app echoes and logs
        with log_context(request_id=request_id):
            return Response.from_app(app.wsgi_app, request.environ)
