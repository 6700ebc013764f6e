"""The notifier port and its adapters (SMTP e-mail, JSON webhook): how an alert reaches a person.

A delivery failure is an expected outcome, reported rather than raised: `send` returns the reason (scrubbed, never
quoting a password or the webhook URL) and None when the message was handed over. Every adapter is bounded by one
timeout, so a hung server costs an evaluation that long at most.
"""

from __future__ import annotations

import http.client
import json
import logging
import smtplib
import socket
import ssl
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from urllib.parse import urlsplit

from common.alerts.redact import Redactor, redactor_for
from common.config import Settings, parse_recipients

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    """What a person reads: a one-line subject and a plain-text body."""

    subject: str
    text: str


class Notifier(ABC):
    """Port: deliver one message on one channel. `name` identifies the channel in the incident state."""

    name: str = "notifier"

    @abstractmethod
    def send(self, message: Message) -> str | None:
        """Hand the message over; None on success, else why it failed (no secret in it). Never raises for a
        failed delivery."""


class OncePerEvaluation(Notifier):
    """Wraps a notifier for one evaluation: after its first failure, the evaluation's other messages on that channel
    fail at once with the same reason (and are retried next time), so a hung server costs one timeout per
    evaluation, not one per incident."""

    def __init__(self, inner: Notifier) -> None:
        self.inner, self.name = inner, inner.name
        self.first_error: str | None = None

    def __repr__(self) -> str:
        return f"OncePerEvaluation({self.inner!r})"

    def send(self, message: Message) -> str | None:
        if self.first_error is not None:
            return f"not attempted, failed earlier in this evaluation: {self.first_error}"
        self.first_error = self.inner.send(message)
        return self.first_error


