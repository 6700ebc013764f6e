"""GET /metrics: Prometheus text format, for this process's requests and for the ETL as the store records it.

Request metrics (`etl_api_requests_total`, `etl_api_request_duration_seconds`) live in a `CollectorRegistry` of
the app's own, never the global one: each app (each test, each re-executed functions-framework module) counts its
own requests, and building a second app cannot fail on duplicate names. ETL metrics are read from the store on
every scrape by a custom collector (`EtlCollector`), so they are the same whichever process ran the ETL. When the
store does not answer, the scrape still succeeds with `etl_store_up 0` and the request metrics (one store call:
the first failure ends the read).

`etl_runs_total` counts runs by final status from counts the store keeps as runs are written (schema version 4),
so it stays monotonic even if old runs are pruned from the ledger; runs still `running` are the gauge
`etl_runs_running`. `etl_last_extract_*` come from each source's newest finished extract run summary (`summary.http`):
the last run's upstream answers, not a running total. `etl_last_run_failed` says whether each stage's (and each
source's) newest finished run failed, and `etl_schedule_period_seconds` is this process's ETL_SCHEDULE period: the
alert rules (prometheus/alerts.yml) compare them with time, so a schedule change needs no rule change.
"""

from __future__ import annotations

import threading
import time

import flask
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from common.clock import epoch_or_none
from common.api.params import single_values
from common.errors import StoreError
from common.schedule import TRIGGER_HEARTBEAT_KEY, parse_schedule
from common.sources import SOURCE_NAMES
from common.store import Store

GOOD = ("succeeded", "partial")
FINISHED = ("succeeded", "partial", "failed")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED = "(unmatched)"


class EtlCollector(Collector):
    """ETL state read from the store at scrape time."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._local = threading.local()
        self._records: tuple[int, dict[str, int]] | None = None  # (data version, records per source)

    def _record_counts(self) -> dict[str, int]:
        """Records per source, counted again only after a transform commit: a count walks an index of every
        record of the source (about 35 ms per source at 1M records), and records change only at a commit."""
        version, cached = self.store.data_version(), self._records
        if cached is not None and cached[0] == version:
            return cached[1]
        counts = {source: self.store.count_normalized(source) for source in SOURCE_NAMES}
        self._records = (version, counts)
        return counts

    @property
    def store_failed(self) -> bool:
        """Whether the last scrape on this thread saw the store fail."""
        return getattr(self._local, "failed", False)

    def collect(self):
        self._local.failed = False
        up = GaugeMetricFamily("etl_store_up", "1 when the store answered this scrape, else 0")
        try:
            families = self._read()
        except StoreError:
            self._local.failed = True
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> list:
        store = self.store
        runs = CounterMetricFamily("etl_runs", "Runs ended, by final status", labels=["stage", "source", "status"])
        running = GaugeMetricFamily("etl_runs_running", "Runs recorded as running", labels=["stage", "source"])
        for (stage, source, status), count in sorted(store.count_runs().items(), key=str):
            if status == "running":  # not final: it goes down again, so it is no counter
                running.add_metric([stage, source or ""], count)
            else:
                runs.add_metric([stage, source or "", status], count)
        last = GaugeMetricFamily("etl_last_success_timestamp_seconds",
                                 "End of the newest succeeded or partial run (Unix time)", labels=["stage", "source"])
        for run in store.latest_runs(GOOD):
            at = epoch_or_none(run.finished_at or run.started_at)
            if at is not None:
                last.add_metric([run.stage, run.source or ""], at)
        records = GaugeMetricFamily("etl_records", "Normalized records stored", labels=["source"])
        pending = GaugeMetricFamily("etl_raw_batches_pending", "Raw batches not yet transformed", labels=["source"])
        quarantine = GaugeMetricFamily("etl_quarantine_unresolved", "Quarantined rows not yet loaded",
                                       labels=["source"])
        counted = self._record_counts()
        for source in SOURCE_NAMES:
            records.add_metric([source], counted[source])
            pending.add_metric([source], store.count_raw_batches(source, pending_only=True))
            quarantine.add_metric([source], store.count_quarantine(source, unresolved_only=True))
        heartbeat = GaugeMetricFamily("etl_scheduler_heartbeat_timestamp_seconds",
                                      "The trigger's last heartbeat (Unix time); absent when it never beat")
        beat, _ = store.get_state(TRIGGER_HEARTBEAT_KEY)
        at = epoch_or_none(beat.get("at")) if isinstance(beat, dict) else None
        if at is not None:
            heartbeat.add_metric([], at)
        responses = GaugeMetricFamily("etl_last_extract_http_responses",
                                      "Upstream HTTP responses by status in the newest finished extract run",
                                      labels=["source", "status"])
        waits = GaugeMetricFamily("etl_last_extract_wait_seconds",
                                  "Seconds the newest finished extract run waited, by cause (rate_limit, "
                                  "retry_after, backoff)", labels=["source", "cause"])
        failed = GaugeMetricFamily("etl_last_run_failed", "1 when the newest finished run failed, else 0",
                                   labels=["stage", "source"])
        for run in store.latest_runs(FINISHED):
            failed.add_metric([run.stage, run.source or ""], 1 if run.status == "failed" else 0)
            http = run.summary.get("http") if run.stage == "extract" else None
            if isinstance(http, dict):
                for status, count in sorted((http.get("statuses") or {}).items()):
                    responses.add_metric([run.source or "", str(status)], count)
                for cause, seconds in sorted((http.get("waited_s") or {}).items()):
                    waits.add_metric([run.source or "", cause], seconds)
        return [runs, running, last, records, pending, quarantine, heartbeat, responses, waits, failed]


def metrics_blueprint(store: Store, etl_schedule: str) -> flask.Blueprint:
    """/metrics plus the hooks that time and count every request of the app it is registered on."""
    blueprint = flask.Blueprint("metrics", __name__)
    registry = CollectorRegistry()  # no auto_describe: registering must not read the store
    requests = Counter("etl_api_requests", "HTTP requests answered by this process",
                       ["route", "method", "status"], registry=registry)
    latency = Histogram("etl_api_request_duration_seconds", "Time to answer a request in this process",
                        ["route", "method"], buckets=LATENCY_BUCKETS, registry=registry)
    etl = EtlCollector(store)
    registry.register(etl)
    Gauge("etl_schedule_period_seconds", "The longest time between two ticks of ETL_SCHEDULE",
          registry=registry).set(parse_schedule(etl_schedule).period_s)

    @blueprint.before_app_request
    def start_timer() -> None:
        flask.g.metrics_started = time.perf_counter()

    @blueprint.after_app_request
    def observe(response: flask.Response) -> flask.Response:
        rule = flask.request.url_rule
        route, method = rule.rule if rule is not None else UNMATCHED, flask.request.method
        if method not in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            method = "other"  # bounded label values, whatever a caller sends
        elapsed = time.perf_counter() - flask.g.get("metrics_started", time.perf_counter())
        requests.labels(route, method, str(response.status_code)).inc()
        latency.labels(route, method).observe(elapsed)
        return response

    @blueprint.get("/metrics")
    def metrics():
        single_values(flask.request.args, ())
        body = generate_latest(registry)
        if etl.store_failed:
            flask.g.store_failed = True  # the X-Run-ID lookup would wait for the same outage again
        return flask.Response(body, mimetype=None, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return blueprint
