"""`etl run --source all` is one pass through the orchestrator: printed with its stages, exit 0 only on success."""

from __future__ import annotations

import json

import pytest
import responses

from common.cli import main
from tests.conftest import csv_lines, write_csv
from tests.unit.test_orchestrator_invokers import A_URL, C_URL, MARKET, TICKER


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("SQLITE_PATH", str(tmp_path / "etl.sqlite3"))
    monkeypatch.setenv("SOURCE_B_PATH", str(tmp_path / "h.csv"))
    monkeypatch.setenv("SOURCE_A_RATE", "100/1s")
    monkeypatch.setenv("SOURCE_C_RATE", "100/1s")
    monkeypatch.setenv("ALERT_EMAIL_TO", "")  # no alert channel configured: nothing is sent
    write_csv(tmp_path / "h.csv", csv_lines(coins=1, days=10))
    return monkeypatch


def test_a_pass_with_a_failed_source_prints_its_stages_and_exits_1(env, capsys):
    env.setenv("SOURCE_A_URL", "http://no-such-host.invalid/v1/tickers")
    env.setenv("SOURCE_C_URL", "http://127.0.0.1:9/api/v3/coins/markets")
    env.setenv("HTTP_MAX_ATTEMPTS", "1")
    assert main(["run", "--source", "all"]) == 1
    out, err = capsys.readouterr()
    printed = json.loads(out)
    assert printed["ok"] is False and printed["pass"]["stage"] == "pipeline"
    assert printed["pass"]["status"] == "partial"
    stages = {(e["stage"], e["source"]): e["status"] for e in printed["pass"]["summary"]["stages"]}
    assert stages[("extract", "source_b")] == "succeeded" and stages[("transform_load", None)] == "succeeded"
    assert stages[("extract", "source_a")] == "failed" and stages[("extract", "source_c")] == "failed"
    table = err[err.index(f"pass {printed['pass']['run_id']}: partial"):]  # the readable table on stderr says why
    assert "extract source_a" in table and "cannot resolve host no-such-host.invalid" in table


@responses.activate
def test_a_pass_where_everything_succeeds_exits_0(env, capsys):
    env.setenv("SOURCE_A_URL", A_URL)
    env.setenv("SOURCE_C_URL", C_URL)
    responses.get(A_URL, json=[TICKER])
    responses.get(C_URL, json=[MARKET])
    assert main(["run", "--source", "all", "--quiet"]) == 0
    out, err = capsys.readouterr()
    run = json.loads(out)["pass"]
    assert run["status"] == "succeeded" and f"pass {run['run_id']}: succeeded in" not in err  # --quiet: no table


def test_all_sources_only_as_a_whole_pass(env, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--source", "all", "--stage", "extract"])
    assert exit_.value.code == 2 and "a whole pass" in capsys.readouterr().err
