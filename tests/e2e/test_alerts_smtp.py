"""Alert e-mail against a real SMTP server on loopback (aiosmtpd: STARTTLS with a throwaway certificate, AUTH only
over TLS): one e-mail per incident, a reminder, a RESOLVED; two processes never double a message; a server that
hangs, trickles or refuses costs at most the timeout; the password never shows up anywhere.

Also runnable as `python -m tests.e2e.test_alerts_smtp <pass.json> <now> <go-file>`: one evaluating process."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import replace
from email import message_from_bytes, policy

import pytest

from common.alerts import notify_after_pass
from common.clock import iso_utc
from common.config import Settings
from common.ids import new_run_id
from common.pipeline import run_extract, run_transform
from common.store import Run
from common.wiring import Wiring, build_store
from tests.conftest import ROOT, FakeClock, csv_lines, write_csv
from tests.e2e.conftest import free_port, stage_env

USER, PASSWORD = "alerts@example.com", "S3cret-Pa55-for-SMTP"
HOUR = 3600.0


class Mailbox:
    """aiosmtpd handler: keeps every message with how it arrived (TLS? authenticated as whom?)."""

    def __init__(self) -> None:
        self.mails: list[dict] = []
        self.logins: list[tuple[str, bool]] = []

    async def handle_DATA(self, server, session, envelope):
        mail = message_from_bytes(envelope.content, policy=policy.default)
        self.mails.append({"subject": str(mail["Subject"]), "to": envelope.rcpt_tos, "from": str(mail["From"]),
                           "body": mail.get_body().get_content(), "raw": envelope.content.decode(),
                           "tls": session.ssl is not None, "user": session.auth_data})
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult

        good = auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode()
        self.logins.append((auth_data.login.decode(), good))
        return AuthResult(success=good, handled=False, auth_data=auth_data.login.decode() if good else None)

    def subjects(self) -> list[str]:
        return [m["subject"] for m in self.mails]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a throwaway certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def start_smtp(certificate, *, implicit_tls: bool = False, offer_tls: bool = True):
    from aiosmtpd.controller import Controller

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*map(str, certificate))
    box = Mailbox()
    options = {"authenticator": box.authenticate, "auth_required": True}
    if implicit_tls:  # aiosmtpd 1.4 does not count implicit TLS as TLS for auth_require_tls; it is TLS all the same
        options.update(ssl_context=context, auth_require_tls=False)
    elif offer_tls:
        options.update(tls_context=context, require_starttls=True, auth_require_tls=True)
    else:  # a server that would take the password in clear text
        options.update(auth_required=False, auth_require_tls=False)
    controller = Controller(box, hostname="127.0.0.1", port=free_port(), **options)
    controller.start()
    return controller, box


@pytest.fixture
def smtp(certificate, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # trust the throwaway certificate, as a deployment would
    controller, box = start_smtp(certificate)
    box.port = controller.port
    yield box
    controller.stop()


def mail_settings(tmp_path, port: int, **extra) -> Settings:
    return replace(Settings(sqlite_path=str(tmp_path / "etl.sqlite3"), source_b_path=str(tmp_path / "b.csv"),
                            csv_chunk_rows=50, lease_ttl_s=30),
                   smtp_host="127.0.0.1", smtp_port=port, smtp_security="starttls", alert_email_user=USER,
                   alert_email_pass=PASSWORD, alert_email_to="ops@example.com, oncall@example.com",
                   alert_email_from="etl@example.com", alert_repeat_s=4 * HOUR, **extra)


def a_pass(wiring: Wiring) -> Run:
    """A pass as the orchestrator records it: source B's extract, then transform/load, for real."""
    started = iso_utc(wiring.clock())
    stages = []
    for run in (run_extract("source_b", wiring), run_transform(wiring)):
        stages.append({"stage": run.stage, "source": run.source, "run_id": run.run_id, "status": run.status,
                       "duration_ms": run.duration_ms, "rows_in": run.rows_in, "rows_out": run.rows_out,
                       "quarantined": run.quarantined, "errors": run.summary.get("errors", [])})
    failed = any(s["status"] == "failed" for s in stages)
    return Run(run_id=new_run_id("pipeline"), stage="pipeline", source=None, started_at=started,
               status="failed" if failed else "succeeded",
               summary={"warnings": [], "errors": ["source_b failed"] if failed else [], "stages": stages})


