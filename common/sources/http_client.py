"""Fetch one page of an `http_json` source: shared rate limit, retries with backoff, 429 + Retry-After.

Retryable (tenacity, exponential backoff with jitter, bounded attempts): connection errors, timeouts, 5xx,
bodies that are not JSON, cut short or not a list of records, and 429 (which waits Retry-After, capped at
max_server_wait_s, and halves the source's rate for every process). Other 4xx fail fast, and so do a host name that
does not resolve and a TLS failure: retrying either for a minute only delays the rest of the pass. A failure that came with
a body carries it, for the quarantine. Redirects are followed here so that credentials never leave the source's
origin. Every wait and retry is counted in the run summary.
"""

from __future__ import annotations

import json
import socket
from email.utils import parsedate_to_datetime
from typing import Callable
from urllib.parse import urljoin, urlsplit

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from common.clock import Clock, Deadline
from common.config import Settings
from common.errors import BudgetExhausted, RateLimited, SourceError, SourceUnavailable
from common.sources import SourceSpec
from common.sources.ratelimit import SourceLimiter, WindowFull

MAX_EVENTS = 200
MAX_REDIRECTS = 10
USER_AGENT = "crypto-etl/0.1"


def retry_after_seconds(value: str | None, clock: Clock, default: float) -> float:
    """Retry-After as delta-seconds or an HTTP date; `default` when absent or unreadable."""
    if not value:
        return default
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - clock())
    except (TypeError, ValueError):
        return default


class HttpStats:
    """What the fetcher did, for the run summary."""

    def __init__(self) -> None:
        self.requests = 0
        self.retries = 0
        self.statuses: dict[str, int] = {}
        self.waited_s = {"rate_limit": 0.0, "retry_after": 0.0, "backoff": 0.0}
        self.events: list[dict] = []
        self.capped_waits: list[dict] = []  # Retry-After values beyond the cap: what was asked, what was waited
        self.slots_recorded_again = 0  # rate-limit slots re-recorded because the store answered late

    def event(self, **fields) -> None:
        if len(self.events) < MAX_EVENTS:
            self.events.append(fields)

    def to_dict(self) -> dict:
        return {"requests": self.requests, "retries": self.retries, "statuses": self.statuses,
                "waited_s": {k: round(v, 3) for k, v in self.waited_s.items()}, "events": self.events,
                "capped_waits": self.capped_waits, "slots_recorded_again": self.slots_recorded_again}


