"""Credentials never follow a redirect to another host (issue 7, item 8): requests itself drops only
`Authorization`; source C's `x-cg-demo-api-key` (and any source's auth header) must be dropped too."""

from __future__ import annotations

import dataclasses

import pytest
import responses

from common.pipeline import run_extract
from tests.unit.test_http_sources import A_URL, C_URL, page_of, wiring  # noqa: F401 (fixture)
from tests.unit.test_http_sources import clock  # noqa: F401 (fixture)

CREDENTIALS = ("x-cg-demo-api-key", "Authorization")


def sent_to(host: str) -> list:
    return [call.request for call in responses.calls if call.request.url.startswith(host)]


@responses.activate
@pytest.mark.parametrize("location", [
    "https://elsewhere.test/markets",            # another host
    "http://c.test/api/v3/coins/markets/moved",  # the same host, but downgraded to plain http
    "https://c.test:8443/api/v3/coins/markets",  # the same host name on another port
])
def test_source_c_key_does_not_follow_a_redirect_off_its_origin(wiring, location):
    responses.get(C_URL, status=302, headers={"Location": location})
    responses.get(location, json=page_of(0, 2))
    run = run_extract("c", wiring)
    assert run.status == "succeeded" and run.rows_in == 2
    assert responses.calls[0].request.headers["x-cg-demo-api-key"] == "demo-key"
    [followed] = [call.request for call in responses.calls[1:]]
    assert followed.url.startswith(location)
    leaked = [name for name in CREDENTIALS if name in followed.headers]
    assert not leaked, f"{leaked} sent to {location}"


@responses.activate
def test_a_same_origin_redirect_keeps_the_key_and_its_query(wiring):
    moved = "https://c.test/api/v3/coins/markets-v2"
    responses.get(C_URL, status=301, headers={"Location": "/api/v3/coins/markets-v2?vs_currency=usd&page=1"})
    responses.get(moved, json=page_of(0, 2))
    run = run_extract("c", wiring)
    assert run.status == "succeeded" and run.rows_in == 2
    followed = responses.calls[1].request
    assert followed.headers["x-cg-demo-api-key"] == "demo-key" and followed.params["page"] == "1"


@responses.activate
def test_source_a_authorization_does_not_follow_either(wiring):
    settings = dataclasses.replace(wiring.settings, source_a_api_key="paprika-key")
    elsewhere = "https://cdn.elsewhere.test/tickers.json"
    responses.get(A_URL, status=307, headers={"Location": elsewhere})
    responses.get(elsewhere, json=[])
    run = run_extract("a", dataclasses.replace(wiring, settings=settings))
    assert run.status == "succeeded"
    assert responses.calls[0].request.headers["Authorization"] == "paprika-key"
    assert "Authorization" not in responses.calls[1].request.headers


@responses.activate
def test_a_redirect_loop_is_a_clear_failure_not_a_hang(wiring):
    responses.get(C_URL, status=302, headers={"Location": C_URL})
    run = run_extract("c", wiring)
    assert run.status == "failed" and "redirect" in run.summary["errors"][0]
    assert len(responses.calls) <= 11
