"""Incidents after a pass: one message per transition, reminders, resolution, retries after a failed send,
state shared through the store, nothing secret in what leaves. Notifiers are fakes subclassing the port."""

from __future__ import annotations

import functools
import logging
from dataclasses import replace

import pytest

from common.alerts import Message, Notifier, notify_after_pass
from common.clock import iso_utc
from common.errors import StoreError
from common.ids import new_run_id
from common.store import Run

HOUR = 3600.0
PASSWORD = "pa55-w0rd-Secret"


class FakeNotifier(Notifier):
    """Records what it was asked to deliver; fails while `failing` holds a reason."""

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.sent: list[Message] = []
        self.failing: str | None = None

    def send(self, message: Message) -> str | None:
        if self.failing:
            return self.failing
        self.sent.append(message)
        return None

    def subjects(self) -> list[str]:
        return [message.subject for message in self.sent]


def stage(source: str | None, status: str, *errors: str, kind: str = "extract", rows_in: int = 0,
          quarantined: int = 0) -> dict:
    return {"stage": kind, "source": source, "run_id": new_run_id(kind), "status": status, "duration_ms": 12,
            "rows_in": rows_in, "rows_out": rows_in - quarantined, "quarantined": quarantined,
            "errors": list(errors)}


def a_pass(clock, *stages: dict, status: str | None = None, errors: tuple[str, ...] = ()) -> Run:
    if status is None:
        status = "failed" if any(s["status"] == "failed" for s in stages) else "succeeded"
    return Run(run_id=new_run_id("pipeline"), stage="pipeline", source=None, status=status,
               started_at=iso_utc(clock()), summary={"warnings": [], "errors": list(errors), "stages": list(stages)})


def healthy(clock) -> Run:
    return a_pass(clock, stage("source_a", "succeeded"), stage("source_b", "succeeded"),
                  stage("source_c", "succeeded"), stage(None, "succeeded", kind="transform_load", rows_in=100))


def b_down(clock, error: str = "CSV file not found: /data/Historical_Data.csv") -> Run:
    return a_pass(clock, stage("source_a", "succeeded"), stage("source_b", "failed", error),
                  stage("source_c", "succeeded"), stage(None, "succeeded", kind="transform_load", rows_in=100),
                  status="failed", errors=("source_b failed",))


@pytest.fixture
def alert_settings(settings):
    return replace(settings, alert_repeat_s=4 * HOUR, alert_email_pass=PASSWORD)


def evaluate(store, settings, run, clock, notifiers, period=HOUR):
    """notify_after_pass, with the pass's stage runs in the ledger as the orchestrator leaves them."""
    for entry in run.summary["stages"]:
        store.save_run(Run(run_id=entry["run_id"], stage=entry["stage"], source=entry["source"],
                           status=entry["status"], started_at=run.started_at, finished_at=run.started_at,
                           summary={"warnings": [], "errors": entry["errors"]}))
    return notify_after_pass(store, settings, run, clock=clock, schedule_period_s=period, notifiers=notifiers)


def test_a_failing_source_sends_one_message_per_incident_and_nothing_more_for_the_same_pass(store, alert_settings,
                                                                                             clock):
    fake = FakeNotifier()
    run = b_down(clock)
    outcome = evaluate(store, alert_settings, run, clock, [fake])
    assert sorted(outcome["opened"]) == ["pass_failed:pipeline", "source_failing:source_b"]
    assert len(fake.sent) == 2 and all("FIRING" in s for s in fake.subjects())
    assert outcome["send_failures"] == [] and outcome["reminded"] == outcome["resolved"] == []
    again = evaluate(store, alert_settings, run, clock, [fake])  # a second evaluator of the same pass
    assert again == {"opened": [], "reminded": [], "resolved": [], "send_failures": []}
    clock.advance(HOUR)
    evaluate(store, alert_settings, b_down(clock), clock, [fake])  # still failing, before the reminder is due
    assert len(fake.sent) == 2