class PageFetcher:
    """GETs pages of one source within one invocation's deadline."""

    def __init__(self, spec: SourceSpec, session: requests.Session, limiter: SourceLimiter, deadline: Deadline,
                 clock: Clock, sleep: Callable[[float], None], *,
                 max_server_wait_s: float = Settings.max_server_wait_s) -> None:
        assert spec.http is not None
        self.spec, self.http, self.session, self.limiter = spec, spec.http, session, limiter
        self.deadline, self.clock, self.sleep = deadline, clock, sleep
        self.max_server_wait_s = max_server_wait_s
        self.stats = HttpStats()

    def fetch(self, page: int | None) -> tuple[str, list]:
        """The page's body as received and its records; raises BudgetExhausted, SourceError (fatal) or
        SourceUnavailable (retries exhausted)."""
        retrying = Retrying(
            retry=retry_if_exception_type(SourceUnavailable),
            wait=self._wait,
            stop=stop_after_attempt(self.http.max_attempts) | self._past_deadline,
            sleep=self.sleep,
            before_sleep=lambda state: self._note_retry(state, page),
            reraise=True,
        )
        return retrying(self._attempt, page)

    # --- one attempt ------------------------------------------------------------------------------
    def _attempt(self, page: int | None) -> tuple[str, list]:
        self._take_slot()
        params = dict(self.http.params)
        if self.http.page_param:
            params[self.http.page_param] = str(page)
            params["per_page"] = str(self.http.per_page)
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if self.http.auth_header and self.http.api_key:
            headers[self.http.auth_header] = self.http.api_key
        timeout = max(0.1, min(self.http.timeout_s, self.deadline.remaining() - self.deadline.margin_s))
        self.stats.requests += 1
        try:
            response = self._get(params, headers, timeout, page)
        except requests.Timeout:
            raise SourceUnavailable(f"{self.spec.name}: timed out after {timeout:.0f}s", page=page) from None
        except requests.exceptions.SSLError as exc:
            raise SourceError(f"{self.spec.name}: TLS error: {exc}", page=page) from None
        except requests.ConnectionError as exc:
            unresolved = _resolver_failure(exc)
            if unresolved is not None:
                raise SourceError(f"{self.spec.name}: cannot resolve host {urlsplit(self.spec.location).hostname} "
                                  f"({unresolved}); not retried: check the source URL and the network",
                                  page=page) from None
            raise SourceUnavailable(f"{self.spec.name}: cannot connect: {_short(exc)}", page=page) from None
        except requests.RequestException as exc:
            raise SourceError(f"{self.spec.name}: request failed: {_short(exc)}", page=page) from None
        status = response.status_code
        self.stats.statuses[str(status)] = self.stats.statuses.get(str(status), 0) + 1
        if status == 429:
            spacing = self.limiter.rate.interval_ms / 1000 / self.limiter.rate.limit
            header = response.headers.get("Retry-After")
            wait = self._bounded(retry_after_seconds(header, self.clock, default=spacing), header, page)
            factor = self.limiter.penalize(wait)
            raise RateLimited(f"{self.spec.name}: 429 Too Many Requests (Retry-After {wait:.1f}s; rate now "
                              f"{factor:.0%} of {self.limiter.rate})", retry_after_s=wait, page=page)
        if status >= 500:
            raise ServerError(f"{self.spec.name}: HTTP {status}", body=response.text, page=page, status=status)
        if status in (401, 403):
            raise SourceError(f"{self.spec.name}: {status} — check {self.http.key_setting}", page=page, status=status)
        if status >= 400:
            raise SourceError(f"{self.spec.name}: HTTP {status} from {self.spec.location}: {response.text[:200]}",
                              page=page, status=status)
        return self._records(response.text, page)

    def _get(self, params: dict, headers: dict, timeout: float, page: int | None) -> requests.Response:
        """GET the source, following redirects here rather than in requests: requests keeps every header but
        `Authorization` on a redirect to another host, and the source's key must never leave its origin. A hop that
        leaves the origin (other host, port or scheme, as `should_strip_auth` judges) drops the credentials for the
        rest of the chain; a hop that stays on the origin is one more request to the source, so it takes a slot."""
        url, credentials = self.spec.location, {"authorization", (self.http.auth_header or "authorization").lower()}
        for hop in range(MAX_REDIRECTS + 1):
            if hop and _origin(url) == _origin(self.spec.location):
                self._take_slot()
            response = self.session.get(url, params=params, headers=headers, timeout=timeout, allow_redirects=False)
            target = self.session.get_redirect_target(response)
            if target is None:
                return response
            response.close()
            following = urljoin(response.url, target)
            if self.session.should_strip_auth(response.url, following):
                headers = {name: value for name, value in headers.items() if name.lower() not in credentials}
            self.stats.event(page=page, redirect=f"{response.status_code} to {_origin(following)}",
                             credentials_sent=any(name.lower() in credentials for name in headers))
            url, params = following, None  # the Location carries its own query
        raise SourceError(f"{self.spec.name}: more than {MAX_REDIRECTS} redirects from {self.spec.location}",
                          page=page)

    def _bounded(self, requested_s: float, header: str | None, page: int | None) -> float:
        """A server-requested wait, capped at max_server_wait_s (the cap and the request are both reported)."""
        if requested_s <= self.max_server_wait_s:
            return requested_s
        if len(self.stats.capped_waits) < MAX_EVENTS:
            self.stats.capped_waits.append({"page": page, "requested_s": round(requested_s, 3),
                                            "waited_s": self.max_server_wait_s, "retry_after": header})
        return self.max_server_wait_s

    def _take_slot(self) -> None:
        try:
            self.stats.waited_s["rate_limit"] += self.limiter.acquire(self.deadline)
        except WindowFull as full:
            raise BudgetExhausted(f"{self.spec.name}: {full}") from None
        finally:
            self.stats.slots_recorded_again = self.limiter.bucket.stalled_rounds

    def _records(self, body: str, page: int | None) -> tuple[str, list]:
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise MalformedBody(f"{self.spec.name}: response is not valid JSON ({exc})", body=body, page=page) from None
        records = document
        for key in self.http.record_path:
            records = records.get(key) if isinstance(records, dict) else None
        if not isinstance(records, list):
            raise MalformedBody(f"{self.spec.name}: expected a JSON array of records, got {type(records).__name__}",
                                body=body, page=page)
        return body, records

    # --- tenacity hooks -----------------------------------------------------------------------------
    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, RateLimited):
            return error.retry_after_s
        return wait_random_exponential(multiplier=0.5, max=30)(state)

    def _past_deadline(self, state: RetryCallState) -> bool:
        if state.upcoming_sleep > self.deadline.remaining() - self.deadline.margin_s:
            raise BudgetExhausted(f"{self.spec.name}: the next retry (in {state.upcoming_sleep:.1f}s) is past the "
                                  f"invocation deadline; resuming next invocation")
        return False

    def _note_retry(self, state: RetryCallState, page: int | None) -> None:
        error = state.outcome.exception()
        kind = "retry_after" if isinstance(error, RateLimited) else "backoff"
        self.stats.retries += 1
        self.stats.waited_s[kind] += state.upcoming_sleep
        self.stats.event(page=page, attempt=state.attempt_number, error=str(error), wait_s=round(state.upcoming_sleep, 3))


class FailedPage(SourceUnavailable):
    """A retryable failure that came with a body: kept for the quarantine should the page fail every retry."""

    def __init__(self, message: str, body: str, **context: object) -> None:
        super().__init__(message, **context)
        self.body = body


class MalformedBody(FailedPage):
    """A 2xx whose body is not JSON, was cut short, or is not a list of records."""


class ServerError(FailedPage):
    """A 5xx."""


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or {'http': 80, 'https': 443}.get(parts.scheme)}"


def _resolver_failure(exc: BaseException) -> str | None:
    """The resolver's words when a connection error was caused by a name lookup (socket.gaierror, urllib3's
    NameResolutionError), found anywhere in the chain requests and urllib3 wrap it in; None otherwise."""
    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending:
        error = pending.pop()
        if not isinstance(error, BaseException) or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, socket.gaierror):
            return error.strerror or str(error)
        if type(error).__name__ == "NameResolutionError":  # urllib3 >= 2; its cause is the gaierror
            cause = error.__cause__ or error.__context__
            return (_resolver_failure(cause) if cause is not None else None) or "name resolution failed"
        pending += [*error.args, getattr(error, "reason", None), error.__cause__, error.__context__]
    return None


def _short(exc: Exception) -> str:
    return str(exc).split(": ", 1)[-1][:200]
