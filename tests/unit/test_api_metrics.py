"""GET /metrics: Prometheus text format, this process's request metrics and ETL metrics read from the store."""

from __future__ import annotations

import subprocess
import sys

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from common.api.app import create_app
from common.clock import iso_utc
from common.schedule import TRIGGER_HEARTBEAT_KEY
from common.store import RawBatch, Run
from common.store.sqlite import SqliteStore
from common.wiring import Wiring
from tests.conftest import ROOT
from tests.unit.test_api_store_outage import down_store


@pytest.fixture
def other_process(settings):
    """Another writer on the same file, as the trigger or a stage function would be."""
    store = SqliteStore(settings.sqlite_path)
    yield store
    store.close()


def scrape(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.get_data(as_text=True)) for sample in family.samples}


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def test_request_counts_and_latency_by_route_and_status(store, settings):
    client = create_app(Wiring(settings=settings, store=store)).test_client()
    for _ in range(3):
        client.get("/runs")
    client.get("/runs/unknown-run")
    client.get("/runs?limit=0")
    client.get("/no/such/page")
    samples = scrape(client)
    assert value(samples, "etl_api_requests_total", route="/runs", method="GET", status="200") == 3
    assert value(samples, "etl_api_requests_total", route="/runs", method="GET", status="400") == 1
    assert value(samples, "etl_api_requests_total", route="/runs/<run_id>", method="GET", status="404") == 1
    assert value(samples, "etl_api_requests_total", route="(unmatched)", method="GET", status="404") == 1
    assert value(samples, "etl_api_request_duration_seconds_count", route="/runs", method="GET") == 4
    assert value(samples, "etl_api_request_duration_seconds_bucket", route="/runs", method="GET", le="+Inf") == 4
    again = scrape(client)  # the previous scrape is counted too
    assert value(again, "etl_api_requests_total", route="/metrics", method="GET", status="200") == 1


def test_etl_series_reflect_what_another_process_wrote(store, settings, other_process):
    client = create_app(Wiring(settings=settings, store=store)).test_client()
    before = scrape(client)
    assert value(before, "etl_store_up") == 1
    assert value(before, "etl_runs_total", stage="extract", source="source_b", status="succeeded") is None
    http = {"requests": 3, "retries": 1, "statuses": {"200": 2, "429": 1},
            "waited_s": {"rate_limit": 1.5, "retry_after": 4.0, "backoff": 0.0}, "events": []}
    for index, status in enumerate(("succeeded", "failed", "succeeded")):
        other_process.save_run(Run(run_id=f"b{index}", stage="extract", source="source_b", status=status,
                                   started_at=iso_utc(1_800_000_000 + index * 60),
                                   finished_at=iso_utc(1_800_000_010 + index * 60), duration_ms=10_000))
    other_process.save_run(Run(run_id="c0", stage="extract", source="source_c", status="partial",
                               started_at=iso_utc(1_800_000_000), finished_at=iso_utc(1_800_000_030),
                               summary={"warnings": [], "errors": [], "http": http}))
    other_process.save_run(Run(run_id="p0", stage="pipeline", source=None, status="succeeded",
                               started_at=iso_utc(1_800_000_000), finished_at=iso_utc(1_800_000_100)))
    other_process.put_raw_batch(RawBatch(batch_id="b:1", source="source_b", run_id="b2", format="csv_lines",
                                         payload="x", row_count=1))
    other_process.cas_state(TRIGGER_HEARTBEAT_KEY, {"at": iso_utc(1_800_000_200), "state": "idle"}, 0)
    after = scrape(client)
    assert value(after, "etl_runs_total", stage="extract", source="source_b", status="succeeded") == 2
    assert value(after, "etl_runs_total", stage="extract", source="source_b", status="failed") == 1
    assert value(after, "etl_runs_total", stage="pipeline", source="", status="succeeded") == 1
    other_process.save_run(Run(run_id="t0", stage="transform_load", source=None, status="running",
                               started_at=iso_utc(1_800_000_300)))
    running = scrape(client)
    assert value(running, "etl_runs_running", stage="transform_load", source="") == 1
    assert value(running, "etl_runs_total", stage="transform_load", source="", status="running") is None
    assert value(after, "etl_last_success_timestamp_seconds", stage="extract", source="source_b") == 1_800_000_130
    assert value(after, "etl_last_success_timestamp_seconds", stage="extract", source="source_c") == 1_800_000_030
    assert value(after, "etl_raw_batches_pending", source="source_b") == 1
    assert value(after, "etl_records", source="source_b") == 0
    assert value(after, "etl_quarantine_unresolved", source="source_b") == 0
    assert value(after, "etl_scheduler_heartbeat_timestamp_seconds") == 1_800_000_200
    assert value(after, "etl_last_extract_http_responses", source="source_c", status="429") == 1
    assert value(after, "etl_last_extract_wait_seconds", source="source_c", cause="rate_limit") == 1.5


def test_a_store_outage_is_a_scrape_that_says_so(settings):
    store = down_store()
    samples = scrape(create_app(Wiring(settings=settings, store=store)).test_client())
    assert value(samples, "etl_store_up") == 0
    assert store.calls == ["count_runs"]


def test_each_app_has_its_own_registry(store, settings):
    first = create_app(Wiring(settings=settings, store=store)).test_client()
    second = create_app(Wiring(settings=settings, store=store)).test_client()
    first.get("/runs")
    assert value(scrape(second), "etl_api_requests_total", route="/runs", method="GET", status="200") is None
    assert second.get("/metrics?x=1").status_code == 400


def test_runs_written_by_another_os_process_show_on_the_next_scrape(store, settings):
    client = create_app(Wiring(settings=settings, store=store)).test_client()
    scrape(client)
    writer = (
        "import sys; from common.store import Run; from common.store.sqlite import SqliteStore\n"
        "store = SqliteStore(sys.argv[1])\n"
        "for i in range(3):\n"
        "    store.save_run(Run(run_id=f'x{i}', stage='extract', source='source_a', status='running',"
        " started_at='2026-01-01T00:00:00.000Z'))\n"
        "    store.save_run(Run(run_id=f'x{i}', stage='extract', source='source_a', status='failed',"
        " started_at='2026-01-01T00:00:00.000Z', finished_at='2026-01-01T00:00:01.000Z'))\n"
    )
    subprocess.run([sys.executable, "-c", writer, settings.sqlite_path], check=True, cwd=ROOT, timeout=60)
    samples = scrape(client)
    assert value(samples, "etl_runs_total", stage="extract", source="source_a", status="failed") == 3
    assert value(samples, "etl_runs_running", stage="extract", source="source_a") is None


def test_records_are_counted_again_only_after_a_commit(tmp_path, monkeypatch):
    from common.api.metrics import EtlCollector
    from common.config import Settings
    from common.wiring import build_store

    store = build_store(Settings(sqlite_path=str(tmp_path / "m.sqlite3")))
    counted = []
    real = store.count_normalized
    monkeypatch.setattr(store, "count_normalized", lambda source=None: counted.append(source) or real(source))
    collector = EtlCollector(store)
    for _ in range(3):
        list(collector.collect())
    assert len(counted) == 3  # once per source, not once per scrape
    store.commit_transformed(None, [], [], [])  # a commit bumps the data version
    families = {f.name: f for f in collector.collect()}
    assert len(counted) == 6 and families["etl_records"].samples
    store.close()