def by_kind(box: Mailbox) -> dict[str, int]:
    counts: dict[str, int] = {}
    for subject in box.subjects():
        label, name = subject.split("] ", 1)[1].split(": ", 1)
        key = f"{label} {name.split(' - ')[0]}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_one_email_per_incident_a_reminder_and_resolved_over_starttls_with_auth(smtp, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    settings, clock = mail_settings(tmp_path, smtp.port), FakeClock()
    store = build_store(settings, clock=clock)
    wiring = Wiring(settings=settings, store=store, clock=clock, sleep=lambda s: None)
    outcomes = []

    def evaluate(run: Run) -> dict:
        outcomes.append(notify_after_pass(store, settings, run, clock=clock, schedule_period_s=24 * HOUR))
        return outcomes[-1]

    failing = a_pass(wiring)  # no CSV at all: source B fails for real
    assert failing.status == "failed"
    assert sorted(evaluate(failing)["opened"]) == ["pass_failed:pipeline", "source_failing:source_b"]
    assert evaluate(failing)["opened"] == []  # the same pass evaluated twice
    clock.advance(HOUR)
    evaluate(a_pass(wiring))
    assert by_kind(smtp) == {"FIRING pipeline pass failing": 1, "FIRING source_b extract failing": 1}
    mail = next(m for m in smtp.mails if "source_b" in m["subject"])
    assert mail["tls"] and mail["user"] == USER and sorted(mail["to"]) == ["oncall@example.com", "ops@example.com"]
    assert failing.summary["stages"][0]["run_id"] in mail["body"] and "CSV file not found" in mail["body"]
    assert failing.started_at in mail["body"] and "run ledger" in mail["body"]
    clock.advance(3 * HOUR)
    assert sorted(evaluate(a_pass(wiring))["reminded"]) == ["pass_failed:pipeline", "source_failing:source_b"]
    write_csv(tmp_path / "b.csv", csv_lines(coins=2, days=5))
    clock.advance(HOUR)
    healed = a_pass(wiring)
    assert healed.status == "succeeded"
    assert sorted(evaluate(healed)["resolved"]) == ["pass_failed:pipeline", "source_failing:source_b"]
    clock.advance(5 * HOUR)
    evaluate(a_pass(wiring))
    assert by_kind(smtp) == {"FIRING pipeline pass failing": 1, "FIRING source_b extract failing": 1,
                             "REMINDER pipeline pass failing": 1, "REMINDER source_b extract failing": 1,
                             "RESOLVED pipeline pass failing": 1, "RESOLVED source_b extract failing": 1}
    assert all(o["send_failures"] == [] for o in outcomes)
    assert all(m["tls"] for m in smtp.mails) and smtp.logins and all(good for _, good in smtp.logins)
    state = [store.get_state(f"incident:{k}")[0] for k in ("pass_failed:pipeline", "source_failing:source_b")]
    out, err = capfd.readouterr()
    for text in (caplog.text, repr(outcomes), repr(state), out, err, *(m["raw"] for m in smtp.mails)):
        assert PASSWORD not in text
    store.close()


def test_the_orchestrators_pass_alerts_through_its_fenced_store_and_records_the_outcome(smtp, tmp_path):
    from common.invokers import InProcessInvoker
    from common.orchestrator import run_pass

    settings = mail_settings(tmp_path, smtp.port)
    store = build_store(settings)
    wiring = Wiring(settings=settings, store=store)
    failed = run_pass(wiring, InProcessInvoker(wiring), sources=("source_b",))
    assert failed.status == "failed"
    assert sorted(failed.summary["alerts"]["opened"]) == ["pass_failed:pipeline", "source_failing:source_b"]
    write_csv(tmp_path / "b.csv", csv_lines(coins=2, days=5))
    healed = run_pass(wiring, InProcessInvoker(wiring), sources=("source_b",))
    assert healed.status == "succeeded" and healed.summary["alerts"]["send_failures"] == []
    assert sorted(healed.summary["alerts"]["resolved"]) == ["pass_failed:pipeline", "source_failing:source_b"]
    assert by_kind(smtp) == {"FIRING pipeline pass failing": 1, "FIRING source_b extract failing": 1,
                             "RESOLVED pipeline pass failing": 1, "RESOLVED source_b extract failing": 1}
    assert store.get_run(healed.run_id).summary["alerts"] == healed.summary["alerts"]  # in the ledger
    store.close()


