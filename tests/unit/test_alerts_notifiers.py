"""Notifier adapters built from settings, recipients, and the scrubbing of error text. (The adapters themselves are
exercised against real servers on loopback: tests/e2e/test_alerts_smtp.py and test_alerts_webhook.py.)"""

from __future__ import annotations

import pytest

from common.alerts import EmailNotifier, WebhookNotifier, notifiers_from_settings
from common.config import parse_recipients
from common.alerts.redact import Redactor
from common.config import Settings

HOOK = "https://hooks.example.com/services/T000/B000/XXXXSECRET"


def test_adapters_follow_the_settings():
    assert notifiers_from_settings(Settings()) == []
    both = notifiers_from_settings(Settings(smtp_host="mail.example.com", alert_email_to="a@x.io, b@x.io",
                                            alert_webhook_url=HOOK))
    assert [type(n) for n in both] == [EmailNotifier, WebhookNotifier]
    assert both[0].recipients == ["a@x.io", "b@x.io"]
    assert notifiers_from_settings(Settings(smtp_host="mail.example.com")) == []  # nobody to write to


def test_recipients_are_validated():
    assert parse_recipients(" a@x.io,,b@y.io ") == ["a@x.io", "b@y.io"]
    with pytest.raises(ValueError, match="ALERT_EMAIL_TO"):
        parse_recipients("a@x.io, nobody")


def test_no_adapter_shows_a_secret_in_its_repr():
    settings = Settings(smtp_host="mail.example.com", alert_email_to="a@x.io", alert_email_user="u",
                        alert_email_pass="hunter2", alert_webhook_url=HOOK)
    text = repr(notifiers_from_settings(settings))
    assert "hunter2" not in text and "XXXXSECRET" not in text


def test_redactor_scrubs_known_secrets_credentials_in_urls_and_key_parameters():
    scrub = Redactor(["hunter2", HOOK, "", None])
    text = scrub(f"https://bob:pw@api.example/x?api_key=abc&page=2 and {HOOK} and /services/T000/B000/XXXXSECRET "
                 "hunter2 mongodb+srv://u:p@cluster/db token=zzz Authorization: Bearer eyJabc.def")
    for secret in ("bob:pw", "abc&", "hunter2", "XXXXSECRET", "u:p@", "zzz", "eyJabc"):
        assert secret not in text
    assert "api.example/x?" in text and "page=2" in text
