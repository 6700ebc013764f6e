"""The one error envelope every HTTP answer uses: `{"error": {"code", "message", "request_id"}}`.

Shared by the API app, the stage functions and the `etl serve` worker, so a caller sees one shape whoever
answered. What an operator needs (a store's address, a bad setting) goes to the log under the request id; the
caller gets a message that says what to do and nothing about the deployment.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from typing import Mapping

import flask
from werkzeug.exceptions import HTTPException

from common.errors import ConfigError, EtlError, StoreError

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_PUBLIC_MESSAGES = {  # errors whose own message describes the deployment, not the request
    StoreError: "the data store is unavailable; retry later",
    ConfigError: "the service is misconfigured; an operator must fix its settings (see the logs)",
}


def request_id_of(headers: Mapping[str, str] | flask.Request) -> str:
    """The caller's X-Request-ID when it is a safe token to echo, else a fresh one."""
    headers = getattr(headers, "headers", headers)
    given = headers.get("X-Request-ID", "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def error_body(code: str, message: str, request_id: str) -> dict:
    return {"error": {"code": code, "message": message, "request_id": request_id}}


def code_for(error: HTTPException) -> str:
    """`Request URI Too Long` -> `request_uri_too_long`: the same code whoever answers with that status."""
    return re.sub(r"[^a-z0-9]+", "_", (error.name or "error").lower()).strip("_")


def json_error(status: int, code: str, message: str, request_id: str) -> flask.Response:
    response = flask.Response(json.dumps(error_body(code, message, request_id)), status=status,
                              mimetype="application/json")
    response.headers["X-Request-ID"] = request_id
    return response


def etl_error_response(error: EtlError, request_id: str) -> flask.Response:
    """A product error as JSON; store and configuration details are logged, not shown."""
    public = next((text for kind, text in _PUBLIC_MESSAGES.items() if isinstance(error, kind)), None)
    if public is not None:
        log.error("request %s: %s: %s", request_id, error.code, error.message, extra={"request_id": request_id})
    return json_error(error.http_status, error.code, public or error.message, request_id)


def http_error_response(error: HTTPException, request_id: str) -> flask.Response:
    response = json_error(error.code or 500, code_for(error), error.description or error.name, request_id)
    if error.code == 405 and getattr(error, "valid_methods", None):
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def unexpected_error_response(error: BaseException, request_id: str) -> flask.Response:
    """A bug: logged with its traceback under the request id, answered without one."""
    log.error("request %s: unhandled %s", request_id, type(error).__name__, exc_info=error,
              extra={"request_id": request_id})
    return json_error(500, "internal_error", "internal server error; see the logs for the request id", request_id)


def any_error_response(error: BaseException, request_id: str) -> flask.Response:
    if isinstance(error, EtlError):
        return etl_error_response(error, request_id)
    if isinstance(error, HTTPException):
        return http_error_response(error, request_id)
    return unexpected_error_response(error, request_id)
