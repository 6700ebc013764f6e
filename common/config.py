"""Settings read once from the environment into a frozen, validated object that callers pass down."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Mapping

from common.errors import ConfigError
from common.schedule import parse_schedule

DEFAULT_SQLITE_PATH = "./data/etl.sqlite3"
DEFAULT_SOURCE_B_PATH = "./data/Historical_Data.csv"
DEFAULT_SOURCE_A_URL = "https://api.coinpaprika.com/v1/tickers"
DEFAULT_SOURCE_C_URL = "https://api.coingecko.com/api/v3/coins/markets"
GOOGLE_JWKS_URL = "https://www.googleapis.com/oauth2/v3/certs"


@dataclass(frozen=True)
class Settings:
    """Everything configurable; secrets are kept out of repr so they never reach a log line."""

    mongodb_uri: str | None = field(default=None, repr=False)
    sqlite_path: str = DEFAULT_SQLITE_PATH
    source_b_path: str = DEFAULT_SOURCE_B_PATH
    csv_chunk_rows: int = 20_000
    csv_max_line_bytes: int = 1 << 20
    invocation_budget_s: float = 540.0
    lease_ttl_s: float = 20.0
    store_timeout_s: float = 3.0
    log_level: str = "INFO"
    log_format: str = "auto"  # LOG_FORMAT: json | text | auto (text on a terminal, else JSON; common/logs.py)
    source_a_url: str = DEFAULT_SOURCE_A_URL
    source_a_api_key: str | None = field(default=None, repr=False)
    source_a_rate: str = "10/1m"
    source_c_url: str = DEFAULT_SOURCE_C_URL
    source_c_api_key: str | None = field(default=None, repr=False)
    source_c_rate: str = "3/1m"
    source_c_max_pages: int = 4
    source_c_per_page: int = 250
    http_timeout_s: float = 20.0
    http_max_attempts: int = 5
    transform_workers: int = 1
    drift_threshold: float = 0.8
    field_aliases: str = ""  # JSON, see parse_field_aliases
    field_formats: str = ""  # JSON, see parse_field_formats
    csv_settle_s: float = 2.0
    max_server_wait_s: float = 3600.0
    source_pass_interval_s: float = 3600.0
    quarantine_max_ratio: float = 0.5
    # --- retention (common.prune: `etl prune`, and after every pass), in days ---
    raw_retention_days: float = 7.0  # processed raw batches (pending ones, and those unresolved quarantine needs, stay)
    run_retention_days: float = 30.0  # finished runs: /stats' 7-day error rate and a month of /runs history
    quarantine_retention_days: float = 30.0  # resolved quarantine entries (unresolved ones stay)
    # --- one pass (orchestrator) and the trigger ---
    etl_schedule: str = "0 * * * *"  # cron (5 fields, UTC) or an interval such as 30s, 15m, 1h
    pass_budget_s: float = 3000.0
    extract_source_a_url: str = ""  # stage function URLs for the HTTP invoker (the trigger, split deployments)
    extract_source_b_url: str = ""
    extract_source_c_url: str = ""
    transform_load_url: str = ""
    # --- alerts ---
    alert_email_user: str | None = field(default=None, repr=False)
    alert_email_pass: str | None = field(default=None, repr=False)
    alert_email_to: str = ""  # comma-separated
    alert_email_from: str = ""
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_security: str = "starttls"  # starttls | tls | none
    alert_webhook_url: str | None = field(default=None, repr=False)  # a webhook URL is a credential
    alert_after_failures: int = 1
    alert_repeat_s: float = 4 * 3600.0
    alert_quarantine_ratio: float = 0.1
    alert_timeout_s: float = 10.0
    # --- the API's POST /refresh ---
    jwt_secret: str | None = field(default=None, repr=False)  # unset: refresh disabled (503), never a default
    jwt_audience: str = ""
    jwt_issuer: str = ""
    refresh_min_s: float = 60.0
    refresh_oidc_audience: str = ""  # Google ID tokens (Cloud Scheduler) accepted when set, with this aud only
    refresh_oidc_emails: str = ""  # comma-separated service accounts whose ID tokens may refresh
    refresh_oidc_jwks_url: str = GOOGLE_JWKS_URL  # where Google publishes its signing keys (tests: loopback)
    refresh_oidc_jwks_timeout_s: float = 5.0
    # --- deployment (FaaS): see resolve_path ---
    deployed_as: str = ""  # K_SERVICE, set by Cloud Functions gen2 / Cloud Run: no default may depend on the folder
    storage_emulator_host: str = ""  # STORAGE_EMULATOR_HOST: gs:// objects come from this emulator, anonymously
    stage_auth: str = "none"  # STAGE_AUTH: none | oidc (the HTTP invoker sends a metadata-server identity token)

    def aliases_for(self, source: str) -> dict[str, list[str]]:
        return parse_field_aliases(self.field_aliases).get(source, {})

    def formats_for(self, source: str) -> dict[str, str]:
        return parse_field_formats(self.field_formats).get(source, {})

    @property
    def store_kind(self) -> str:
        return "mongo" if self.mongodb_uri else "sqlite"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        reader = _EnvReader(env)
        deployed_as = reader.text("K_SERVICE")
        mongodb_uri = reader.text("MONGODB_URI") or None
        settings = cls(
            mongodb_uri=mongodb_uri,
            sqlite_path=resolve_path("SQLITE_PATH", reader.text("SQLITE_PATH"), DEFAULT_SQLITE_PATH, deployed_as,
                                     needed=not mongodb_uri, remote_ok=False),
            source_b_path=resolve_path("SOURCE_B_PATH", reader.text("SOURCE_B_PATH"), DEFAULT_SOURCE_B_PATH,
                                       deployed_as, needed=False, remote_ok=True),
            csv_chunk_rows=reader.number("CSV_CHUNK_ROWS", 20_000, int, minimum=1),
            csv_max_line_bytes=reader.number("CSV_MAX_LINE_BYTES", 1 << 20, int, minimum=64),
            invocation_budget_s=reader.number("INVOCATION_BUDGET_S", 540.0, float, minimum=1),
            lease_ttl_s=reader.number("LEASE_TTL_S", 20.0, float, minimum=0.1),
            store_timeout_s=reader.number("STORE_TIMEOUT_S", 3.0, float, minimum=0.05),
            log_level=(reader.text("LOG_LEVEL") or "INFO").upper(),
            log_format=(reader.text("LOG_FORMAT") or "auto").lower(),
            source_a_url=reader.url("SOURCE_A_URL", DEFAULT_SOURCE_A_URL),
            source_a_api_key=reader.text("SOURCE_A_API_KEY") or None,
            source_a_rate=reader.rate("SOURCE_A_RATE", "10/1m"),
            source_c_url=reader.url("SOURCE_C_URL", DEFAULT_SOURCE_C_URL),
            source_c_api_key=reader.text("SOURCE_C_API_KEY") or None,
            source_c_rate=reader.rate("SOURCE_C_RATE", "3/1m"),
            source_c_max_pages=reader.number("SOURCE_C_MAX_PAGES", 4, int, minimum=1),
            source_c_per_page=reader.number("SOURCE_C_PER_PAGE", 250, int, minimum=1),
            http_timeout_s=reader.number("HTTP_TIMEOUT_S", 20.0, float, minimum=0.1),
            http_max_attempts=reader.number("HTTP_MAX_ATTEMPTS", 5, int, minimum=1),
            transform_workers=reader.number("TRANSFORM_WORKERS", 1 if (os.cpu_count() or 1) > 1 else 0, int,
                                            minimum=0),
            drift_threshold=reader.number("DRIFT_THRESHOLD", 0.8, float, minimum=0.0),
            field_aliases=reader.aliases("FIELD_ALIASES"),
            field_formats=reader.formats("FIELD_FORMATS"),
            csv_settle_s=reader.number("CSV_SETTLE_S", 2.0, float, minimum=0.0),
            max_server_wait_s=reader.number("MAX_SERVER_WAIT_S", 3600.0, float, minimum=0.0),
            source_pass_interval_s=reader.number("SOURCE_PASS_INTERVAL_S", 3600.0, float, minimum=1.0),
            quarantine_max_ratio=reader.number("QUARANTINE_MAX_RATIO", 0.5, float, minimum=0.0),
            raw_retention_days=reader.number("RAW_RETENTION_DAYS", 7.0, float, minimum=0.0),
            run_retention_days=reader.number("RUN_RETENTION_DAYS", 30.0, float, minimum=0.0),
            quarantine_retention_days=reader.number("QUARANTINE_RETENTION_DAYS", 30.0, float, minimum=0.0),
            etl_schedule=reader.schedule("ETL_SCHEDULE", "0 * * * *"),
            pass_budget_s=reader.number("PASS_BUDGET_S", 3000.0, float, minimum=1),
            extract_source_a_url=reader.optional_url("EXTRACT_SOURCE_A_URL"),
            extract_source_b_url=reader.optional_url("EXTRACT_SOURCE_B_URL"),
            extract_source_c_url=reader.optional_url("EXTRACT_SOURCE_C_URL"),
            transform_load_url=reader.optional_url("TRANSFORM_LOAD_URL"),
            alert_email_user=reader.text("ALERT_EMAIL_USER") or None,
            alert_email_pass=reader.text("ALERT_EMAIL_PASS") or None,
            alert_email_to=reader.recipients("ALERT_EMAIL_TO"),
            alert_email_from=reader.text("ALERT_EMAIL_FROM"),
            smtp_host=reader.text("SMTP_HOST"),
            smtp_port=reader.number("SMTP_PORT", 587, int, minimum=1),
            smtp_security=(reader.text("SMTP_SECURITY") or "starttls").lower(),
            alert_webhook_url=reader.optional_url("ALERT_WEBHOOK_URL") or None,
            alert_after_failures=reader.number("ALERT_AFTER_FAILURES", 1, int, minimum=1),
            alert_repeat_s=reader.number("ALERT_REPEAT_S", 4 * 3600.0, float, minimum=1),
            alert_quarantine_ratio=reader.number("ALERT_QUARANTINE_RATIO", 0.1, float, minimum=0.0),
            alert_timeout_s=reader.number("ALERT_TIMEOUT_S", 10.0, float, minimum=0.1),
            jwt_secret=reader.secret("JWT_SECRET", min_bytes=32),
            jwt_audience=reader.text("JWT_AUDIENCE"),
            jwt_issuer=reader.text("JWT_ISSUER"),
            refresh_min_s=reader.number("REFRESH_MIN_S", 60.0, float, minimum=0.0),
            refresh_oidc_audience=reader.text("REFRESH_OIDC_AUDIENCE"),
            refresh_oidc_emails=reader.emails("REFRESH_OIDC_EMAILS"),
            refresh_oidc_jwks_url=reader.url("REFRESH_OIDC_JWKS_URL", GOOGLE_JWKS_URL),
            refresh_oidc_jwks_timeout_s=reader.number("REFRESH_OIDC_JWKS_TIMEOUT_S", 5.0, float, minimum=0.1),
            deployed_as=deployed_as,
            storage_emulator_host=reader.host_url("STORAGE_EMULATOR_HOST"),
            stage_auth=(reader.text("STAGE_AUTH") or "none").lower(),
        )
        if bool(settings.refresh_oidc_audience) != bool(settings.refresh_oidc_emails):
            missing = "REFRESH_OIDC_EMAILS" if settings.refresh_oidc_audience else "REFRESH_OIDC_AUDIENCE"
            raise ConfigError(f"{missing} must be set too: Google ID tokens for POST /refresh need both the "
                              "audience (the API's URL) and the service accounts allowed to refresh")
        if settings.stage_auth not in ("none", "oidc"):
            raise ConfigError(f"STAGE_AUTH must be none or oidc, got {settings.stage_auth!r}")
        if settings.source_c_per_page > 250:
            raise ConfigError(f"SOURCE_C_PER_PAGE must be between 1 and 250, got {settings.source_c_per_page}")
        if settings.drift_threshold > 1:
            raise ConfigError(f"DRIFT_THRESHOLD must be between 0 and 1, got {settings.drift_threshold}")
        if settings.quarantine_max_ratio > 1:
            raise ConfigError(f"QUARANTINE_MAX_RATIO must be between 0 and 1, got {settings.quarantine_max_ratio}")
        if settings.smtp_security not in ("starttls", "tls", "none"):
            raise ConfigError(f"SMTP_SECURITY must be starttls, tls or none, got {settings.smtp_security!r}")
        if settings.smtp_port > 65535:
            raise ConfigError(f"SMTP_PORT must be between 1 and 65535, got {settings.smtp_port}")
        if settings.log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {settings.log_level!r}")
        if settings.log_format not in {"auto", "json", "text"}:
            raise ConfigError(f"LOG_FORMAT must be auto, json or text, got {settings.log_format!r}")
        return settings


class _EnvReader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str) -> str:
        return self.env.get(name, "").strip()

    def url(self, name: str, default: str) -> str:
        value = self.text(name) or default
        if not value.startswith(("http://", "https://")):
            raise ConfigError(f"{name} must be an http(s) URL, got {value[:80]!r}")
        return value

    def schedule(self, name: str, default: str) -> str:
        value = self.text(name) or default
        parse_schedule(value)  # validated at start-up
        return value

    def secret(self, name: str, *, min_bytes: int) -> str | None:
        value = self.env.get(name, "")
        if not value:
            return None
        if len(value.encode()) < min_bytes:
            raise ConfigError(f"{name} must be at least {min_bytes} bytes (HS256 needs a key as long as its hash); "
                              "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'")
        return value

    def recipients(self, name: str) -> str:
        value = self.text(name)
        try:
            parse_recipients(value)  # validated at start-up; parsed again where it is used
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return value

    def emails(self, name: str) -> str:
        """Comma-separated e-mail addresses (service accounts), normalised to `a,b` without blanks."""
        addresses = [part.strip() for part in self.text(name).split(",") if part.strip()]
        for address in addresses:
            if not re.fullmatch(r"[^@\s,]+@[^@\s,]+\.[^@\s,]+", address):
                raise ConfigError(f"{name} must be comma-separated e-mail addresses, got {address[:80]!r}")
        return ",".join(addresses)

    def optional_url(self, name: str) -> str:
        value = self.text(name)
        if value and not value.startswith(("http://", "https://")):
            raise ConfigError(f"{name} must be an http(s) URL")  # the value may hold a token: not echoed
        return value

    def host_url(self, name: str) -> str:
        """`host:port` or `http(s)://host:port` (the form client libraries accept for an emulator's address)."""
        value = self.text(name).rstrip("/")
        if value and not value.startswith(("http://", "https://")):
            value = "http://" + value
        if value and not re.fullmatch(r"https?://[\w.\-\[\]:]+", value):
            raise ConfigError(f"{name} must be host:port or http://host:port, got {value[:80]!r}")
        return value

    def aliases(self, name: str) -> str:
        value = self.text(name)
        parse_field_aliases(value)  # validated at start-up
        return value

    def formats(self, name: str) -> str:
        value = self.text(name)
        parse_field_formats(value)  # validated at start-up
        return value

    def rate(self, name: str, default: str) -> str:
        value = self.text(name) or default
        parse_rate(value, name)  # validated at start-up; parsed again where it is used
        return value

    def number(self, name: str, default, kind, *, minimum):
        raw = self.text(name)
        if not raw:
            return default
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a {kind.__name__}, got {raw!r}") from None
        if value < minimum:
            raise ConfigError(f"{name} must be >= {minimum}, got {raw!r}")
        return value


def resolve_path(setting: str, value: str, default: str, deployed_as: str, *, needed: bool, remote_ok: bool) -> str:
    """A file setting: a path (or, where `remote_ok`, a gs:// / http(s):// location, kept as given).

    Locally, a relative path (and the default) means relative to the directory the process runs in, as for any
    command-line tool: `make run` and the functions it starts run in the checkout. Deployed (K_SERVICE set), that is
    the function's own source folder — read-only, per instance, and not what anyone means by ./data — so nothing
    defaults there: a relative path is refused, an unset one is refused when it is `needed` (the SQLite store
    without MONGODB_URI), else left empty (the stage that needs it says so)."""
    remote = value.startswith(("gs://", "http://", "https://"))
    if remote and remote_ok:
        return value
    if remote:
        raise ConfigError(f"{setting} must be a local path")
    if deployed_as:
        if value and not os.path.isabs(value):
            where = "an absolute path or a gs:// / https:// location" if remote_ok else "an absolute path"
            raise ConfigError(f"{setting} must be {where} when deployed (K_SERVICE={deployed_as}): a relative path "
                              "would point into the function's own folder")
        if not value and needed:
            raise ConfigError(f"deployed (K_SERVICE={deployed_as}) without a store: set MONGODB_URI (e.g. MongoDB "
                              f"Atlas); {setting} defaults to {default}, which would be a SQLite file inside the "
                              "function's own folder, on one instance only")
        return value
    return value or default


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smh])\s*$")
_UNITS_MS = {"s": 1000, "m": 60_000, "h": 3_600_000}


