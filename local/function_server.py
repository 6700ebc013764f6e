"""One function served by functions-framework, set up for this project (used by `make run`/`make demo` and as the
container command):

    python -m local.function_server --target extract_source_b --host 127.0.0.1 --port 8082

What it adds to `functions-framework --target ...`:
- gunicorn's worker timeout sized to the invocation budget. functions-framework 3.10 takes it from
  CLOUD_RUN_TIMEOUT_SECONDS (unset: 0, no timeout); it governs the sync worker (THREADS=1), and with
  THREADED_TIMEOUT_ENABLED=true the threaded worker aborts a request after that long. A stage stops itself before
  INVOCATION_BUDGET_S and its lease outlives the budget by at most LEASE_TTL_S, so the timeout is budget + TTL + 30 s
  (an inherited larger value is kept): no worker is killed while a stage is still within its budget.
- logs: the process's records and gunicorn's own lines in one format (JSON, or text on a terminal: common/logs.py),
  `service` = the function's name, and `request_id` on every line logged while a request is served (the caller's
  X-Request-ID when it is a safe token, else a fresh one, which the function then echoes).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import math
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Mapping

from gunicorn import glogging

from common.config import Settings
from common.errors import ConfigError
from common.logs import configure_logging, formatter_for, log_context, secret_values

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_ENV = "CLOUD_RUN_TIMEOUT_SECONDS"
WORKER_TIMEOUT_SLACK_S = 30
log = logging.getLogger("local.function_server")
_gunicorn_formatter: list[logging.Formatter] = []
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36


def prctl(option: int, value: int) -> bool:
    """Linux prctl(2); False where it is not available (nothing else depends on it)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def worker_timeout_s(settings: Settings) -> int:
    """gunicorn's worker timeout for a function whose invocations live at most budget + lease TTL."""
    return math.ceil(settings.invocation_budget_s + settings.lease_ttl_s) + WORKER_TIMEOUT_SLACK_S


def server_env(settings: Settings, env: Mapping[str, str]) -> dict[str, str]:
    """`env` with the worker timeout sized to the budget (never below a value already set)."""
    try:
        inherited = int(env.get(TIMEOUT_ENV) or 0)
    except ValueError:
        inherited = 0
    return {**env, TIMEOUT_ENV: str(max(inherited, worker_timeout_s(settings)))}


class GunicornLogger(glogging.Logger):
    """gunicorn's logger, writing its lines in this process's log format."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            if _gunicorn_formatter:
                handler.setFormatter(_gunicorn_formatter[0])


class RequestIds:
    """WSGI middleware: every request has an X-Request-ID before the function sees it, and the records logged
    while it is served carry it."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    def __call__(self, environ: dict, start_response: Callable):
        from common.api.envelope import request_id_of

        request_id = request_id_of({"X-Request-ID": environ.get("HTTP_X_REQUEST_ID", "")})
        environ["HTTP_X_REQUEST_ID"] = request_id
        with log_context(request_id=request_id):
            return self.app(environ, start_response)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="the function's name (functions/<target>/main.py)")
    parser.add_argument("--source", help="default: functions/<target>/main.py")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--stop-with-parent", type=int, metavar="PID",
                        help="stop (SIGTERM) when the process PID that started this one dies (make run)")
    args = parser.parse_args(argv)
    if args.stop_with_parent:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != args.stop_with_parent:  # it died before the line above
            return 0
    try:
        settings, problem = Settings.from_env(), None
    except ConfigError as exc:  # the function answers every request with this error; the server still runs
        settings, problem = Settings(), exc.message
    configure_logging(settings.log_level, settings.log_format, service=args.target, secrets=secret_values(settings))
    _gunicorn_formatter.append(formatter_for(settings.log_format, args.target, secret_values(settings)))
    if problem:
        log.error("invalid settings: %s", problem)
    os.environ.update(server_env(settings, os.environ))

    import functions_framework
    from functions_framework._http import create_server  # what `functions-framework` itself runs, plus options

    app = functions_framework.create_app(args.target, args.source or str(ROOT / "functions" / args.target / "main.py"))
    app.wsgi_app = RequestIds(app.wsgi_app)
    log.info("serving %s on %s:%s (worker timeout %ss)", args.target, args.host, args.port, os.environ[TIMEOUT_ENV],
             extra={"function": args.target})
    create_server(app, False, logger_class=GunicornLogger).run(args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
