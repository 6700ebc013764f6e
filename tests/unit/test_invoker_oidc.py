"""The HTTP stage invoker on Google Cloud: private stage functions are called with an OIDC identity token from the
metadata server, minted for the stage's own URL and reused until it nears expiry (`responses` stands in for both)."""

from __future__ import annotations

import base64
import json

import responses
from responses import matchers

from common.config import Settings
from common.gcp_metadata import MetadataServer
from common.invokers import HttpInvoker
from tests.conftest import FakeClock

IDENTITY = "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/identity"
URLS = {"EXTRACT_SOURCE_A_URL": "https://extract-source-a-abc-uc.a.run.app",
        "EXTRACT_SOURCE_B_URL": "https://extract-source-b-abc-uc.a.run.app/?k=v",
        "EXTRACT_SOURCE_C_URL": "https://extract-source-c-abc-uc.a.run.app",
        "TRANSFORM_LOAD_URL": "https://transform-load-abc-uc.a.run.app"}
RUN = {"run_id": "r1", "status": "succeeded", "stage": "extract", "source": "source_a"}


def jwt_expiring_at(exp: float, audience: str) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part({'aud': audience, 'exp': exp})}.c2ln"


def identity_for(audience: str, token: str) -> None:
    responses.get(IDENTITY, body=token, match=[
        matchers.query_param_matcher({"audience": audience, "format": "full"}),
        matchers.header_matcher({"Metadata-Flavor": "Google"})])


@responses.activate
def test_stage_auth_oidc_sends_an_identity_token_minted_for_each_stage_url_and_reuses_it():
    clock = FakeClock()
    a, b = URLS["EXTRACT_SOURCE_A_URL"], "https://extract-source-b-abc-uc.a.run.app/"
    token_a, token_b = jwt_expiring_at(clock() + 3600, a), jwt_expiring_at(clock() + 3600, b)
    identity_for(a, token_a)
    identity_for(b, token_b)
    responses.post(a, json={"run": RUN}, match=[matchers.header_matcher({"Authorization": f"Bearer {token_a}"})])
    responses.post(URLS["EXTRACT_SOURCE_B_URL"], json={"run": {**RUN, "source": "source_b"}},
                   match=[matchers.header_matcher({"Authorization": f"Bearer {token_b}"})])
    invoker = HttpInvoker.from_settings(Settings.from_env({**URLS, "STAGE_AUTH": "oidc"}),
                                        metadata=MetadataServer(clock=clock))
    assert invoker.extract("a")["status"] == "succeeded"
    assert invoker.extract("a")["status"] == "succeeded"
    assert invoker.extract("b")["status"] == "succeeded"  # audience: the URL without its query
    fetched = [c.request.url for c in responses.calls if c.request.url.startswith(IDENTITY)]
    assert len(fetched) == 2  # one per audience, reused while valid

    clock.advance(3600 - 30)  # within a minute of expiry: a fresh one
    identity_for(a, jwt_expiring_at(clock() + 3600, a))
    responses.post(a, json={"run": RUN})
    invoker.extract("a")
    assert len([c for c in responses.calls if c.request.url.startswith(IDENTITY)]) == 3


@responses.activate
def test_without_stage_auth_no_token_is_sent():
    responses.post(URLS["TRANSFORM_LOAD_URL"], json={"run": {**RUN, "stage": "transform_load"}})
    invoker = HttpInvoker.from_settings(Settings.from_env(URLS))
    assert invoker.transform()["status"] == "succeeded"
    assert "Authorization" not in responses.calls[0].request.headers


@responses.activate
def test_no_metadata_server_is_a_failed_stage_with_the_reason_not_a_crash():
    invoker = HttpInvoker.from_settings(Settings.from_env({**URLS, "STAGE_AUTH": "oidc"}))
    run = invoker.transform()  # `responses` refuses the metadata request: as off Google Cloud
    assert run["status"] == "failed" and run["run_id"] is None
    assert "identity token" in run["summary"]["errors"][0] and "metadata server" in run["summary"]["errors"][0]


@responses.activate
def test_a_401_from_a_private_stage_names_the_missing_invoker_role():
    identity_for(URLS["TRANSFORM_LOAD_URL"], jwt_expiring_at(2e9, "x"))
    responses.post(URLS["TRANSFORM_LOAD_URL"], status=403, body="Forbidden")
    invoker = HttpInvoker.from_settings(Settings.from_env({**URLS, "STAGE_AUTH": "oidc"}))
    run = invoker.transform()
    assert run["status"] == "failed" and "roles/run.invoker" in run["summary"]["errors"][0]


@responses.activate
def test_the_apis_refresh_calls_the_deployed_stages_over_http_with_identity_tokens(tmp_path):
    import time

    import jwt

    from common.api.app import create_app
    from common.wiring import Wiring, build_store

    secret = "r" * 48
    settings = Settings.from_env({**URLS, "STAGE_AUTH": "oidc", "JWT_SECRET": secret, "K_SERVICE": "http-api",
                                  "SQLITE_PATH": str(tmp_path / "etl.sqlite3")})
    for url in URLS.values():
        audience = url.partition("?")[0]
        identity_for(audience, jwt_expiring_at(2e9, audience))
        responses.post(url, json={"run": {**RUN, "run_id": url[-12:]}},
                       match=[matchers.header_matcher({"Authorization": f"Bearer {jwt_expiring_at(2e9, audience)}"})])
    store = build_store(settings)
    try:
        client = create_app(Wiring(settings=settings, store=store)).test_client()
        answer = client.post("/refresh", headers={
            "Authorization": "Bearer " + jwt.encode({"exp": int(time.time()) + 60}, secret, algorithm="HS256")})
        assert answer.status_code == 200, answer.get_json()
    finally:
        store.close()
    posted = {c.request.url for c in responses.calls if c.request.method == "POST"}
    assert len(posted) == 4  # every stage reached over HTTP, none run inside the API
