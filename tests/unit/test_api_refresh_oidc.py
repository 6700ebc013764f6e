"""POST /refresh from Cloud Scheduler: a Google-signed OIDC identity token (RS256), verified against Google's JWKS
only — here a JWKS served by a stdlib HTTP server on 127.0.0.1 for an RSA key made in the test. The attack matrix
(alg none, HS256 signed with the RSA public key, unknown key id, wrong audience / issuer / e-mail, expired, OIDC not
configured) is a 401 with a Bearer challenge and no pass; an unreachable JWKS is a 503; 429 and 409 still apply."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from common.clock import iso_utc
from common.config import Settings
from common.errors import ConfigError
from common.store import Run
from tests.conftest import SleepingClock, csv_lines, write_csv
from tests.e2e.emulator_fixture import source_emulator  # noqa: F401 (fixture)
from tests.unit.test_api_refresh import made  # noqa: F401 (fixture: a client and wiring per overrides)

SECRET = "s3cret-for-tests-only-0123456789-abcdef-" + "k" * 24
AUDIENCE = "https://europe-west1-my-proj.cloudfunctions.net/http_api"
SCHEDULER = "etl-scheduler@my-proj.iam.gserviceaccount.com"
KID = "test-key-1"


@pytest.fixture(scope="module")
def keys():
    """The key Google signs with (published in the JWKS) and another one nobody published."""
    return {name: rsa.generate_private_key(public_exponent=65537, key_size=2048) for name in ("google", "other")}


class Jwks:
    """A JWKS endpoint on 127.0.0.1: `mode` is ok | error (HTTP 500) | garbage (not JSON); `hits` counts fetches."""

    def __init__(self, public_key) -> None:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public_key))
        self.body = json.dumps({"keys": [{**jwk, "kid": KID, "alg": "RS256", "use": "sig"}]}).encode()
        self.mode, self.hits = "ok", 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                owner.hits += 1
                body, status = {"ok": (owner.body, 200), "error": (b"{}", 500),
                                "garbage": (b"<html>not json", 200)}[owner.mode]
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/oauth2/v3/certs"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks(keys):
    server = Jwks(keys["google"].public_key())
    yield server
    server.close()


@pytest.fixture
def env(tmp_path, source_emulator, jwks):
    emulator = source_emulator(snapshot_every=0, coins=5)
    write_csv(tmp_path / "Historical_Data.csv", csv_lines(coins=2, days=5))
    return Settings(sqlite_path=str(tmp_path / "etl.sqlite3"), source_b_path=str(tmp_path / "Historical_Data.csv"),
                    source_a_url=f"{emulator.url}/v1/tickers", source_c_url=f"{emulator.url}/api/v3/coins/markets",
                    source_a_rate="1000/1s", source_c_rate="1000/1s", source_c_per_page=10, source_c_max_pages=1,
                    lease_ttl_s=5, jwt_secret=SECRET, refresh_min_s=60, refresh_oidc_audience=AUDIENCE,
                    refresh_oidc_emails=f"someone@example.com,{SCHEDULER}", refresh_oidc_jwks_url=jwks.url)


def google_token(key, kid: str | None = KID, algorithm: str = "RS256", **claims) -> str:
    """What Cloud Scheduler sends: an ID token Google signed for the job's service account and audience."""
    now = int(time.time())
    base = {"iss": "https://accounts.google.com", "aud": AUDIENCE, "email": SCHEDULER, "email_verified": True,
            "sub": "1234567890", "azp": "1234567890", "iat": now, "exp": now + 3600}
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, key, algorithm=algorithm,
                      headers={"kid": kid} if kid else None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_signed_with_public_key(public_key) -> str:
    """The algorithm-confusion attack: HS256 over the claims, the published RSA public key (PEM) as HMAC secret."""
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    now = int(time.time())
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": KID}).encode())
    body = _b64(json.dumps({"iss": "https://accounts.google.com", "aud": AUDIENCE, "email": SCHEDULER,
                            "email_verified": True, "exp": now + 600}).encode())
    signature = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(signature)}"


def alg_none() -> str:
    now = int(time.time())
    head = _b64(json.dumps({"alg": "none", "kid": KID}).encode())
    body = _b64(json.dumps({"iss": "https://accounts.google.com", "aud": AUDIENCE, "email": SCHEDULER,
                            "email_verified": True, "exp": now + 600}).encode())
    return f"{head}.{body}."


def post(client, bearer: str):
    return client.post("/refresh", headers={"Authorization": f"Bearer {bearer}"})


def assert_401(response, wiring) -> None:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert response.get_json()["error"]["code"] == "invalid_token"
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="etl-api"')
    assert wiring.store.list_runs(stage="pipeline") == []


# --- accepted ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("issuer", ["https://accounts.google.com", "accounts.google.com"])
def test_a_scheduler_identity_token_runs_one_pass_even_without_a_jwt_secret(made, keys, jwks, issuer):
    client, wiring = made(jwt_secret=None)
    response = post(client, google_token(keys["google"], iss=issuer))
    assert response.status_code == 200, response.get_data(as_text=True)
    run = response.get_json()["pass"]
    assert run["stage"] == "pipeline" and run["status"] == "succeeded"
    assert [r.run_id for r in wiring.store.list_runs(stage="pipeline")] == [run["run_id"]]
    assert jwks.hits == 1


