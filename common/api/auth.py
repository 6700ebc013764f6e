"""Bearer tokens for POST /refresh: HS256 JWTs only, `exp` required, audience and issuer checked when configured.

The algorithm is pinned (never read from the token: that is how `alg: none` and RS256-public-key-as-HMAC-secret
tokens get in), and a token naming any critical header extension is refused because this service implements none.
What the caller is told comes from a fixed table, never from the token or the library's message (a header value
must not reach the WWW-Authenticate line), and the secret is never logged nor shown. `mint_token` is `etl token`.
"""

from __future__ import annotations

import re
import uuid

import jwt

from common.config import Settings
from common.errors import ConfigError, InputError, RefreshDisabled, Unauthorized

ALGORITHM = "HS256"
REALM = "etl-api"
_BEARER = re.compile(r"Bearer +([A-Za-z0-9\-._~+/]+=*) *", re.IGNORECASE)  # RFC 6750 §2.1 b64token

_REASONS: tuple[tuple[type[Exception], str], ...] = (  # most specific first
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
    (jwt.InvalidAlgorithmError, f"only {ALGORITHM} tokens are accepted"),
    (jwt.InvalidAudienceError, "the token is not meant for this service (aud)"),
    (jwt.InvalidIssuerError, "the token comes from an issuer this service does not trust (iss)"),
    (jwt.DecodeError, "the token is malformed"),
)


def challenge(error: Unauthorized) -> str:
    """The WWW-Authenticate value: built from fixed text only (the message never carries token content)."""
    if not error.error:
        return f'Bearer realm="{REALM}"'
    return f'Bearer realm="{REALM}", error="{error.error}", error_description="{error.message}"'


def require_secret(settings: Settings) -> bytes:
    if not settings.jwt_secret:
        raise RefreshDisabled("refresh disabled: no JWT_SECRET is configured on this service")
    return settings.jwt_secret.encode()


def verify_bearer(authorization: str | None, settings: Settings) -> dict:
    """The verified claims of the request's bearer token; raises `Unauthorized` (or `RefreshDisabled`)."""
    key = require_secret(settings)
    if not authorization or not authorization.strip().lower().startswith("bearer"):
        raise Unauthorized("send Authorization: Bearer <token> (mint one with `etl token`)", error=None)
    match = _BEARER.fullmatch(authorization.strip())
    if not match:
        raise Unauthorized("the Authorization header is not 'Bearer <token>'")
    token = match.group(1)
    try:
        if "crit" in jwt.get_unverified_header(token):
            raise Unauthorized("the token names critical header extensions; this service supports none")
        return jwt.decode(token, key, algorithms=[ALGORITHM], options={"require": ["exp"]},
                          audience=settings.jwt_audience or None, issuer=settings.jwt_issuer or None)
    except jwt.MissingRequiredClaimError as exc:
        claim = exc.claim if exc.claim in ("exp", "aud", "iss") else "a required"
        raise Unauthorized(f"the token has no {claim} claim") from None
    except jwt.PyJWTError as exc:
        reason = next((text for kind, text in _REASONS if isinstance(exc, kind)), "the token is invalid")
        raise Unauthorized(reason) from None


def mint_token(settings: Settings, ttl_s: int, subject: str, now: float) -> str:
    """An HS256 token valid for `ttl_s` seconds from `now`, with aud/iss when this service checks them."""
    if not settings.jwt_secret:
        raise ConfigError("JWT_SECRET is not set: no token can be minted (and POST /refresh is disabled)")
    if ttl_s <= 0:
        raise InputError(f"--ttl must be a positive number of seconds, got {ttl_s}")
    claims = {"sub": subject, "iat": int(now), "exp": int(now) + int(ttl_s), "jti": uuid.uuid4().hex}
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, settings.jwt_secret.encode(), algorithm=ALGORITHM)
