"""Bearer tokens for POST /refresh: our own HS256 JWTs, and Google-signed OIDC ID tokens (Cloud Scheduler's).

The header's `alg` only chooses which verifier runs; each one pins its algorithm and its keys, so `alg: none` and
RS256-public-key-as-HMAC-secret tokens (algorithm confusion) never verify:
- HS256: JWT_SECRET, `exp` required, audience and issuer checked when configured; `mint_token` is `etl token`.
- RS256: only when REFRESH_OIDC_AUDIENCE is set (otherwise refused before any network call), against the keys
  Google publishes (REFRESH_OIDC_JWKS_URL, fetched with a short timeout and cached), `iss` Google's, `aud` ours,
  `exp` required, and `email` one of REFRESH_OIDC_EMAILS with `email_verified` true: any Google account can get a
  Google-signed token for any audience, so the e-mail is what says who is calling. Keys unreachable: 503, not 401.
A token naming any critical header extension is refused because this service implements none. What the caller is
told comes from a fixed table, never from the token or the library's message (a header value must not reach the
WWW-Authenticate line), and the secret is never logged nor shown.
"""

from __future__ import annotations

import re
import threading
import uuid

import jwt

from common.config import Settings
from common.errors import ConfigError, InputError, KeysUnavailable, RefreshDisabled, Unauthorized

ALGORITHM = "HS256"
OIDC_ALGORITHM = "RS256"
GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
JWKS_CACHE_S = 600.0
REALM = "etl-api"
_BEARER = re.compile(r"Bearer +([A-Za-z0-9\-._~+/]+=*) *", re.IGNORECASE)  # RFC 6750 §2.1 b64token

_REASONS: tuple[tuple[type[Exception], str], ...] = (  # most specific first
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
    (jwt.InvalidAlgorithmError, f"only {ALGORITHM} (ours) and {OIDC_ALGORITHM} (Google's) tokens are accepted"),
    (jwt.InvalidAudienceError, "the token is not meant for this service (aud)"),
    (jwt.InvalidIssuerError, "the token comes from an issuer this service does not trust (iss)"),
    (jwt.DecodeError, "the token is malformed"),
)


def challenge(error: Unauthorized) -> str:
    """The WWW-Authenticate value: built from fixed text only (the message never carries token content)."""
    if not error.error:
        return f'Bearer realm="{REALM}"'
    return f'Bearer realm="{REALM}", error="{error.error}", error_description="{error.message}"'


class GoogleKeys:
    """Google's published signing keys, fetched on first need and cached (a PyJWKClient per JWKS URL and timeout).

    The JWK set is cached for JWKS_CACHE_S; an unknown key id refetches it at most once per 30 s (the client's
    cooldown), so a stream of forged key ids cannot turn into a stream of fetches. Keys are not cached beyond the
    set's lifetime: a key Google withdrew stops verifying within JWKS_CACHE_S."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, float], jwt.PyJWKClient] = {}
        self._lock = threading.Lock()

    def key_for(self, kid: object, settings: Settings):
        """The public key published under `kid`; `Unauthorized` when there is none, `KeysUnavailable` when the set
        cannot be had."""
        client = self._client(settings)
        try:
            client.get_signing_keys()  # the cached set, or one fetch: any failure here is the keys', not the token's
        except (jwt.PyJWKClientError, jwt.PyJWKSetError, ValueError, OSError):
            raise KeysUnavailable("Google's signing keys cannot be fetched right now; retry later") from None
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("the token names no signing key (kid)")
        try:
            jwk = client.get_signing_key(kid)
        except jwt.PyJWKClientConnectionError:
            raise KeysUnavailable("Google's signing keys cannot be fetched right now; retry later") from None
        except jwt.PyJWKClientError:
            raise Unauthorized("the token is not signed by a key Google publishes") from None
        except (jwt.PyJWKSetError, ValueError, OSError):
            raise KeysUnavailable("Google's signing keys cannot be fetched right now; retry later") from None
        if jwk.key_type != "RSA":
            raise Unauthorized("the token is not signed by a key Google publishes")
        return jwk.key

    def _client(self, settings: Settings) -> jwt.PyJWKClient:
        where = (settings.refresh_oidc_jwks_url, settings.refresh_oidc_jwks_timeout_s)
        with self._lock:
            if where not in self._clients:
                self._clients[where] = jwt.PyJWKClient(where[0], cache_jwk_set=True, lifespan=JWKS_CACHE_S,
                                                       timeout=where[1])
            return self._clients[where]


def require_secret(settings: Settings) -> bytes:
    if not settings.jwt_secret:
        raise RefreshDisabled("refresh disabled: no JWT_SECRET is configured on this service")
    return settings.jwt_secret.encode()


def verify_bearer(authorization: str | None, settings: Settings, keys: GoogleKeys | None = None) -> dict:
    """The verified claims of the request's bearer token; raises `Unauthorized`, `RefreshDisabled` (neither a
    JWT_SECRET nor OIDC configured) or `KeysUnavailable` (Google's keys cannot be fetched)."""
    oidc = bool(settings.refresh_oidc_audience and settings.refresh_oidc_emails)
    if not oidc:
        require_secret(settings)
    if not authorization or not authorization.strip().lower().startswith("bearer"):
        raise Unauthorized("send Authorization: Bearer <token> (mint one with `etl token`)", error=None)
    match = _BEARER.fullmatch(authorization.strip())
    if not match:
        raise Unauthorized("the Authorization header is not 'Bearer <token>'")
    token = match.group(1)
    try:
        header = jwt.get_unverified_header(token)
        if "crit" in header:
            raise Unauthorized("the token names critical header extensions; this service supports none")
        if header.get("alg") == OIDC_ALGORITHM:
            if not oidc:
                raise Unauthorized("Google identity tokens are not accepted by this service")
            return _verify_google(token, header, settings, keys or GoogleKeys())
        if not settings.jwt_secret:
            raise Unauthorized(f"only Google identity tokens ({OIDC_ALGORITHM}) are accepted by this service")
        return jwt.decode(token, settings.jwt_secret.encode(), algorithms=[ALGORITHM], options={"require": ["exp"]},
                          audience=settings.jwt_audience or None, issuer=settings.jwt_issuer or None)
    except jwt.MissingRequiredClaimError as exc:
        claim = exc.claim if exc.claim in ("exp", "aud", "iss", "email") else "a required"
        raise Unauthorized(f"the token has no {claim} claim") from None
    except jwt.PyJWTError as exc:
        reason = next((text for kind, text in _REASONS if isinstance(exc, kind)), "the token is invalid")
        raise Unauthorized(reason) from None


def _verify_google(token: str, header: dict, settings: Settings, keys: GoogleKeys) -> dict:
    """A Google ID token for our audience, from one of the allowed service accounts (see the module doc)."""
    key = keys.key_for(header.get("kid"), settings)
    claims = jwt.decode(token, key, algorithms=[OIDC_ALGORITHM], audience=settings.refresh_oidc_audience,
                        issuer=GOOGLE_ISSUERS, options={"require": ["exp", "iss", "aud", "email"]})
    if claims.get("email") not in settings.refresh_oidc_emails.split(","):
        raise Unauthorized("the token's account may not refresh (REFRESH_OIDC_EMAILS)")
    if claims.get("email_verified") is not True:
        raise Unauthorized("the token's e-mail is not verified")
    return {**claims, "sub": claims["email"]}


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
