"""The scheduler stand-in: every extract, then transform_load; the pass is ok only if every stage is."""

from __future__ import annotations

import json

import responses

from local.trigger import STAGES, Endpoints, run_pipeline

URLS = {name: f"http://{name}.test/" for name in STAGES}


def run_body(status: str, errors: list[str] | None = None) -> dict:
    return {"run": {"run_id": f"r-{status}", "status": status, "rows_in": 1, "rows_out": 1, "quarantined": 0,
                    "summary": {"errors": errors or [], "warnings": []}}}


@responses.activate
def test_a_pass_calls_every_extract_then_transform_and_reports_reasons(capsys):
    for name in STAGES:
        responses.post(URLS[name], json=run_body("succeeded"))
    assert run_pipeline(Endpoints(URLS)) is True
    assert [call.request.url for call in responses.calls][-1] == URLS["transform_load"]
    assert sorted(call.request.url for call in responses.calls) == sorted(URLS.values())

    responses.replace(responses.POST, URLS["extract_source_c"], status=500,
                      json=run_body("failed", ["source_c: 401 — check SOURCE_C_API_KEY"]))
    assert run_pipeline(Endpoints(URLS)) is False
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    failed = [line for line in lines if line["status"] == "failed"]
    assert failed == [{"stage": "extract_source_c", "http": 500, "status": "failed", "run_id": "r-failed",
                       "rows_in": 1, "rows_out": 1, "quarantined": 0,
                       "reason": "source_c: 401 — check SOURCE_C_API_KEY"}]


@responses.activate
def test_an_unreachable_stage_is_a_failed_stage_not_a_crash(capsys):
    for name in STAGES:
        if name != "transform_load":
            responses.post(URLS[name], json=run_body("succeeded"))
    assert run_pipeline(Endpoints(URLS)) is False
    assert '"stage": "transform_load"' in capsys.readouterr().out
