"""A real Prometheus (Debian's) scraping the real http_api on loopback, with the repo's own alert rules: it sees the
API up, the ETL series, and the stale-pipeline alert firing once the last good pass is older than two schedule
periods, then resolving when a new pass succeeds. Only the scrape target and the intervals differ from the
compose stack's prometheus.yml (1 s instead of 15 s, so the test waits seconds, not minutes)."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import requests
import yaml

from common.clock import iso_utc
from common.store import Run
from common.store.sqlite import SqliteStore
from tests.conftest import ROOT
from tests.e2e.conftest import Stack, free_port, stage_env

JOB = "crypto-etl-api"
SCHEDULE = "1h"
STALE = "EtlPipelineStale"


def prometheus_config(api_port: int) -> dict:
    """The root prometheus.yml, pointed at the API on loopback, with the same rule file (by absolute path)."""
    config = yaml.safe_load((ROOT / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str((ROOT / rule_file).resolve()) for rule_file in config["rule_files"]]
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == JOB]
    assert len(jobs) == 1, "the compose config scrapes the API as job " + JOB
    jobs[0].update(static_configs=[{"targets": [f"127.0.0.1:{api_port}"]}], scrape_interval="1s")
    config["scrape_configs"] = jobs
    return config


@pytest.fixture
def prometheus(tmp_path):
    """Start Prometheus for an API port; stopped at teardown."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: apt-get install -y prometheus (.ci/run installs it)"
    started: list[subprocess.Popen] = []
    log_path = tmp_path / "prometheus.log"

    def start(api_port: int) -> str:
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump(prometheus_config(api_port)))
        port = free_port()
        with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
            started.append(subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: ready(url), "prometheus ready", started[0], tmp_path)
        return url

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=20)


def ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/-/ready", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def wait_for(condition, what: str, process: subprocess.Popen, tmp_path, timeout_s: float = 90.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline or process.poll() is not None:
            log = (tmp_path / "prometheus.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"not seen within {timeout_s:.0f}s: {what}\n{log}")
        time.sleep(0.5)


def query(url: str, promql: str) -> list[dict]:
    body = requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def alert_states(url: str, name: str) -> set[str]:
    alerts = requests.get(f"{url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return {alert["state"] for alert in alerts if alert["labels"]["alertname"] == name}


def save_pass(store: SqliteStore, run_id: str, finished_at: float) -> None:
    store.save_run(Run(run_id=run_id, stage="pipeline", source=None, status="succeeded",
                       started_at=iso_utc(finished_at - 30), finished_at=iso_utc(finished_at)))


def test_prometheus_scrapes_the_api_and_the_stale_pipeline_alert_fires_and_resolves(tmp_path, prometheus):
    store = SqliteStore(str(tmp_path / "etl.sqlite3"))
    try:
        now = time.time()
        save_pass(store, "pass-old", now - 3 * 3600)  # three schedule periods ago: the schedule has lapsed
        for source in ("source_a", "source_b", "source_c"):
            store.save_run(Run(run_id=f"x-{source}", stage="extract", source=source, status="succeeded",
                               started_at=iso_utc(now - 60), finished_at=iso_utc(now - 50)))
        stack = Stack(stage_env(tmp_path, ETL_SCHEDULE=SCHEDULE))
        try:
            api = stack.start("http_api")
            url = prometheus(int(api.rsplit(":", 1)[1]))
            process = stack.processes[0]

            up = wait_for(lambda: query(url, f'up{{job="{JOB}"}} == 1'), "up == 1", process, tmp_path)
            assert up[0]["metric"]["instance"] == api.removeprefix("http://")
            assert query(url, "etl_store_up")[0]["value"][1] == "1"
            assert float(query(url, "etl_schedule_period_seconds")[0]["value"][1]) == 3600
            last = query(url, 'etl_last_success_timestamp_seconds{stage="pipeline"}')
            assert abs(float(last[0]["value"][1]) - (now - 3 * 3600)) < 1
            succeeded = query(url, 'etl_runs_total{stage="extract", status="succeeded"}')
            assert {series["metric"]["source"] for series in succeeded} == {"source_a", "source_b", "source_c"}

            wait_for(lambda: "firing" in alert_states(url, STALE), f"{STALE} firing", process, tmp_path)
            assert alert_states(url, "EtlSourceFailing") == set()  # every source's last extract succeeded

            save_pass(store, "pass-new", time.time())  # a pass succeeds: the next scrape clears the alert
            wait_for(lambda: alert_states(url, STALE) == set(), f"{STALE} resolved", process, tmp_path)
        finally:
            stack.stop()
    finally:
        store.close()