def test_the_message_says_what_failed_since_when_the_runs_their_errors_and_where_to_look(store, alert_settings,
                                                                                        clock):
    fake = FakeNotifier()
    first = b_down(clock, "CSV file not found: /data/Historical_Data.csv")
    since = first.started_at
    evaluate(store, alert_settings, first, clock, [fake])
    message = next(m for m in fake.sent if "source_b" in m.subject)
    failed = first.summary["stages"][1]["run_id"]
    assert "source_b" in message.subject and since in message.text
    assert failed in message.text and "CSV file not found" in message.text
    assert first.run_id in message.text
    assert "run ledger" in message.text and "etl quarantine list" in message.text


def test_reminder_at_most_every_repeat_interval_then_one_resolved_message(store, alert_settings, clock):
    fake = FakeNotifier()
    evaluate = functools.partial(globals()["evaluate"], period=24 * HOUR)  # not stale within this test
    evaluate(store, alert_settings, b_down(clock), clock, [fake])
    assert len(fake.sent) == 2
    clock.advance(4 * HOUR - 1)
    assert evaluate(store, alert_settings, b_down(clock), clock, [fake])["reminded"] == []
    clock.advance(1)
    outcome = evaluate(store, alert_settings, b_down(clock), clock, [fake])
    assert sorted(outcome["reminded"]) == ["pass_failed:pipeline", "source_failing:source_b"]
    assert sum("REMINDER" in s for s in fake.subjects()) == 2
    clock.advance(HOUR)
    evaluate(store, alert_settings, b_down(clock), clock, [fake])
    assert len(fake.sent) == 4
    outcome = evaluate(store, alert_settings, healthy(clock), clock, [fake])
    assert sorted(outcome["resolved"]) == ["pass_failed:pipeline", "source_failing:source_b"]
    assert sum("RESOLVED" in s for s in fake.subjects()) == 2
    clock.advance(5 * HOUR)
    assert evaluate(store, alert_settings, healthy(clock), clock, [fake])["resolved"] == []
    assert len(fake.sent) == 6


def test_a_source_must_fail_n_passes_in_a_row(store, alert_settings, clock):
    fake, settings = FakeNotifier(), replace(alert_settings, alert_after_failures=3)
    for _ in range(2):
        evaluate(store, settings, b_down(clock), clock, [fake])
        clock.advance(HOUR)
    evaluate(store, settings, healthy(clock), clock, [fake])  # the streak is broken
    for _ in range(2):
        clock.advance(HOUR)
        outcome = evaluate(store, settings, b_down(clock), clock, [fake])
        assert "source_failing:source_b" not in outcome["opened"]
    clock.advance(HOUR)
    repeated = b_down(clock)
    outcome = evaluate(store, settings, repeated, clock, [fake])
    evaluate(store, settings, repeated, clock, [fake])  # the same pass counts once
    assert "source_failing:source_b" in outcome["opened"]
    only_b = [m for m in fake.sent if "source_b extract failing" in m.subject]
    assert len(only_b) == 1 and "3 passes in a row" in only_b[0].subject


def test_a_failed_send_is_recorded_and_retried_on_the_next_evaluation_never_twice_per_channel(store, alert_settings,
                                                                                             clock):
    mail, hook = FakeNotifier("email"), FakeNotifier("webhook")
    hook.failing = "webhook: no answer within 10 s"
    outcome = evaluate(store, alert_settings, b_down(clock), clock, [mail, hook])
    assert len(mail.sent) == 2 and hook.sent == []
    assert {(f["incident"], f["channel"]) for f in outcome["send_failures"]} == {
        ("pass_failed:pipeline", "webhook"), ("source_failing:source_b", "webhook")}
    assert all(f["error"].endswith("webhook: no answer within 10 s") for f in outcome["send_failures"])
    hook.failing = None
    clock.advance(60)
    outcome = evaluate(store, alert_settings, b_down(clock), clock, [mail, hook])
    assert len(hook.sent) == 2 and len(mail.sent) == 2  # the channel that delivered is not sent to again
    assert all("FIRING" in s for s in hook.subjects()) and outcome["send_failures"] == []
    clock.advance(60)
    evaluate(store, alert_settings, b_down(clock), clock, [mail, hook])
    assert (len(mail.sent), len(hook.sent)) == (2, 2)


