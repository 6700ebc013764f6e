"""A page that keeps failing does not pin a source (issue 7, item 6): it is quarantined with its body and reason and
the pass moves on; a whole source that is down is not quarantined page by page; a stuck pass older than the pass
interval is dropped for a fresh one."""

from __future__ import annotations

import dataclasses
import json

import pytest
import requests
import responses

from common.pipeline import run_extract, run_replay, run_transform
from tests.unit.test_http_sources import C_URL, page_of, wiring  # noqa: F401 (fixture)
from tests.unit.test_http_sources import clock  # noqa: F401 (fixture)

BOOM = '{"error": "upstream exploded"}'


class Pages:
    """A `responses` callback serving source C by page number: `script[page]` lists what each request for that page
    gets in turn (the last answer repeats): a list of records is a 200 with them, a str a 200 with that body, an int
    that status with BOOM, a (status, headers) pair that status with those headers; an exception is raised."""

    def __init__(self, script: dict[int, list]) -> None:
        self.script, self.asked = script, []
        responses.add_callback(responses.GET, C_URL, callback=self)

    def __call__(self, request):
        page = int(request.params["page"])
        self.asked.append(page)
        answers = self.script.get(page, [[]])
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, int):
            return answer, {}, BOOM
        if isinstance(answer, tuple):
            return answer[0], answer[1], BOOM
        if isinstance(answer, str):
            return 200, {"Content-Type": "application/json"}, answer
        return 200, {"Content-Type": "application/json"}, json.dumps(answer)


@pytest.fixture
def wiring2(wiring):
    """Three per page, four pages, two attempts per page, a budget that never makes anything wait."""
    settings = dataclasses.replace(wiring.settings, source_c_rate="100/1m", http_max_attempts=2)
    return dataclasses.replace(wiring, settings=settings)


@responses.activate
def test_a_page_failing_every_attempt_is_quarantined_with_its_body_and_the_pass_moves_on(wiring2):
    pages = Pages({1: [page_of(0, 3)], 2: [503], 3: [page_of(6, 3)], 4: [page_of(9, 1)]})
    run = run_extract("c", wiring2)
    assert pages.asked == [1, 2, 2, 3, 4], "the pass stopped at the failing page"
    assert run.status == "partial" and run.rows_in == 7
    assert wiring2.store.get_checkpoint("extract:source_c")["complete"] is True
    [failed] = run.summary["failed_pages"]
    assert failed["page"] == 2 and failed["skipped"] is True and "HTTP 503" in failed["reason"]
    assert any("page 2" in warning and "quarantine" in warning for warning in run.summary["warnings"])
    transform = run_transform(wiring2)
    assert transform.status == "succeeded" and wiring2.store.count_normalized("source_c") == 7
    [entry] = wiring2.store.list_quarantine("source_c")
    assert entry["raw"] == BOOM and "HTTP 503" in entry["reason"] and "page 2" in entry["reason"]
    assert run_replay(wiring2, "c").summary["replay"]["not_replayable"] == 1  # nothing to re-read: it stays
    again = run_extract("c", wiring2)
    assert pages.asked[5:] == [1, 2, 2, 3, 4] and again.checkpoint["snapshot"] != run.checkpoint["snapshot"]


@responses.activate
def test_a_source_that_is_down_is_not_quarantined_page_by_page(wiring2):
    pages = Pages({page: [requests.ConnectionError("refused")] for page in range(1, 5)})
    run = run_extract("c", wiring2)
    assert run.status == "failed" and "cannot connect" in run.summary["errors"][0]
    assert pages.asked == [1, 1, 2, 2]  # page 1 failed, so did the next: the source is down, not page 1
    assert wiring2.store.count_quarantine("source_c") == 0
    assert (wiring2.store.get_checkpoint("extract:source_c") or {}).get("next_page", 1) == 1


@responses.activate
def test_a_last_page_failing_in_two_invocations_is_skipped_and_the_next_pass_starts_fresh(wiring2, clock):
    pages = Pages({1: [page_of(0, 3)], 2: [page_of(3, 3)], 3: [page_of(6, 3)], 4: [502]})
    first = run_extract("c", wiring2)
    assert first.status == "partial" and pages.asked == [1, 2, 3, 4, 4]
    assert wiring2.store.count_quarantine("source_c") == 0  # once might be bad luck: retried next invocation
    clock.advance(60)
    second = run_extract("c", wiring2)
    assert pages.asked[5:] == [4, 4] and second.status == "partial"
    assert second.checkpoint["complete"] is True and wiring2.store.count_quarantine("source_c") == 1
    clock.advance(60)
    run_extract("c", wiring2)
    assert pages.asked[7] == 1, f"still pinned: asked {pages.asked[7:]}"


@responses.activate
def test_a_malformed_page_is_quarantined_with_the_fetch_reason_and_its_body(wiring2):
    Pages({1: [page_of(0, 3)], 2: ['[{"id": "cut'], 3: [page_of(6, 1)]})
    run = run_extract("c", wiring2)
    assert run.status == "partial" and run.rows_in == 4
    run_transform(wiring2)
    [entry] = wiring2.store.list_quarantine("source_c")
    assert entry["raw"] == '[{"id": "cut' and "not valid JSON" in entry["reason"] and "page 2" in entry["reason"]


@responses.activate
def test_a_stuck_pass_older_than_the_pass_interval_is_dropped_for_a_fresh_one(wiring2, clock):
    short = dataclasses.replace(wiring2, settings=dataclasses.replace(wiring2.settings, invocation_budget_s=100))
    pages = Pages({1: [page_of(0, 3)], 2: [(429, {"Retry-After": "3600"}), page_of(3, 3)], 3: [page_of(6, 1)]})
    first = run_extract("c", short)  # page 2 answers 429 with a Retry-After past the deadline: partial at page 2
    assert first.status == "partial" and first.checkpoint["next_page"] == 2
    clock.advance(wiring2.settings.source_pass_interval_s + 1)
    second = run_extract("c", short)
    assert pages.asked[2] == 1, "resumed a pass older than SOURCE_PASS_INTERVAL_S"
    assert second.checkpoint["snapshot"] != first.checkpoint["snapshot"]
    assert any("older than" in warning for warning in second.summary["warnings"])


@responses.activate
def test_source_pass_interval_s_reaches_the_extract_through_the_pipeline(wiring2, clock):
    settings = dataclasses.replace(wiring2.settings, invocation_budget_s=100, source_pass_interval_s=600)
    short = dataclasses.replace(wiring2, settings=settings)
    pages = Pages({1: [page_of(0, 3)], 2: [(429, {"Retry-After": "500"}), page_of(3, 3)], 3: [page_of(6, 1)]})
    first = run_extract("c", short)
    assert first.status == "partial"
    clock.advance(601)
    second = run_extract("c", short)
    assert pages.asked[2] == 1 and second.checkpoint["snapshot"] != first.checkpoint["snapshot"]
