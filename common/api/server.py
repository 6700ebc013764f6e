"""`etl serve`: the API under gunicorn (threads), the same server functions-framework uses.

gunicorn rejects a malformed or oversized request before the application sees it, and answers with an HTML
page. Here its worker answers those in the API's JSON envelope instead (`JsonErrorWorker`), so every answer of
`etl serve` has one shape. The limits gunicorn enforces (`LIMITS`): a request line of at most 8190 bytes (its
maximum short of "unlimited"; the application bounds the target at 8192, see `common.api.limits`), header fields
of at most 8190 bytes each, at most 100 of them; CR, LF or NUL inside a header, a bare LF, a malformed request
line or chunked body are a 400. The app is built before gunicorn starts, so bad settings stop `etl serve` with
the CLI's clear message instead of a worker that fails to boot.
"""

from __future__ import annotations

import json
import logging
import uuid

import gunicorn.app.base
from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.workers.gthread import ThreadWorker
from werkzeug.exceptions import default_exceptions

from common.api.app import app_for_environment
from common.api.envelope import code_for, error_body

log = logging.getLogger(__name__)

LIMITS = {"limit_request_line": 8190, "limit_request_field_size": 8190, "limit_request_fields": 100}
_STATUS = (  # gunicorn's rejection -> HTTP status (first match wins); any other ParseException is a 400
    (http_errors.LimitRequestLine, 414),
    (http_errors.LimitRequestHeaders, 431),
    (http_errors.ExpectationFailed, 417),
    (http_errors.UnsupportedTransferCoding, 501),
    (http_errors.ForbiddenProxyRequest, 403),
    (http_errors.ConfigurationProblem, 500),
)
_APP_FAULTS = (http_errors.InvalidResponseHeader, http_errors.InvalidResponseHeaderName)
_MESSAGES = {
    400: "malformed HTTP request (request line, header name or value, or chunked framing)",
    414: "the request line is too long: at most {line} bytes are accepted",
    431: "request headers too large: at most {fields} fields of at most {field_size} bytes each are accepted",
}


class JsonErrorWorker(ThreadWorker):
    """gunicorn's threaded worker, answering the requests gunicorn itself rejects in the JSON envelope."""

    def handle_error(self, req, client, addr, exc):
        if not isinstance(exc, http_errors.ParseException) or isinstance(exc, _APP_FAULTS):
            return super().handle_error(req, client, addr, exc)  # the application's failure: gunicorn's own path
        status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 400)
        request_id = uuid.uuid4().hex  # the headers were not parsed: the caller's id cannot be trusted
        meaning = default_exceptions[status]()
        message = _MESSAGES.get(status, meaning.description).format(
            line=self.cfg.limit_request_line, fields=self.cfg.limit_request_fields,
            field_size=self.cfg.limit_request_field_size)
        log.warning("request %s rejected before the app (%s): %s", request_id, status, exc,
                    extra={"request_id": request_id})
        body = json.dumps(error_body(code_for(meaning), message, request_id)).encode()
        head = (f"HTTP/1.1 {status} {meaning.name}\r\nConnection: close\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nX-Request-ID: {request_id}\r\n\r\n").encode("latin-1")
        try:
            util.write_nonblock(client, head + body)
        except OSError:
            log.debug("could not send the rejection of request %s", request_id)


class _Server(gunicorn.app.base.BaseApplication):
    def __init__(self, app, options: dict) -> None:
        self.app = app
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        return self.app


def serve(host: str = "127.0.0.1", port: int = 8080, threads: int = 8) -> None:
    """Serve the API until stopped; raises `ConfigError` before listening when the settings are invalid."""
    app = app_for_environment()  # stores connect lazily: safe to build before gunicorn forks
    _Server(app, {"bind": f"{host}:{port}", "workers": 1, "threads": threads, "worker_class": JsonErrorWorker,
                  "loglevel": "warning", "accesslog": None, "control_socket_disable": True, **LIMITS}).run()