def test_no_successful_extract_for_twice_the_schedule(store, alert_settings, clock):
    fake = FakeNotifier()
    ok = Run(run_id=new_run_id("extract"), stage="extract", source="source_c", status="succeeded",
             started_at=iso_utc(clock() - 10), finished_at=iso_utc(clock()))
    store.save_run(ok)
    skipped = lambda: a_pass(clock, stage("source_c", "skipped"), status="succeeded")  # noqa: E731
    clock.advance(2 * HOUR - 1)
    assert evaluate(store, alert_settings, skipped(), clock, [fake])["opened"] == []
    clock.advance(2)
    outcome = evaluate(store, alert_settings, skipped(), clock, [fake])
    assert outcome["opened"] == ["source_stale:source_c"]
    assert ok.run_id in fake.sent[0].text and ok.finished_at in fake.sent[0].text
    store.save_run(replace(ok, run_id=new_run_id("extract"), started_at=iso_utc(clock()),
                           finished_at=iso_utc(clock())))
    assert evaluate(store, alert_settings, skipped(), clock, [fake])["resolved"] == ["source_stale:source_c"]


def test_a_source_that_never_succeeded_is_stale_two_periods_after_alerts_first_saw_it(store, alert_settings, clock):
    fake = FakeNotifier()
    failing = lambda: a_pass(clock, stage("source_a", "failed", "source_a: 401"), status="partial")  # noqa: E731
    assert "source_stale:source_a" not in evaluate(store, alert_settings, failing(), clock, [fake])["opened"]
    clock.advance(2 * HOUR)
    assert "source_stale:source_a" not in evaluate(store, alert_settings, failing(), clock, [fake])["opened"]
    clock.advance(1)
    assert "source_stale:source_a" in evaluate(store, alert_settings, failing(), clock, [fake])["opened"]
    stale = next(m for m in fake.sent if "no successful extract" in m.subject)
    assert "since alerts started watching" in stale.text and "source_a: 401" in stale.text


def test_a_pass_quarantining_more_than_the_ratio(store, alert_settings, clock):
    fake = FakeNotifier()
    settings = replace(alert_settings, alert_quarantine_ratio=0.1)
    bad = a_pass(clock, stage("source_b", "succeeded"),
                 stage(None, "succeeded", kind="transform_load", rows_in=1000, quarantined=101))
    outcome = evaluate(store, settings, bad, clock, [fake])
    assert outcome["opened"] == ["quarantine_ratio:pipeline"]
    assert "10.1%" in fake.sent[0].subject and "etl quarantine list" in fake.sent[0].text
    empty = a_pass(clock, stage(None, "succeeded", kind="transform_load", rows_in=0))
    assert evaluate(store, settings, empty, clock, [fake]) == {"opened": [], "reminded": [], "resolved": [],
                                                               "send_failures": []}
    fine = a_pass(clock, stage(None, "succeeded", kind="transform_load", rows_in=1000, quarantined=100))
    assert evaluate(store, settings, fine, clock, [fake])["resolved"] == ["quarantine_ratio:pipeline"]


def test_without_a_notifier_incidents_are_tracked_and_logged_so_a_later_notifier_only_reminds(store, alert_settings,
                                                                                              clock, caplog):
    caplog.set_level(logging.INFO, logger="common.alerts")
    outcome = evaluate(store, alert_settings, b_down(clock), clock, [])
    assert "source_failing:source_b" in outcome["opened"]
    assert any("source_failing:source_b" in r.getMessage() for r in caplog.records)
    fake = FakeNotifier()
    clock.advance(HOUR)
    evaluate(store, alert_settings, b_down(clock), clock, [fake])
    assert fake.sent == []  # already open: no second "opened"
    clock.advance(3 * HOUR)
    assert "source_failing:source_b" in evaluate(store, alert_settings, b_down(clock), clock, [fake])["reminded"]