class _Bounded:
    """smtplib client mix-in: every socket operation (connect, TLS handshake, each command and reply) only gets what
    is left of one overall deadline, so a server that answers each line just before a per-read timeout still
    cannot hold us longer than `budget_s` in total."""

    def __init__(self, *args, budget_s: float, **kwargs) -> None:
        self._deadline = time.monotonic() + budget_s
        super().__init__(*args, timeout=budget_s, local_hostname=socket.gethostname(), **kwargs)

    def _arm(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline reached")
        if self.sock is not None:
            self.sock.settimeout(left)

    def send(self, s) -> None:
        self._arm()
        super().send(s)

    def getreply(self):
        self._arm()
        return super().getreply()


class _BoundedSMTP(_Bounded, smtplib.SMTP):
    pass


class _BoundedSMTPSSL(_Bounded, smtplib.SMTP_SSL):
    pass


class EmailNotifier(Notifier):
    """SMTP with STARTTLS (default, port 587), implicit TLS (`tls`, port 465) or none (a local relay; then no
    password is ever sent). The server's certificate is verified against the system trust store."""

    name = "email"

    def __init__(self, host: str, port: int, recipients: list[str], sender: str, *, security: str = "starttls",
                 user: str | None = None, password: str | None = None, timeout_s: float = 10.0,
                 tls_context: ssl.SSLContext | None = None, redact: Redactor | None = None) -> None:
        if security not in ("starttls", "tls", "none"):
            raise ValueError(f"SMTP_SECURITY must be starttls, tls or none, got {security!r}")
        self.host, self.port, self.recipients, self.sender = host, port, recipients, sender
        self.security, self.user, self._password, self.timeout_s = security, user, password, timeout_s
        self._tls_context = tls_context
        self._redact = redact or Redactor([password])

    def __repr__(self) -> str:
        return f"EmailNotifier({self.host}:{self.port}, {self.security}, to={len(self.recipients)})"

    def send(self, message: Message) -> str | None:
        if self.security == "none" and self._password:
            return "email: refusing to send the SMTP password without TLS (SMTP_SECURITY=none)"
        mail = EmailMessage()
        mail["Subject"], mail["From"], mail["To"] = message.subject, self.sender, ", ".join(self.recipients)
        mail["Date"], mail["Message-ID"] = formatdate(localtime=False), make_msgid(domain="crypto-etl")
        mail.set_content(message.text)
        client: smtplib.SMTP | None = None
        try:
            client = self._connect()
            if self.user and self._password:
                client.login(self.user, self._password)
            client.send_message(mail)
        except (OSError, smtplib.SMTPException, ValueError) as exc:
            return f"email via {self.host}:{self.port}: {self._describe(exc)}"
        finally:
            if client is not None:
                self._close(client)
        return None

    def _connect(self) -> smtplib.SMTP:
        context = self._tls_context or ssl.create_default_context()
        if self.security == "tls":
            client = _BoundedSMTPSSL(budget_s=self.timeout_s, context=context)
        else:
            client = _BoundedSMTP(budget_s=self.timeout_s)
        client._host = self.host  # the name the certificate is checked against (smtplib sets it only in __init__)
        try:
            code, reply = client.connect(self.host, self.port)
            if code != 220:
                raise smtplib.SMTPConnectError(code, reply)
            if self.security == "starttls":
                client.ehlo()
                client.starttls(context=context)  # SMTPNotSupportedError when not offered: no password in clear
                client.ehlo()
        except BaseException:
            client.close()
            raise
        return client

    @staticmethod
    def _close(client: smtplib.SMTP) -> None:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()

    def _describe(self, exc: BaseException) -> str:
        if _caused_by(exc, TimeoutError):  # socket.timeout included; smtplib re-raises it as SMTPServerDisconnected
            return f"no answer within {self.timeout_s:g} s"
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused"
        if isinstance(exc, smtplib.SMTPResponseException):
            text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
            return self._redact(f"{type(exc).__name__} {exc.smtp_code} {text}"[:300])
        return self._redact(f"{type(exc).__name__}: {exc}"[:300])


def _caused_by(exc: BaseException | None, kind: type) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, kind):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class WebhookNotifier(Notifier):
    """POST `{"text": ...}` (Slack, Mattermost, Teams workflows, most chat tools). The URL is a credential (its path
    or query holds the token), hence plain http.client rather than requests: nothing logs the URL (urllib3 does at
    DEBUG), no proxy or redirect can carry it elsewhere, and one deadline bounds connect, send and reply together."""

    name = "webhook"

    def __init__(self, url: str, *, timeout_s: float = 10.0, redact: Redactor | None = None,
                 tls_context: ssl.SSLContext | None = None) -> None:
        self._url, self.timeout_s, self._tls_context = url, timeout_s, tls_context
        self._redact = redact or Redactor([url])

    def __repr__(self) -> str:
        return "WebhookNotifier(<url hidden>)"

    def send(self, message: Message) -> str | None:
        body = json.dumps({"text": f"*{message.subject}*\n{message.text}"}).encode()
        parts = urlsplit(self._url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        deadline = time.monotonic() + self.timeout_s
        if parts.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=self.timeout_s,
                context=self._tls_context or ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.timeout_s)
        try:
            conn.connect()
            conn.sock.settimeout(max(0.001, deadline - time.monotonic()))
            conn.request("POST", target, body=body, headers={"Content-Type": "application/json",
                                                             "User-Agent": "crypto-etl-alerts"})
            conn.sock.settimeout(max(0.001, deadline - time.monotonic()))
            response = conn.getresponse()
            status, text = response.status, response.read(200).decode("utf-8", "replace")
        except OSError as exc:
            if _caused_by(exc, TimeoutError):
                return f"webhook: no answer within {self.timeout_s:g} s"
            return f"webhook: could not connect ({type(exc).__name__})"  # the text may quote the host: type only
        except http.client.HTTPException as exc:
            return f"webhook: broken answer ({type(exc).__name__})"
        finally:
            conn.close()
        if status >= 300:
            return self._redact(f"webhook: HTTP {status} {text}".strip())
        return None


def notifiers_from_settings(settings: Settings) -> list[Notifier]:
    """The adapters the settings configure: e-mail when SMTP_HOST and ALERT_EMAIL_TO are set, the webhook when
    ALERT_WEBHOOK_URL is. An empty list still tracks incidents; nothing is sent."""
    redact = redactor_for(settings)
    notifiers: list[Notifier] = []
    if settings.smtp_host:
        recipients = parse_recipients(settings.alert_email_to)
        if recipients:
            sender = settings.alert_email_from or settings.alert_email_user or f"crypto-etl@{socket.gethostname()}"
            notifiers.append(EmailNotifier(
                settings.smtp_host, settings.smtp_port, recipients, sender, security=settings.smtp_security,
                user=settings.alert_email_user, password=settings.alert_email_pass,
                timeout_s=settings.alert_timeout_s, redact=redact))
        else:
            log.warning("SMTP_HOST is set but ALERT_EMAIL_TO is empty: no e-mail alerts")
    if settings.alert_webhook_url:
        notifiers.append(WebhookNotifier(settings.alert_webhook_url, timeout_s=settings.alert_timeout_s,
                                         redact=redact))
    return notifiers
