"""Alerts that reach a person: after every pass, incidents are judged, kept in the store and announced once per
transition (FIRING, a REMINDER at most every ALERT_REPEAT_S, RESOLVED) by e-mail and/or a chat webhook.

    notify_after_pass(store, settings, pass_run, clock=..., schedule_period_s=...)  -> summary dict
    Notifier (port) ── EmailNotifier (SMTP: STARTTLS, implicit TLS or none), WebhookNotifier ({"text": ...})
"""

from __future__ import annotations

import logging

from common.alerts.incidents import evaluate, gather
from common.alerts.notifiers import (EmailNotifier, Message, Notifier, OncePerEvaluation, WebhookNotifier,
                                     notifiers_from_settings)
from common.alerts.redact import redactor_for
from common.clock import Clock
from common.config import Settings
from common.errors import EtlError
from common.store import Run, Store

__all__ = ["EmailNotifier", "Message", "Notifier", "WebhookNotifier", "notifiers_from_settings", "notify_after_pass"]

log = logging.getLogger("common.alerts")


def notify_after_pass(store: Store, settings: Settings, pass_run: Run, *, clock: Clock,
                      schedule_period_s: float, notifiers: list[Notifier] | None = None) -> dict:
    """Judge every incident this pass bears on and send what is due; never raises, never waits longer than the
    notifiers' timeouts (one timeout per notifier: after a failure, its other messages wait for the next evaluation).

    Returns, for the pass summary (no secrets: error text is scrubbed):
        {"opened" | "reminded" | "resolved": [incident ids whose message this evaluation claimed, first delivery or
         retry of an earlier failed one], "send_failures": [{"incident", "message", "channel", "error"}]}
    A store failure is reported as a send failure on channel "store"."""
    outcome: dict = {"opened": [], "reminded": [], "resolved": [], "send_failures": []}
    redact = redactor_for(settings)
    if notifiers is None:
        try:
            notifiers = notifiers_from_settings(settings)
        except ValueError as exc:  # a bad ALERT_EMAIL_TO: incidents are still tracked
            notifiers = []
            _failed(outcome, "*", exc, redact, channel="config")
    notifiers = [OncePerEvaluation(n) for n in notifiers]
    now = clock()
    try:
        found = gather(store, settings, pass_run, now, schedule_period_s, redact)
    except EtlError as exc:
        return _failed(outcome, "*", exc, redact)
    for evidence in found:
        try:
            evaluate(store, settings, evidence, pass_run, now=now, notifiers=notifiers, redact=redact,
                     outcome=outcome)
        except EtlError as exc:
            _failed(outcome, evidence.incident_id, exc, redact)
    return outcome


def _failed(outcome: dict, incident: str, exc: Exception, redact, channel: str = "store") -> dict:
    error = redact(exc.message if isinstance(exc, EtlError) else str(exc))
    log.warning("alerts: %s: %s", "incident " + incident if incident != "*" else "evaluation", error)
    outcome["send_failures"].append({"incident": incident, "message": None, "channel": channel, "error": error})
    return outcome
