"""The product's one error tree: each class says whether retrying can help and which HTTP status it maps to.

    EtlError                      base; .retryable, .http_status, .context
    ├── ConfigError               bad or missing environment settings (500, fatal)
    ├── InputError                a caller sent something invalid (400, fatal)
    ├── Unauthorized              no usable bearer token (401, fatal; .error is the RFC 6750 code)
    ├── RefreshDisabled           POST /refresh without a JWT_SECRET configured (503, fatal)
    ├── KeysUnavailable           Google's signing keys for an OIDC token cannot be fetched (503, retryable)
    ├── NotFound                  the thing asked for does not exist, e.g. a run id (404, fatal)
    ├── MethodNotAllowed          wrong HTTP method for an endpoint (405, fatal)
    ├── LeaseLost                 our stage lease expired and was taken over (409, stop: the new owner goes on)
    ├── BudgetExhausted           the invocation deadline is near: checkpoint and return `partial` (200)
    ├── SourceError               a source could not be read (502, fatal unless subclass says so)
    │   └── SourceUnavailable     transient: connection errors, timeouts, 5xx, broken bodies (503, retryable)
    │       └── RateLimited       the source answered 429; carries Retry-After (429, retryable)
    └── StoreError                the store failed (503, retryable)
"""

from __future__ import annotations


class EtlError(Exception):
    """Base of every error the product raises on purpose."""

    retryable = False
    http_status = 500
    code = "internal_error"

    def __init__(self, message: str, **context: object) -> None:
        super().__init__(message)
        self.message = message
        self.context = {k: v for k, v in context.items() if v is not None}

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, **({"context": self.context} if self.context else {})}


class ConfigError(EtlError):
    """A setting in the environment is missing or invalid."""

    code = "config_error"


class InputError(EtlError):
    """The caller sent an invalid request or parameter."""

    http_status = 400
    code = "invalid_input"


class Unauthorized(EtlError):
    """No usable bearer token; `error` is the RFC 6750 error code, None when no token was sent at all."""

    http_status = 401
    code = "unauthorized"

    def __init__(self, message: str, error: str | None = "invalid_token") -> None:
        super().__init__(message)
        self.error = error
        if error:
            self.code = error


class NotFound(EtlError):
    """The caller asked for something that does not exist (a run id, say)."""

    http_status = 404
    code = "not_found"


class RefreshDisabled(EtlError):
    """JWT_SECRET is not set: nobody can be authenticated, so refresh is off, never a default secret."""

    http_status = 503
    code = "refresh_disabled"


class KeysUnavailable(EtlError):
    """Google's signing keys could not be fetched: the token may be good, so this is not a 401 (503, retryable)."""

    retryable = True
    http_status = 503
    code = "keys_unavailable"


class MethodNotAllowed(EtlError):
    """The endpoint does not accept this HTTP method (stage functions only take POST)."""

    http_status = 405
    code = "method_not_allowed"


class LeaseLost(EtlError):
    """Our lease expired and another invocation took the stage over."""

    http_status = 409
    code = "lease_lost"


class BudgetExhausted(EtlError):
    """Not enough of the invocation's time budget is left to go on; the next invocation resumes."""

    http_status = 200
    code = "budget_exhausted"


class SourceError(EtlError):
    """A source could not be read or returned unusable data."""

    http_status = 502
    code = "source_error"


class SourceUnavailable(SourceError):
    """A transient source failure that a later attempt may not hit."""

    retryable = True
    http_status = 503
    code = "source_unavailable"


class RateLimited(SourceUnavailable):
    """The source refused with 429; `retry_after_s` says when it will take requests again."""

    http_status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: float, **context: object) -> None:
        super().__init__(message, **context)
        self.retry_after_s = retry_after_s


class StoreError(EtlError):
    """The state store failed; the operation can be retried."""

    retryable = True
    http_status = 503
    code = "store_unavailable"