def test_a_wrong_password_is_a_recorded_failure_that_names_no_password(smtp, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-" + PASSWORD
    settings, clock = replace(mail_settings(tmp_path, smtp.port), alert_email_pass=wrong), FakeClock()
    store = build_store(settings, clock=clock)
    run = a_pass(Wiring(settings=settings, store=store, clock=clock))
    outcome = notify_after_pass(store, settings, run, clock=clock, schedule_period_s=HOUR)
    failures = outcome["send_failures"]
    assert failures and all(f["channel"] == "email" for f in failures) and "535" in failures[0]["error"]
    assert smtp.mails == [] and wrong not in repr(outcome) + caplog.text
    fixed = mail_settings(tmp_path, smtp.port)  # the password is corrected: the next evaluation delivers once
    clock.advance(60)
    assert notify_after_pass(store, fixed, run, clock=clock, schedule_period_s=HOUR)["send_failures"] == []
    clock.advance(60)
    notify_after_pass(store, fixed, run, clock=clock, schedule_period_s=HOUR)
    assert len(smtp.mails) == 2
    store.close()


def test_starttls_not_offered_means_no_password_is_sent(certificate, tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    controller, box = start_smtp(certificate, offer_tls=False)
    try:
        settings, clock = mail_settings(tmp_path, controller.port), FakeClock()
        store = build_store(settings, clock=clock)
        run = a_pass(Wiring(settings=settings, store=store, clock=clock))
        outcome = notify_after_pass(store, settings, run, clock=clock, schedule_period_s=HOUR)
        assert "STARTTLS" in outcome["send_failures"][0]["error"] and box.logins == [] and box.mails == []
        store.close()
    finally:
        controller.stop()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_implicit_tls(certificate, tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    controller, box = start_smtp(certificate, implicit_tls=True)
    try:
        settings, clock = replace(mail_settings(tmp_path, controller.port), smtp_security="tls"), FakeClock()
        store = build_store(settings, clock=clock)
        run = a_pass(Wiring(settings=settings, store=store, clock=clock))
        outcome = notify_after_pass(store, settings, run, clock=clock, schedule_period_s=HOUR)
        assert outcome["send_failures"] == [] and len(box.mails) == 2 and box.logins == [(USER, True)] * 2
        store.close()
    finally:
        controller.stop()


class SilentServer:
    """Accepts TCP connections and never says a word; or, with `drip_s`, answers every line that late, each reply
    within a per-read timeout but all of them together well past it."""

    def __init__(self, drip_s: float | None = None) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.drip_s, self.stop, self.connections = drip_s, threading.Event(), []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections.append(conn)
            if self.drip_s is not None:
                threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn) -> None:
        reader = conn.makefile("rb")
        try:
            if not self.stop.wait(self.drip_s):
                conn.sendall(b"220 slow.example ESMTP\r\n")
            while not self.stop.is_set() and (line := reader.readline()):
                if not self.stop.wait(self.drip_s):  # STARTTLS offered, accepted, then no TLS handshake comes
                    conn.sendall(b"220 go ahead\r\n" if line.upper().startswith(b"STARTTLS")
                                 else b"250-slow.example\r\n250 STARTTLS\r\n")
        except OSError:
            pass
        finally:
            reader.close()

    def close(self) -> None:
        self.stop.set()
        for conn in self.connections:
            conn.close()
        self.sock.close()


@pytest.mark.parametrize("server", ["hangs", "trickles", "refuses"])
def test_a_dead_smtp_server_costs_at_most_the_timeout_then_the_retry_delivers_once(server, smtp, tmp_path):
    timeout = 1.0
    dead = SilentServer(drip_s=0.6 if server == "trickles" else None) if server != "refuses" else None
    port = dead.port if dead else free_port()  # nothing listens on a fresh free port: refused
    try:
        settings, clock = mail_settings(tmp_path, port, alert_timeout_s=timeout), FakeClock()
        store = build_store(settings, clock=clock)
        run = a_pass(Wiring(settings=settings, store=store, clock=clock))
        started = time.monotonic()
        outcome = notify_after_pass(store, settings, run, clock=clock, schedule_period_s=HOUR)
        elapsed = time.monotonic() - started
    finally:
        if dead:
            dead.close()
    assert elapsed < timeout + 0.8, f"{server}: the evaluation took {elapsed:.2f} s"  # two incidents, one timeout
    failures = outcome["send_failures"]
    assert sorted(f["incident"] for f in failures) == ["pass_failed:pipeline", "source_failing:source_b"]
    expected = "connection refused" if server == "refuses" else f"no answer within {timeout:g} s"
    assert expected in failures[0]["error"] and sorted(outcome["opened"]) == sorted(f["incident"] for f in failures)
    clock.advance(60)  # the next evaluation, against a working server: each message delivered once
    working = replace(settings, smtp_port=smtp.port)
    assert notify_after_pass(store, working, run, clock=clock, schedule_period_s=HOUR)["send_failures"] == []
    clock.advance(60)
    notify_after_pass(store, working, run, clock=clock, schedule_period_s=HOUR)
    assert by_kind(smtp) == {"FIRING pipeline pass failing": 1, "FIRING source_b extract failing": 1}
    store.close()


def test_two_processes_evaluating_the_same_passes_send_each_message_once(smtp, certificate, tmp_path):
    settings, clock = mail_settings(tmp_path, smtp.port), FakeClock()
    store = build_store(settings, clock=clock)
    wiring = Wiring(settings=settings, store=store, clock=clock)
    env = stage_env(tmp_path, SSL_CERT_FILE=str(certificate[0]), SMTP_HOST="127.0.0.1", SMTP_PORT=str(smtp.port),
                    ALERT_EMAIL_USER=USER, ALERT_EMAIL_PASS=PASSWORD, ALERT_EMAIL_TO="ops@example.com",
                    ALERT_REPEAT_S=str(4 * HOUR), SOURCE_B_PATH=settings.source_b_path)
    outcomes = []
    for round_, advance in enumerate((0, 4 * HOUR, HOUR)):
        clock.advance(advance)
        if round_ == 2:
            write_csv(tmp_path / "b.csv", csv_lines(coins=2, days=5))
        run = a_pass(wiring)
        path = tmp_path / f"pass{round_}.json"
        path.write_text(json.dumps(run.to_dict()))
        go = tmp_path / f"go{round_}"
        evaluators = [subprocess.Popen([sys.executable, "-m", "tests.e2e.test_alerts_smtp", str(path), str(clock()),
                                        str(go)], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
                      for _ in range(2)]
        for process in evaluators:
            assert process.stdout.readline().strip() == "ready"
        go.touch()  # both are loaded and waiting: they read and claim at the same moment
        for process in evaluators:
            with process.stdout:
                outcomes.append(json.loads(process.stdout.read()))
            assert process.wait(timeout=60) == 0
    assert by_kind(smtp) == {"FIRING pipeline pass failing": 1, "FIRING source_b extract failing": 1,
                             "REMINDER pipeline pass failing": 1, "REMINDER source_b extract failing": 1,
                             "RESOLVED pipeline pass failing": 1, "RESOLVED source_b extract failing": 1}
    announced = [i for o in outcomes for key in ("opened", "reminded", "resolved") for i in o[key]]
    assert len(announced) == 6 and all(o["send_failures"] == [] for o in outcomes)
    store.close()


def _evaluate_in_this_process(pass_path: str, now: str, go: str) -> None:
    settings = Settings.from_env()
    store = build_store(settings)
    run = Run(**json.loads(open(pass_path).read()))
    store.get_state("warm-up")  # connect and migrate before the race starts
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.002)
    outcome = notify_after_pass(store, settings, run, clock=lambda: float(now), schedule_period_s=24 * HOUR)
    print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    _evaluate_in_this_process(*sys.argv[1:4])