def test_the_jwks_is_cached_between_requests_and_hs256_tokens_still_work(made, keys, jwks):
    client, _ = made(refresh_min_s=0)
    for _ in range(2):
        assert post(client, google_token(keys["google"])).status_code == 200
    assert jwks.hits == 1
    hs256 = jwt.encode({"sub": "ops", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    assert post(client, hs256).status_code == 200
    assert jwks.hits == 1


# --- refused: 401 with a Bearer challenge, nothing runs ----------------------------------------------------------
ATTACKS = {
    "alg none": lambda k: alg_none(),
    "HS256 signed with the RSA public key": lambda k: hs256_signed_with_public_key(k["google"].public_key()),
    "RS256 from an unknown key id": lambda k: google_token(k["other"], kid="unknown-key"),
    "RS256 from another key under the known kid": lambda k: google_token(k["other"]),
    "RS256 without a kid": lambda k: google_token(k["google"], kid=None),
    "RS512 with the right key": lambda k: google_token(k["google"], algorithm="RS512"),
    "PS256 with the right key": lambda k: google_token(k["google"], algorithm="PS256"),
    "wrong audience": lambda k: google_token(k["google"], aud="https://elsewhere.example/api"),
    "no audience": lambda k: google_token(k["google"], aud=None),
    "wrong issuer": lambda k: google_token(k["google"], iss="https://evil.example"),
    "no issuer": lambda k: google_token(k["google"], iss=None),
    "an e-mail not allowed": lambda k: google_token(k["google"], email="intruder@my-proj.iam.gserviceaccount.com"),
    "no e-mail": lambda k: google_token(k["google"], email=None),
    "e-mail not verified": lambda k: google_token(k["google"], email_verified=False),
    "e-mail verified as a string": lambda k: google_token(k["google"], email_verified="false"),
    "expired": lambda k: google_token(k["google"], exp=int(time.time()) - 60),
    "without exp": lambda k: google_token(k["google"], exp=None),
    "critical header": lambda k: jwt.encode({"exp": int(time.time()) + 60}, k["google"], algorithm="RS256",
                                            headers={"kid": KID, "crit": ["x"], "x": 1}),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_forged_or_misaddressed_identity_token_is_a_401(made, keys, name):
    client, wiring = made()
    assert_401(post(client, ATTACKS[name](keys)), wiring)


def test_without_oidc_configured_an_rs256_token_is_a_401_and_nothing_is_fetched(made, keys, jwks):
    client, wiring = made(refresh_oidc_audience="", refresh_oidc_emails="")
    assert_401(post(client, google_token(keys["google"])), wiring)
    assert jwks.hits == 0


def test_oidc_alone_refuses_hs256_tokens(made, keys):
    client, wiring = made(jwt_secret=None)
    assert_401(post(client, jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256")), wiring)


# --- the JWKS cannot be had: 503 -----------------------------------------------------------------------------------
def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/certs"


@pytest.mark.parametrize("mode", ["refused", "silent", "error", "garbage"])
def test_an_unreachable_jwks_is_a_503_not_a_401_nor_a_500(made, keys, jwks, mode):
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections (backlog) and never answers
    if mode == "refused":
        client, wiring = made(refresh_oidc_jwks_url=_closed_port_url())
    elif mode == "silent":
        client, wiring = made(refresh_oidc_jwks_url=f"http://127.0.0.1:{silent.getsockname()[1]}/certs",
                              refresh_oidc_jwks_timeout_s=0.2)
    else:
        jwks.mode = mode
        client, wiring = made()
    response = post(client, google_token(keys["google"]))
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert response.get_json()["error"]["code"] == "keys_unavailable"
    assert wiring.store.list_runs(stage="pipeline") == []
    silent.close()


# --- the refresh rules apply to the scheduler too ------------------------------------------------------------------
def test_scheduler_calls_meet_the_429_and_409_rules(made, keys):
    clock = SleepingClock()
    client, wiring = made(clock=clock)
    assert post(client, google_token(keys["google"])).status_code == 200
    clock.advance(10)
    response = post(client, google_token(keys["google"]))
    assert response.status_code == 429 and int(response.headers["Retry-After"]) == 50
    clock.advance(60)
    running = Run(run_id="pass-elsewhere", stage="pipeline", source=None, started_at=iso_utc(clock()))
    wiring.store.acquire_lease("pipeline", running.run_id, 30, clock())
    wiring.store.save_run(running)
    response = post(client, google_token(keys["google"]))
    assert response.status_code == 409 and response.get_json()["pass_id"] == "pass-elsewhere"


# --- settings ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env, message", [
    ({"REFRESH_OIDC_AUDIENCE": AUDIENCE}, "REFRESH_OIDC_EMAILS"),
    ({"REFRESH_OIDC_EMAILS": SCHEDULER}, "REFRESH_OIDC_AUDIENCE"),
    ({"REFRESH_OIDC_AUDIENCE": AUDIENCE, "REFRESH_OIDC_EMAILS": "not-an-address"}, "REFRESH_OIDC_EMAILS"),
    ({"REFRESH_OIDC_JWKS_URL": "file:///etc/passwd"}, "REFRESH_OIDC_JWKS_URL"),
])
def test_oidc_settings_are_validated(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_oidc_settings_are_read_with_googles_jwks_by_default():
    settings = Settings.from_env({"REFRESH_OIDC_AUDIENCE": AUDIENCE,
                                  "REFRESH_OIDC_EMAILS": f" {SCHEDULER} , ops@example.com "})
    assert settings.refresh_oidc_audience == AUDIENCE
    assert settings.refresh_oidc_emails == f"{SCHEDULER},ops@example.com"
    assert settings.refresh_oidc_jwks_url == "https://www.googleapis.com/oauth2/v3/certs"