def test_secrets_never_reach_messages_summaries_or_logs(store, alert_settings, clock, caplog):
    caplog.set_level(logging.DEBUG)
    settings = replace(alert_settings, source_c_api_key="CG-KEY-123", alert_webhook_url="https://hooks.example/T/B/xyz")
    fake = FakeNotifier()
    fake.failing = f"email: 535 auth failed for {PASSWORD} via https://hooks.example/T/B/xyz"
    error = ("source_c: GET https://bob:hunter2@api.example/coins?x_cg_demo_api_key=CG-KEY-123&page=1 failed; "
             f"password {PASSWORD}; mongodb://root:s3cr3t@db:27017/etl")
    run = a_pass(clock, stage("source_c", "failed", error), errors=(error,), status="failed")
    outcome = evaluate(store, settings, run, clock, [fake])
    fake.failing = None
    clock.advance(60)
    evaluate(store, settings, run, clock, [fake])
    seen = " ".join([m.subject + m.text for m in fake.sent] + [repr(outcome)] + [r.getMessage() for r in caplog.records]
                    + [repr(store.get_state(f"incident:{k}")[0]) for k in ("pass_failed:pipeline",
                                                                            "source_failing:source_c")])
    assert fake.sent and outcome["send_failures"]
    for secret in (PASSWORD, "hunter2", "CG-KEY-123", "s3cr3t", "hooks.example/T/B/xyz"):
        assert secret not in seen
    assert "api.example/coins" in seen  # the error stays readable


def test_a_store_outage_is_reported_not_raised(store, alert_settings, clock):
    class Down(type(store)):
        def get_state(self, key):
            raise StoreError("store unavailable: database is locked")

    down = Down(alert_settings.sqlite_path, clock=clock)
    try:
        outcome = evaluate(down, alert_settings, b_down(clock), clock, [FakeNotifier()])
    finally:
        down.close()
    assert outcome["send_failures"] and all(f["channel"] == "store" for f in outcome["send_failures"])
    assert "database is locked" in outcome["send_failures"][0]["error"]


def test_a_notifier_that_raises_does_not_fail_the_pass(store, alert_settings, clock):
    class Broken(FakeNotifier):
        def send(self, message):
            raise RuntimeError("bug in the adapter")

    outcome = evaluate(store, alert_settings, b_down(clock), clock, [Broken("broken")])
    assert {f["channel"] for f in outcome["send_failures"]} == {"broken"}
    assert "RuntimeError" in outcome["send_failures"][0]["error"]


def test_a_claim_left_by_a_sender_that_died_is_sent_again_only_once_it_is_stale(store, alert_settings, clock):
    class Dies(FakeNotifier):
        def send(self, message):
            raise SystemExit("killed mid-send")  # the process is gone: nothing after the claim was recorded

    with pytest.raises(SystemExit):
        evaluate(store, alert_settings, b_down(clock), clock, [Dies("email")])
    fake = FakeNotifier("email")
    run = b_down(clock)
    clock.advance(30)  # the claim may still be in flight in a live process: leave it alone
    assert evaluate(store, alert_settings, run, clock, [fake])["opened"] == ["source_failing:source_b"]  # not reached
    clock.advance(alert_settings.alert_timeout_s + 60)
    assert evaluate(store, alert_settings, run, clock, [fake])["opened"] == ["pass_failed:pipeline"]
    evaluate(store, alert_settings, run, clock, [fake])
    assert sorted(s.split(" - ")[0] for s in fake.subjects()) == ["[crypto-etl] FIRING: pipeline pass failing",
                                                                   "[crypto-etl] FIRING: source_b extract failing"]


def test_a_bad_recipient_list_is_reported_and_incidents_are_still_tracked(store, alert_settings, clock):
    settings = replace(alert_settings, smtp_host="127.0.0.1", alert_email_to="ops@example.com, nobody")
    outcome = notify_after_pass(store, settings, b_down(clock), clock=clock, schedule_period_s=HOUR)
    assert "source_failing:source_b" in outcome["opened"]
    assert [f["channel"] for f in outcome["send_failures"]] == ["config"]
    assert "ALERT_EMAIL_TO" in outcome["send_failures"][0]["error"]