@dataclass(frozen=True)
class RateSpec:
    limit: int
    interval_ms: int

    def __str__(self) -> str:
        return f"{self.limit}/{self.interval_ms / 1000:g}s"


def parse_rate(text: str, setting: str = "rate") -> RateSpec:
    """`N/<duration>` such as `10/1m`, `3/1m`, `5/2s`, `100/1h`; anything else is a ConfigError."""
    match = _RATE.match(text or "")
    if not match or int(match.group(1)) < 1 or match.group(2) == "0":
        raise ConfigError(f"{setting} must look like 10/1m, 3/1m or 5/2s (N/<count><s|m|h>), got {text!r}")
    return RateSpec(int(match.group(1)), _UNITS_MS[match.group(3)] * int(match.group(2) or 1))


def _per_source_json(text: str, setting: str, example: str, valid, shape: str) -> dict:
    """A setting holding JSON `{"source": {"canonical_field": <value>}}`; `valid(value)` checks each leaf."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{setting} must be JSON such as {example}: {exc}") from None
    if not isinstance(value, dict) or not all(
        isinstance(fields, dict) and all(valid(leaf) for leaf in fields.values()) for fields in value.values()
    ):
        raise ConfigError(f"{setting} must map source -> canonical field -> {shape}")
    return value


def parse_field_aliases(text: str) -> dict[str, dict[str, list[str]]]:
    """`FIELD_ALIASES` JSON: {"source_b": {"price_usd": ["Closing Price"]}} (validated at start-up)."""
    return _per_source_json(text, "FIELD_ALIASES", '{"source_b": {"price_usd": ["Closing"]}}',
                            lambda names: isinstance(names, list) and all(isinstance(n, str) for n in names),
                            "list of names")


def parse_field_formats(text: str) -> dict[str, dict[str, str]]:
    """`FIELD_FORMATS` JSON: {"source_b": {"observed_at": "%d-%m-%y %H:%M"}} (validated at start-up)."""
    value = _per_source_json(text, "FIELD_FORMATS", '{"source_b": {"observed_at": "%d-%m-%y %H:%M"}}',
                             lambda fmt: isinstance(fmt, str) and bool(fmt), "format string")
    for source, fields in value.items():
        for name, fmt in fields.items():
            if not (re.search("%[Yy]", fmt) and re.search("%[mbB]", fmt) and "%d" in fmt):
                raise ConfigError(f"FIELD_FORMATS {source}.{name}: {fmt!r} is not a full date: it needs a year "
                                  "(%Y or %y), a month (%m, %b or %B) and a day (%d), e.g. \"%d-%m-%y %H:%M\"")
    return value


def parse_recipients(text: str) -> list[str]:
    """ALERT_EMAIL_TO: comma-separated e-mail addresses."""
    recipients = [part.strip() for part in text.split(",") if part.strip()]
    bad = [r for r in recipients if "@" not in r or any(c.isspace() for c in r)]
    if bad:
        raise ValueError(f"ALERT_EMAIL_TO must be comma-separated e-mail addresses, got {bad[0]!r}")
    return recipients
