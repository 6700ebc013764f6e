"""The root prometheus.yml and the alert rules, checked by Debian's promtool: config, rules, and the rule unit tests
(prometheus/alerts.test.yml) that show each alert firing and staying quiet. Plus what promtool cannot know: every
series a rule or a rule test names is one the API's /metrics really exposes."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess

import yaml
from prometheus_client.parser import text_string_to_metric_families

from common.api.app import create_app
from common.clock import iso_utc
from common.store import Run
from common.wiring import Wiring
from tests.conftest import ROOT

RULES = ROOT / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "prometheus" / "alerts.test.yml"
ALERTS = {"EtlApiDown", "EtlPipelineStale", "EtlSourceFailing", "EtlQuarantineRatioHigh", "EtlApi5xxRatioHigh",
          "EtlApiLatencyP99High"}
SEVERITIES = {"warning", "critical"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install -y prometheus (.ci/run installs it)"
    return subprocess.run([found, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_config_with_its_rule_files():
    done = promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout and "alerts.yml" in done.stdout  # the rule file was found and checked


def test_promtool_accepts_the_rules():
    done = promtool("check", "rules", str(RULES.relative_to(ROOT)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_promtool_rule_unit_tests_pass():
    done = promtool("test", "rules", str(RULE_TESTS.relative_to(ROOT)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_for_severity_and_summary():
    found = {rule["alert"]: rule for rule in rules() if "alert" in rule}
    assert set(found) == ALERTS
    for name, rule in found.items():
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: no for:"
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"].strip(), name


def test_the_rule_tests_show_every_alert_firing_and_staying_quiet():
    """promtool passes a test file that never mentions an alert: each one must be asserted both ways here."""
    fires, quiet = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fires == ALERTS, f"never shown firing: {sorted(ALERTS - fires)}"
    assert quiet == ALERTS, f"never shown quiet: {sorted(ALERTS - quiet)}"


def exposed_names(store, settings) -> set[str]:
    """Every sample name /metrics serves once the store holds runs of each kind and the API answered requests."""
    for index, (stage, source, status) in enumerate((("pipeline", None, "succeeded"), ("extract", "source_a", "failed"),
                                                     ("extract", "source_b", "succeeded"),
                                                     ("transform", None, "succeeded"))):
        store.save_run(Run(run_id=f"r{index}", stage=stage, source=source, status=status,
                           started_at=iso_utc(1_800_000_000), finished_at=iso_utc(1_800_000_010)))
    client = create_app(Wiring(settings=settings, store=store)).test_client()
    client.get("/runs")
    body = client.get("/metrics").get_data(as_text=True)
    return {sample.name for family in text_string_to_metric_families(body) for sample in family.samples}


def series_names(expression: str) -> set[str]:
    """The product's series a PromQL expression reads (every one is named etl_*)."""
    return set(re.findall(r"\betl_[a-z0-9_]+", re.sub(r'"[^"]*"', "", expression)))


def test_rules_and_rule_tests_name_only_series_the_api_exposes(store, settings):
    exposed = exposed_names(store, settings) | {"up"}  # `up` is Prometheus's own
    for rule in rules():
        assert series_names(rule["expr"]) <= exposed, (rule.get("alert"), series_names(rule["expr"]) - exposed)
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for series in case.get("input_series", []):
            name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", series["series"]).group(0)
            assert name in exposed, f"the rule tests feed {name}, which /metrics does not serve"


def scrape(client) -> dict[tuple[str, tuple], float]:
    body = client.get("/metrics").get_data(as_text=True)
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body) for sample in family.samples}


def test_the_api_exports_the_schedule_period_the_stale_rule_compares_with(store, settings):
    for schedule, period in (("0 * * * *", 3600), ("*/15 * * * *", 900), ("30s", 30), ("0 0 * * *", 86400)):
        client = create_app(Wiring(settings=dataclasses.replace(settings, etl_schedule=schedule),
                                   store=store)).test_client()
        assert scrape(client)[("etl_schedule_period_seconds", ())] == period, schedule


def test_the_api_says_whether_each_stage_s_newest_finished_run_failed(store, settings):
    client = create_app(Wiring(settings=settings, store=store)).test_client()
    runs = [("a1", "source_a", "failed", 0), ("b1", "source_b", "failed", 0), ("b2", "source_b", "succeeded", 60),
            ("c1", "source_c", "succeeded", 0), ("c2", "source_c", "partial", 60), ("c3", "source_c", "failed", 120)]
    for run_id, source, status, offset in runs:
        store.save_run(Run(run_id=run_id, stage="extract", source=source, status=status,
                           started_at=iso_utc(1_800_000_000 + offset), finished_at=iso_utc(1_800_000_010 + offset)))
    samples = scrape(client)
    failed = {source: samples.get(("etl_last_run_failed", (("source", source), ("stage", "extract"))))
              for source in ("source_a", "source_b", "source_c")}
    assert failed == {"source_a": 1, "source_b": 0, "source_c": 1}
    store.save_run(Run(run_id="a2", stage="extract", source="source_a", status="running",
                       started_at=iso_utc(1_800_000_600)))  # still running: the newest *finished* run decides
    assert scrape(client)[("etl_last_run_failed", (("source", "source_a"), ("stage", "extract")))] == 1
