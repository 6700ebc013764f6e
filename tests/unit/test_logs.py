"""Log lines: JSON for machines, text for a terminal (LOG_FORMAT=auto), context ids, and no secret in any line."""

from __future__ import annotations

import io
import json
import logging

import jwt
import pytest

from common.config import Settings
from common.errors import ConfigError
from common.logs import (REDACTED, JsonFormatter, Redactor, TextFormatter, formatter_for, log_context,
                         secret_values, set_log_context)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def record(message: str, *args, **extra) -> logging.LogRecord:
    made = logging.LogRecord("common.runs", logging.WARNING, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_auto_is_text_on_a_terminal_and_json_otherwise(monkeypatch):
    monkeypatch.setattr("sys.stderr", Terminal())
    assert isinstance(formatter_for("auto"), TextFormatter)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert isinstance(formatter_for("auto"), JsonFormatter)
    assert isinstance(formatter_for("text"), TextFormatter) and isinstance(formatter_for("json"), JsonFormatter)


def test_a_json_line_names_its_service_and_carries_the_context_and_the_record_s_own_ids():
    formatter = JsonFormatter("extract_source_b")
    with log_context(request_id="req-1", run_id="run-outer"):
        inside = json.loads(formatter.format(record("run %s ended", "X", run_id="run-own")))
    outside = json.loads(formatter.format(record("after")))
    assert inside["service"] == "extract_source_b" and inside["message"] == "run X ended"
    assert inside["request_id"] == "req-1" and inside["run_id"] == "run-own"  # the record's own id wins
    assert "request_id" not in outside and "run_id" not in outside


def test_a_thread_s_context_stays_in_that_thread():
    import threading

    seen = {}

    def worker() -> None:
        set_log_context(run_id="pass-1")
        seen["worker"] = json.loads(JsonFormatter("trigger").format(record("x")))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["worker"]["run_id"] == "pass-1"
    assert "run_id" not in json.loads(JsonFormatter("trigger").format(record("y")))


def test_a_text_line_is_one_readable_line_with_the_ids():
    line = TextFormatter("run_local").format(record("pass %s: failed", "P", run_id="P", request_id="R"))
    assert "\n" not in line and "WARNING" in line and "run_local common.runs: pass P: failed" in line
    assert "run_id=P" in line and "request_id=R" in line


@pytest.mark.parametrize("kind", [JsonFormatter, TextFormatter])
def test_secrets_bearer_tokens_and_jwts_never_reach_a_line(kind):
    settings = Settings.from_env({"SOURCE_A_API_KEY": "sk-live-abcdef123456", "JWT_SECRET": "k" * 40,
                                  "MONGODB_URI": "mongodb://etl:hunter2pass@db.example:27017/etl"})
    token = jwt.encode({"sub": "ops"}, "k" * 40, algorithm="HS256")
    formatter = kind("http_api", Redactor(secret_values(settings)))
    line = formatter.format(record("got %s key=%s uri=%s auth=%s", token, "sk-live-abcdef123456",
                                   settings.mongodb_uri, f"Bearer {token}"))
    for secret in ("sk-live-abcdef123456", "hunter2pass", token, "k" * 40):
        assert secret not in line
    assert line.count(REDACTED) >= 4


def test_log_format_is_validated():
    assert Settings.from_env({}).log_format == "auto"
    assert Settings.from_env({"LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        Settings.from_env({"LOG_FORMAT": "xml"})



def test_a_stage_run_s_lines_carry_its_run_id_also_from_the_lease_heartbeat(store, monkeypatch):
    import threading
    import time

    from common.runs import run_stage

    lines: list[dict] = []
    handler = logging.Handler()
    handler.emit = lambda rec: lines.append(
        {**json.loads(JsonFormatter("t").format(rec)), "thread": threading.current_thread().name})
    logger = logging.getLogger("tests.stage")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    renewed = threading.Event()
    renew = store.renew_lease

    def logged_renew(*args, **kwargs):
        logger.info("renewing")
        renewed.set()
        return renew(*args, **kwargs)

    monkeypatch.setattr(store, "renew_lease", logged_renew)

    def work(run, keeper):
        logger.info("in the stage")
        assert renewed.wait(10), "the heartbeat never renewed"
        return "succeeded"

    try:
        run = run_stage("extract", "source_a", store, lease_ttl_s=0.2, clock=time.time, work=work)
    finally:
        logger.removeHandler(handler)
    stage = [line for line in lines if line["message"] == "in the stage"]
    beats = [line for line in lines if line["message"] == "renewing"]
    assert [line["run_id"] for line in stage] == [run.run_id]
    assert beats and all(line["run_id"] == run.run_id and line["thread"].startswith("lease-") for line in beats)


def test_the_http_invoker_passes_the_caller_s_request_id_to_the_stage():
    import responses

    from common.invokers import HttpInvoker

    url = "http://b.test/"
    with responses.RequestsMock() as mocked:
        mocked.post(url, json={"run": {"run_id": "r", "stage": "extract", "source": "source_b",
                                       "status": "succeeded"}})
        with log_context(request_id="req-123", run_id="pass-1"):
            HttpInvoker({"extract_source_b": url}, timeout_s=5).extract("b")
        assert mocked.calls[0].request.headers["X-Request-ID"] == "req-123"
