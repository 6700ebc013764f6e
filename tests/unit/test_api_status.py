"""The status page (`/`, `/status`) and the HTML run page (`/status/runs/<id>`), rendered from a seeded SQLite store.

The HTML is parsed (stdlib html.parser) and the figures are read from the elements that carry them, so a test
fails on a wrong number, a missing state or an unescaped string, not on markup details."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from common.clock import iso_utc
from common.schedule import TRIGGER_HEARTBEAT_KEY
from common.sources import SOURCE_NAMES
from common.store import NORMALIZED_FIELDS, Run
from tests.unit.test_api_health import api as client, clock, settings  # noqa: F401 (fixtures: the same hourly stack)

HOUR = 3600.0
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


# --- a small DOM over html.parser ---------------------------------------------------------------------------------
class Node:
    def __init__(self, tag: str, attrs: dict, parent: "Node | None") -> None:
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    def text(self) -> str:
        return " ".join(" ".join(c if isinstance(c, str) else c.text() for c in self.children).split())

    def find_all(self, tag: str | None = None, **attrs: str) -> list["Node"]:
        found = []
        for child in self.children:
            if isinstance(child, Node):
                if (tag is None or child.tag == tag) and all(
                        child.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items()):
                    found.append(child)
                found += child.find_all(tag, **attrs)
        return found

    def one(self, tag: str | None = None, **attrs: str) -> "Node":
        found = self.find_all(tag, **attrs)
        assert len(found) == 1, f"{len(found)} <{tag} {attrs}>"
        return found[0]


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.current = Node("#document", {}, None)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.current))

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


def dom(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    return builder.root


def number(text: str) -> float:
    return float(re.sub(r"[^0-9.\-]", "", text))


# --- seeding ------------------------------------------------------------------------------------------------------
def run(store, run_id, at, *, stage="extract", source=None, status="succeeded", duration_ms=2000, **extra):
    summary = {"warnings": [], "errors": [], **extra.pop("summary", {})}
    store.save_run(Run(run_id=run_id, stage=stage, source=source, status=status, started_at=iso_utc(at),
                       finished_at=iso_utc(at + duration_ms / 1000), duration_ms=duration_ms, summary=summary,
                       **extra))


def stage_entry(stage, source, run_id, status, rows_in=0, rows_out=0, quarantined=0, errors=()):
    return {"stage": stage, "source": source, "run_id": run_id, "status": status, "duration_ms": 1500,
            "rows_in": rows_in, "rows_out": rows_out, "quarantined": quarantined, "errors": list(errors)}


def record(source, price, minute, symbol="BTC", name="Bitcoin", asset="btc-bitcoin", day="2026-01-02"):
    values = {"idempotency_key": f"{source}{minute}{asset}", "source": source, "source_id": asset,
              "symbol": symbol, "observed_at": f"{day}T00:{minute:02d}:00.000Z", "asset_id": asset, "name": name,
              "price_usd": price, "open_usd": None, "high_usd": None, "low_usd": None, "market_cap_usd": None,
              "volume_24h_usd": None, "ingested_at": "2026-01-02T00:00:00.000Z", "run_id": "t"}
    return tuple(values[f] for f in NORMALIZED_FIELDS)


def seed(store, now: float) -> None:
    """source_a fresh and fine; source_b stale (last good extract 3 h ago, schedule 1 h) with a quarantine
    backlog; source_c extracted 30 min ago, then failed 5 min ago. Two passes: one succeeded, one partial whose
    source_c extract failed. BTC from three sources, with known newest prices."""
    run(store, "ea1", now - 2 * HOUR, source="source_a", rows_out=100)
    run(store, "eb1", now - 3 * HOUR, source="source_b", rows_out=200)
    run(store, "ec1", now - 2 * HOUR, source="source_c", rows_out=300)
    run(store, "t1", now - 2 * HOUR + 60, stage="transform_load", rows_out=600,
        summary={"by_source": {"source_a": {"loaded": 100, "quarantined": 0},
                               "source_b": {"loaded": 192, "quarantined": 8},
                               "source_c": {"loaded": 300, "quarantined": 0}}})
    run(store, "p1", now - 2 * HOUR - 1, stage="pipeline", duration_ms=95_000, rows_in=600, rows_out=600,
        summary={"stages": [stage_entry("extract", "source_a", "ea1", "succeeded", 100, 100),
                            stage_entry("extract", "source_b", "eb1", "succeeded", 200, 200),
                            stage_entry("extract", "source_c", "ec1", "succeeded", 300, 300),
                            stage_entry("transform_load", None, "t1", "succeeded", 600, 592, 8)],
                 "sources": {"source_a": "succeeded", "source_b": "succeeded", "source_c": "succeeded"},
                 "transform": "succeeded"})
    run(store, "ec2", now - 30 * 60, source="source_c", rows_out=50)
    run(store, "ea2", now - 10 * 60, source="source_a", rows_out=40)
    run(store, "ec3", now - 5 * 60, source="source_c", status="failed",
        summary={"errors": ["source_c: 401 — check SOURCE_C_API_KEY"],
                 "drift": [{"source": "source_c", "field": "current_px", "mapped_to": "price_usd",
                            "confidence": 0.91, "action": "mapped", "method": "normalised equality"}]})
    run(store, "t2", now - 4 * 60, stage="transform_load", rows_out=40,
        summary={"by_source": {"source_a": {"loaded": 40, "quarantined": 0}}})
    run(store, "p2", now - 10 * 60 - 1, stage="pipeline", status="partial", duration_ms=400_000, rows_in=40,
        rows_out=40, summary={"stages": [stage_entry("extract", "source_a", "ea2", "succeeded", 40, 40),
                                         stage_entry("extract", "source_c", "ec3", "failed",
                                                     errors=["source_c: 401"]),
                                         stage_entry("transform_load", None, "t2", "succeeded", 40, 40)],
                              "sources": {"source_a": "succeeded", "source_c": "failed"},
                              "transform": "succeeded", "warnings": ["source_c failed: 401"]})
    store.commit_transformed(None, [record("source_a", 100.0 + m, m) for m in range(3)]  # newest 102
                             + [record("source_b", 90.0 + m, m) for m in range(5)]  # newest 94
                             + [record("source_c", 99.0, 1), record("source_c", 98.0, 2)],  # newest 98
                             [{"id": f"q{i}", "source": "source_b", "run_id": "t1", "reason": "bad close"}
                              for i in range(8)],
                             [{"asset_id": "btc-bitcoin", "symbol": "BTC", "name": "Bitcoin", "source": s}
                              for s in SOURCE_NAMES])
    store.resolve_quarantine(["q0"], "r1")  # 7 left unresolved
    _, version = store.get_state(TRIGGER_HEARTBEAT_KEY)
    store.cas_state(TRIGGER_HEARTBEAT_KEY, {"at": iso_utc(now - 20), "pid": 1, "state": "idle",
                                            "pass_run_id": None, "next_tick": iso_utc(now + HOUR)}, version)


def page(api, path="/status") -> Node:
    response = api.get(path)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert response.mimetype == "text/html"
    return dom(response.get_data(as_text=True))


def tile(document: Node, source: str) -> Node:
    return document.one("article", data_source=source)


# --- the page -----------------------------------------------------------------------------------------------------
def test_both_paths_serve_one_html_page_with_the_traceability_headers_and_no_outside_asset(store, settings, clock):
    api = client(store, settings, clock)
    for path in ("/", "/status"):
        response = api.get(path, headers={"X-Request-ID": "req-1"})
        assert response.status_code == 200 and response.mimetype == "text/html"
        assert response.headers["X-Request-ID"] == "req-1" and response.headers["X-Run-ID"] == "none"
        assert re.fullmatch(r"[0-9]+\.[0-9]{2}", response.headers["X-API-Latency-Ms"])
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy and "unsafe-inline" not in policy
        html = response.get_data(as_text=True)
        document = dom(html)
        assert document.one("html").attrs["lang"] == "en" and document.find_all("h1")
        linked = document.find_all("script") + [n for n in document.find_all("link") if n.attrs["rel"] != "icon"]
        for node in linked:
            assert (node.attrs.get("src") or node.attrs.get("href")).startswith("/status/assets/"), node.attrs
        assert document.one("link", rel="icon").attrs["href"] == "data:,"  # no favicon request to answer 404
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
        assert "<style" not in html and " style=" not in html and "<script>" not in html  # CSP: nothing inline
    for node in document.find_all("script") + document.find_all("link", rel="stylesheet"):
        response = api.get(node.attrs.get("src") or node.attrs.get("href"))
        assert response.status_code == 200 and response.mimetype in ("text/css", "text/javascript")
        assert response.headers["X-Request-ID"] and "immutable" in response.headers["Cache-Control"]
    assert api.get("/status/assets/..%2Fstatus.py").status_code == 404


def test_tiles_show_fresh_stale_failed_and_the_quarantine_backlog(store, settings, clock):
    seed(store, clock.now)
    document = page(client(store, settings, clock))
    a, b, c = (tile(document, source) for source in SOURCE_NAMES)
    assert "state-ok" in a.attrs["class"] and a.one(data_field="state").text() == "ok"
    assert "state-stale" in b.attrs["class"] and b.one(data_field="state").text() == "stale"
    assert "state-failed" in c.attrs["class"] and c.one(data_field="state").text() == "failed"
    assert b.one(data_field="freshness").text().startswith("2 h 59 min ago")  # finished 2 s after its 3 h-old start
    assert c.one(data_field="last-status").text().startswith("failed")
    assert c.one(data_field="last-status").one("a").attrs["href"] == "/status/runs/ec3"
    assert [number(t.one(data_field="records").text()) for t in (a, b, c)] == [3, 5, 2]
    assert [number(t.one(data_field="quarantine").text()) for t in (a, b, c)] == [0, 7, 0]
    assert "backlog" in b.one(data_field="quarantine").text()
    assert [number(t.one(data_field="loaded-last-pass").text()) for t in (a, b, c)] == [40, 0, 0]


def test_tile_freshness_is_the_health_endpoints_verdict(store, settings, clock):
    seed(store, clock.now)
    api = client(store, settings, clock)
    checks = api.get("/health").get_json()["checks"]
    document = page(api)
    for source in SOURCE_NAMES:
        verdict = checks[f"{source}:freshness"][0]["status"]
        shown = tile(document, source).one(data_field="freshness").attrs["data-health"]
        assert shown == verdict, source
    assert document.one(data_field="health").attrs["data-health"] == api.get("/health").get_json()["status"]


def test_passes_timeline_shows_each_stage_and_links_the_failed_one(store, settings, clock):
    seed(store, clock.now)
    document = page(client(store, settings, clock))
    rows = [row for row in document.one("table", id="passes").find_all("tr") if "data-run-id" in row.attrs]
    assert [row.attrs["data-run-id"] for row in rows] == ["p2", "p1"]  # newest first
    newest = rows[0]
    assert newest.one(data_field="status").text() == "partial"
    assert newest.one(data_field="duration").text() == "6 min 40 s"
    failed = newest.one("td", data_stage="extract:source_c")
    assert failed.text().startswith("failed") and failed.one("a").attrs["href"] == "/status/runs/ec3"
    assert newest.one("td", data_stage="extract:source_b").text() == "—"  # not in this pass
    assert not rows[1].one("td", data_stage="extract:source_a").find_all("a")  # succeeded: no link needed
    assert number(newest.one(data_field="rows-in").text()) == 40


def test_rows_loaded_per_source_per_pass_as_chart_and_table(store, settings, clock):
    seed(store, clock.now)
    document = page(client(store, settings, clock))
    table = document.one("table", id="rows-table")
    cells = {(row.attrs["data-run-id"], cell.attrs["data-source"]): number(cell.text())
             for row in table.find_all("tr") if "data-run-id" in row.attrs
             for cell in row.find_all("td") if "data-source" in cell.attrs}
    assert cells == {("p1", "source_a"): 100, ("p1", "source_b"): 192, ("p1", "source_c"): 300,
                     ("p2", "source_a"): 40, ("p2", "source_b"): 0, ("p2", "source_c"): 0}
    chart = document.one("svg", id="rows-chart")
    bars = {(bar.attrs["data-run-id"], bar.attrs["data-source"]): float(bar.attrs["height"])
            for bar in chart.find_all("rect") if "data-source" in bar.attrs}
    assert bars[("p1", "source_c")] > bars[("p1", "source_b")] > bars[("p1", "source_a")] > bars[("p2", "source_b")]


def test_btc_by_default_one_series_per_source_latest_prices_and_their_spread(store, settings, clock):
    seed(store, clock.now)
    document = page(client(store, settings, clock))
    section = document.one("section", id="asset")
    assert "btc-bitcoin" in section.text()
    latest = {row.attrs["data-source"]: number(row.one(data_field="price").text())
              for row in section.one("table", id="latest-prices").find_all("tr") if "data-source" in row.attrs}
    assert latest == {"source_a": 102.0, "source_b": 94.0, "source_c": 98.0}
    spread = section.one(data_field="spread")
    assert "8.00" in spread.text() and "8.51 %" in spread.text()  # (102 - 94) / 94
    series = section.one("svg", id="price-chart").find_all("g", **{"class": "series"})
    assert sorted(g.attrs["data-source"] for g in series) == list(SOURCE_NAMES)
    points = {g.attrs["data-source"]: int(g.attrs["data-points"]) for g in series}
    assert points == {"source_a": 3, "source_b": 5, "source_c": 2}


def test_another_asset_is_chosen_with_a_get_parameter_and_unknown_ones_are_said_so(store, settings, clock):
    seed(store, clock.now)
    store.commit_transformed(None, [record("source_b", 5.0, 1, "ETH", "Ethereum", "eth-ethereum")], [],
                             [{"asset_id": "eth-ethereum", "symbol": "ETH", "name": "Ethereum", "source": "source_b"}])
    api = client(store, settings, clock)
    section = page(api, "/status?symbol=eth").one("section", id="asset")
    assert "eth-ethereum" in section.text()
    assert len(section.find_all("g", **{"class": "series"})) == 1
    assert page(api, "/?asset=eth-ethereum").one("section", id="asset").one("table", id="latest-prices")
    missing = page(api, "/status?symbol=NOPE").one("section", id="asset")
    assert "no asset with symbol NOPE" in missing.text() and not missing.find_all("svg")
    bad = page(api, "/status?symbol=%3Cb%3E").one("section", id="asset")
    assert "not a ticker" in bad.text()
    assert api.get("/status?colour=red").status_code == 400  # unknown parameter: the API's one rule
    assert api.get("/status?colour=red").mimetype == "application/json"


def test_hostile_names_and_messages_are_escaped(store, settings, clock):
    seed(store, clock.now)
    store.commit_transformed(None, [record("source_a", 1.0, 1, "EVIL", HOSTILE, "evil-x")], [],
                             [{"asset_id": "evil-x", "symbol": "EVIL", "name": HOSTILE, "source": "source_a"}])
    run(store, "ea3", clock.now - 60, source="source_a", status="failed", summary={"errors": [HOSTILE],
                                                                                    "warnings": [HOSTILE]})
    api = client(store, settings, clock)
    for path in ("/status?symbol=EVIL", "/status/runs/ea3"):
        html = api.get(path).get_data(as_text=True)
        assert HOSTILE not in html and "<script>alert" not in html and "<img src=x" not in html
        assert "&lt;script&gt;alert(" in html
    echoed = api.get("/status?symbol=%3Cscript%3E").get_data(as_text=True)
    assert "&lt;script&gt;" in echoed and "<script>" not in echoed


def test_run_page_shows_errors_warnings_and_drift_and_a_pass_links_its_stages(store, settings, clock):
    seed(store, clock.now)
    api = client(store, settings, clock)
    failed = page(api, "/status/runs/ec3")
    assert failed.one(data_field="status").text() == "failed"
    assert "401 — check SOURCE_C_API_KEY" in failed.one("ul", id="errors").text()
    drift = failed.one("table", id="drift").find_all("tr")
    assert "current_px" in drift[1].text() and "price_usd" in drift[1].text() and "0.91" in drift[1].text()
    assert failed.one("a", id="json-link").attrs["href"] == "/runs/ec3"
    a_pass = page(api, "/status/runs/p2")
    links = {a.attrs["href"] for a in a_pass.one("table", id="stages").find_all("a")}
    assert links == {"/status/runs/ea2", "/status/runs/ec3", "/status/runs/t2"}
    assert "source_c failed: 401" in a_pass.one("ul", id="warnings").text()
    missing = api.get("/status/runs/nope")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"
    assert api.get("/runs/ec3").mimetype == "application/json"  # the API's run stays JSON for API clients


def test_figures_are_cached_until_the_data_or_the_ledger_changes(store, settings, clock):
    seed(store, clock.now)
    api = client(store, settings, clock)
    page(api)
    reads = []
    for name in ("count_normalized", "count_quarantine", "list_runs", "latest_runs", "get_run",
                 "read_normalized", "latest_by_source"):
        original = getattr(store, name)
        setattr(store, name, lambda *a, _name=name, _original=original, **k: (reads.append(_name),
                                                                                _original(*a, **k))[1])
    page(api)
    assert reads == []  # a repeat render reads only the version stamps
    store.commit_transformed(None, [record("source_a", 150.0, 9)], [], [])
    document = page(api)
    assert number(tile(document, "source_a").one(data_field="records").text()) == 4
    assert "count_normalized" in reads
    reads.clear()
    run(store, "p3", clock.now, stage="pipeline", status="failed", summary={"stages": [], "errors": ["boom"]})
    rows = [row for row in page(api).one("table", id="passes").find_all("tr") if "data-run-id" in row.attrs]
    assert rows[0].attrs["data-run-id"] == "p3"
    assert "list_runs" in reads and "count_normalized" not in reads  # a new run does not recount the records


def test_ages_move_with_the_clock_even_from_the_cache(store, settings, clock):
    seed(store, clock.now)
    api = client(store, settings, clock)
    assert tile(page(api), "source_a").one(data_field="state").text() == "ok"
    clock.advance(3 * HOUR)  # nothing changed in the store: the cached figures age, and source_a goes stale
    assert tile(page(api), "source_a").one(data_field="state").text() == "stale"


def test_an_empty_store_renders(store, settings, clock):
    document = page(client(store, settings, clock))
    for source in SOURCE_NAMES:
        assert tile(document, source).one(data_field="state").text() == "stale"  # no good extract yet
    assert "no asset with symbol BTC" in document.one("section", id="asset").text()
    assert "No pass" in document.one("section", id="passes-section").text()


def test_the_page_reads_the_same_through_the_mongodb_adapter(settings, clock):
    from tests.conftest import store_for

    mongo = store_for("mongomock", settings)
    seed(mongo, clock.now)
    document = page(client(mongo, settings, clock))
    assert [tile(document, s).one(data_field="state").text() for s in SOURCE_NAMES] == ["ok", "stale", "failed"]
    assert [number(tile(document, s).one(data_field="quarantine").text()) for s in SOURCE_NAMES] == [0, 7, 0]
    series = document.one("svg", id="price-chart").find_all("g", **{"class": "series"})
    assert [g.attrs["data-source"] for g in series] == list(SOURCE_NAMES)
    assert page(client(mongo, settings, clock), "/status/runs/p2").one("table", id="stages")


@pytest.mark.parametrize("path", ["/status", "/", "/status/runs/p1"])
def test_a_store_outage_is_one_store_call_and_the_apis_clean_503(path):
    from tests.unit.test_api_store_outage import api as outage_api
    from tests.unit.test_api_store_outage import down_store

    store = down_store()
    response = outage_api(store).get(path, headers={"X-Request-ID": "down-1"})
    assert response.status_code == 503 and response.mimetype == "application/json"
    assert response.get_json()["error"]["code"] == "store_unavailable" and "Traceback" not in response.get_data(
        as_text=True)
    assert len(store.calls) == 1, store.calls  # one failed read, not one per figure
    assert response.headers["X-Request-ID"] == "down-1"
