"""The webhook adapter against a real HTTP server on loopback: Slack-compatible JSON, one post per incident message,
a hanging server costs at most the timeout and the message is delivered once on the next evaluation; the webhook URL
(a credential) never shows up in logs or summaries."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from common.alerts import notify_after_pass
from common.config import Settings
from common.wiring import Wiring, build_store
from tests.conftest import FakeClock
from tests.e2e.conftest import free_port
from tests.e2e.test_alerts_smtp import a_pass

SECRET_PATH = "/services/T0000/B0000/Zz9SecretToken"
HOUR = 3600.0


class Hook:
    """A chat webhook: records posts; while `hang` is set it holds every request without answering."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.status = 200
        self.hang = threading.Event()
        self.release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if hook.hang.is_set():
                    hook.release.wait(30)
                    return
                hook.posts.append({"path": self.path, "type": self.headers["Content-Type"], "json": json.loads(body)})
                self.send_response(hook.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    running = Hook()
    yield running
    running.close()


def hook_settings(tmp_path, url: str, **extra) -> Settings:
    return replace(Settings(sqlite_path=str(tmp_path / "etl.sqlite3"), source_b_path=str(tmp_path / "b.csv"),
                            csv_chunk_rows=50, lease_ttl_s=30),
                   alert_webhook_url=url, alert_repeat_s=4 * HOUR, **extra)


def test_webhook_gets_one_post_per_incident_message_and_never_leaks_its_url(hook, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    settings, clock = hook_settings(tmp_path, hook.url), FakeClock()
    store = build_store(settings, clock=clock)
    wiring = Wiring(settings=settings, store=store, clock=clock)
    run = a_pass(wiring)
    outcome = notify_after_pass(store, settings, run, clock=clock, schedule_period_s=24 * HOUR)
    notify_after_pass(store, settings, run, clock=clock, schedule_period_s=24 * HOUR)
    assert sorted(outcome["opened"]) == ["pass_failed:pipeline", "source_failing:source_b"]
    assert len(hook.posts) == 2 and all(p["path"] == SECRET_PATH for p in hook.posts)
    assert all(p["type"] == "application/json" and set(p["json"]) == {"text"} for p in hook.posts)
    texts = [p["json"]["text"] for p in hook.posts]
    assert all("FIRING" in t for t in texts) and any(run.summary["stages"][0]["run_id"] in t for t in texts)
    assert "Zz9SecretToken" not in caplog.text + repr(outcome) + "".join(texts)
    store.close()


def test_a_hanging_webhook_costs_at_most_the_timeout_and_the_retry_posts_once(hook, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    timeout = 1.0
    settings, clock = hook_settings(tmp_path, hook.url, alert_timeout_s=timeout), FakeClock()
    store = build_store(settings, clock=clock)
    run = a_pass(Wiring(settings=settings, store=store, clock=clock))
    hook.hang.set()
    started = time.monotonic()
    outcome = notify_after_pass(store, settings, run, clock=clock, schedule_period_s=24 * HOUR)
    elapsed = time.monotonic() - started
    assert elapsed < timeout + 0.8, f"the evaluation took {elapsed:.2f} s"
    failures = outcome["send_failures"]
    assert [f["channel"] for f in failures] == ["webhook", "webhook"]
    assert failures[0]["error"] == f"webhook: no answer within {timeout:g} s"
    hook.hang.clear()
    clock.advance(60)
    assert notify_after_pass(store, settings, run, clock=clock, schedule_period_s=24 * HOUR)["send_failures"] == []
    clock.advance(60)
    notify_after_pass(store, settings, run, clock=clock, schedule_period_s=24 * HOUR)
    assert len(hook.posts) == 2 and "Zz9SecretToken" not in caplog.text + repr(failures)
    store.close()


def test_an_error_answer_or_a_refused_connection_is_recorded_without_the_url(hook, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    hook.status = 500
    settings, clock = hook_settings(tmp_path, hook.url), FakeClock()
    store = build_store(settings, clock=clock)
    run = a_pass(Wiring(settings=settings, store=store, clock=clock))
    failures = notify_after_pass(store, settings, run, clock=clock, schedule_period_s=24 * HOUR)["send_failures"]
    assert failures[0]["error"] == "webhook: HTTP 500 ok"
    refused = replace(settings, alert_webhook_url=f"http://127.0.0.1:{free_port()}{SECRET_PATH}")
    clock.advance(60)
    failures += notify_after_pass(store, refused, run, clock=clock, schedule_period_s=24 * HOUR)["send_failures"]
    assert failures[-2]["error"] == "webhook: could not connect (ConnectionRefusedError)"
    assert "Zz9SecretToken" not in caplog.text + repr(failures)
    store.close()
