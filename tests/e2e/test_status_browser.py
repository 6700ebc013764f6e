"""The status page in a real headless chromium, against the real `http_api` under functions-framework on loopback.

The browser is driven over the DevTools protocol through `--remote-debugging-pipe` (JSON messages separated by NUL
on file descriptors 3 and 4), so no websocket client is needed. Console messages, uncaught exceptions and the
browser's own log (failed loads, CSP violations) are collected; the collector is checked to catch a planted error,
so "no console errors" cannot pass by not listening. Auto-refresh is tested with injected timers (the page's
`setInterval` is captured and fired by hand, `document.hidden` is set by the test): nothing waits a minute.

Screenshots go to $ARTIFACTS_DIR (default tests/artifacts/, git-ignored): status-1280.png, status-360.png, run.png.
Chromium missing is a failure, not a skip: `.ci/run` installs Debian's `chromium`.
"""

from __future__ import annotations

import base64
import json
import math
import os
import queue
import random
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from common.clock import iso_utc
from common.config import Settings
from common.store import NORMALIZED_FIELDS, Run
from common.wiring import build_store
from tests.conftest import ROOT
from tests.e2e.conftest import Stack, stage_env
from tests.unit.test_api_status import HOSTILE, stage_entry

HOUR = 3600.0
ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR") or ROOT / "tests" / "artifacts")
FAKE_TIMERS = """
(function () {
  var timers = [];
  window.setInterval = function (fn) { timers.push(fn); return timers.length; };
  window.__tick = function () { timers.forEach(function (fn) { fn(); }); return timers.length; };
  window.__hidden = false;
  Object.defineProperty(Document.prototype, "hidden",
                        {configurable: true, get: function () { return window.__hidden; }});
  var realFetch = window.fetch.bind(window);
  window.__fetches = 0;
  window.fetch = function () { window.__fetches += 1; return realFetch.apply(null, arguments); };
}());
"""


class Browser:
    """Headless chromium over the DevTools pipe: one page, its console and log errors, dialogs."""

    def __init__(self, profile: Path) -> None:
        binary = (os.environ.get("CHROMIUM_BIN") or shutil.which("chromium") or shutil.which("chromium-browser"))
        if binary is None:
            raise AssertionError("chromium is required for the status page test (Debian: apt-get install chromium)")
        to_child, self._to_browser = os.pipe()
        self._from_browser, from_child = os.pipe()

        def wire_pipe() -> None:  # the child's fd 3 reads commands, fd 4 writes answers
            read, write = os.dup(to_child), os.dup(from_child)
            os.dup2(read, 3)
            os.dup2(write, 4)

        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=False, preexec_fn=wire_pipe)
        os.close(to_child)
        os.close(from_child)
        self._next_id, self._answers, self.events = 0, {}, queue.Queue()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._from_browser, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for raw in messages:
                    self._dispatch(json.loads(raw))

    def _dispatch(self, message: dict) -> None:
        if "id" in message:
            self._answers[message["id"]].put(message)
            return
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
            self.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in
                                                     params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            self.errors.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:500])
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
            self.errors.append(f"log: {params['entry'].get('text', '')} {params['entry'].get('url', '')}")
        elif method == "Page.javascriptDialogOpening":
            self.dialogs.append(params.get("message", ""))
        self.events.put(message)

    def call(self, method: str, session: bool = False, **params) -> dict:
        with self._lock:
            self._next_id += 1
            number = self._next_id
        self._answers[number] = queue.Queue()
        message = {"id": number, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        try:
            answer = self._answers[number].get(timeout=30)
        finally:
            del self._answers[number]
        assert "error" not in answer, (method, answer["error"])
        return answer.get("result", {})

    def send(self, method: str, **params) -> dict:
        return self.call(method, session=True, **params)

    def open(self, url: str) -> None:
        while not self.events.empty():
            self.events.get_nowait()
        self.send("Page.navigate", url=url)
        deadline = time.monotonic() + 30
        while True:
            message = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            if message.get("method") == "Page.loadEventFired":
                return

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 20.0):
        deadline = time.monotonic() + timeout_s
        while not (value := self.js(expression)):
            assert time.monotonic() < deadline, f"still false after {timeout_s} s: {expression}"
            time.sleep(0.1)
        return value

    def viewport(self, width: int, height: int) -> None:
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=width < 500)

    def screenshot(self, path: Path) -> Path:
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        os.close(self._to_browser)


# --- a store with known data ----------------------------------------------------------------------------------------
def _run(store, run_id, at, *, stage="extract", source=None, status="succeeded", duration_ms=2000, summary=None,
         **extra) -> None:
    store.save_run(Run(run_id=run_id, stage=stage, source=source, status=status, started_at=iso_utc(at),
                       finished_at=iso_utc(at + duration_ms / 1000), duration_ms=duration_ms,
                       summary={"warnings": [], "errors": [], **(summary or {})}, **extra))


def _prices(source: str, start: float, step_s: float, count: int, level: float, seed: int) -> list[tuple]:
    rng, price, rows = random.Random(seed), level, []
    for n in range(count):
        price *= math.exp(rng.gauss(0, 0.004))
        values = {"idempotency_key": f"{source}-{n}", "source": source, "source_id": "btc-bitcoin",
                  "symbol": "BTC", "observed_at": iso_utc(start + n * step_s), "asset_id": "btc-bitcoin",
                  "name": "Bitcoin", "price_usd": round(price, 2), "open_usd": None, "high_usd": None,
                  "low_usd": None, "market_cap_usd": None, "volume_24h_usd": None,
                  "ingested_at": iso_utc(start), "run_id": "t"}
        rows.append(tuple(values[f] for f in NORMALIZED_FIELDS))
    return rows


def seed_known(store, now: float) -> dict:
    """Twelve hourly passes; the newest one partial with source_c's extract failed; source_b last extracted 3 h
    ago (stale under a 1 h schedule) with 7 rows in quarantine; BTC prices from the three sources."""
    loaded = {}
    for n in range(12):
        at = now - (12 - n) * HOUR + 60
        newest, entries, by_source = n == 11, [], {}
        for index, source in enumerate(("source_a", "source_b", "source_c")):
            if source == "source_b" and n > 8:
                continue  # B stopped after the 9th pass
            status = "failed" if newest and source == "source_c" else "succeeded"
            rows = 0 if status == "failed" else 100 * (index + 1) + 10 * n
            _run(store, f"e{n}{source[-1]}", at + 1, source=source, status=status, rows_out=rows,
                 summary={"errors": ["source_c: 401 — check SOURCE_C_API_KEY"]} if status == "failed" else None)
            entries.append(stage_entry("extract", source, f"e{n}{source[-1]}", status, rows, rows))
            if rows:
                by_source[source] = {"loaded": rows, "quarantined": 0}
        _run(store, f"t{n}", at + 30, stage="transform_load", rows_out=sum(v["loaded"] for v in by_source.values()),
             summary={"by_source": by_source})
        entries.append(stage_entry("transform_load", None, f"t{n}", "succeeded"))
        total = sum(v["loaded"] for v in by_source.values())
        _run(store, f"p{n:02d}", at, stage="pipeline", status="partial" if newest else "succeeded",
             duration_ms=40_000 + 5000 * n, summary={"stages": entries}, rows_in=total, rows_out=total)
        loaded[f"p{n:02d}"] = {s: v["loaded"] for s, v in by_source.items()}
    assets = [{"asset_id": "btc-bitcoin", "symbol": "BTC", "name": "Bitcoin", "source": s}
              for s in ("source_a", "source_b", "source_c")]
    store.commit_transformed(None, _prices("source_a", now - 199 * HOUR, HOUR, 200, 97_000, 1)
                             + _prices("source_b", now - 29 * 86400 - 3 * HOUR, 86400, 30, 96_500, 2)
                             + _prices("source_c", now - 198 * HOUR, 2 * HOUR, 100, 97_200, 3),
                             [{"id": f"q{i}", "source": "source_b", "run_id": "t8", "reason": "bad close"}
                              for i in range(7)], assets)
    store.commit_transformed(None, [], [], [{"asset_id": "evil-x", "symbol": "EVIL", "name": HOSTILE,
                                             "source": "source_a"}])
    evil = _prices("source_a", now - HOUR, HOUR, 1, 1.0, 4)[0]
    evil = tuple({"asset_id": "evil-x", "source_id": "evil-x", "symbol": "EVIL", "name": HOSTILE,
                  "idempotency_key": "evil"}.get(f, v) for f, v in zip(NORMALIZED_FIELDS, evil))
    store.commit_transformed(None, [evil], [], [])
    return loaded


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("status")
    env = stage_env(folder, ETL_SCHEDULE="1h")
    store = build_store(Settings(sqlite_path=env["SQLITE_PATH"]))
    loaded = seed_known(store, time.time())
    stack = Stack(env)
    try:
        yield stack.start("http_api"), store, loaded
    finally:
        stack.stop()
        store.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = Browser(tmp_path_factory.mktemp("profile"))
    yield chromium
    chromium.close()


TILES = """[...document.querySelectorAll('article.tile')].map(t => ({source: t.dataset.source,
  state: t.querySelector('[data-field=state]').textContent.trim(),
  records: t.querySelector('[data-field=records]').textContent.trim(),
  quarantine: t.querySelector('[data-field=quarantine]').textContent.trim(),
  loaded: t.querySelector('[data-field=loaded-last-pass]').textContent.trim()}))"""


def test_the_collector_sees_console_errors(server, browser):
    browser.open(server[0] + "/status")
    browser.errors.clear()
    browser.js("console.error('planted')")
    deadline = time.monotonic() + 10
    while not browser.errors and time.monotonic() < deadline:
        time.sleep(0.05)
    assert browser.errors and "planted" in browser.errors[0]
    browser.errors.clear()


def test_page_in_chromium_shows_the_known_figures_without_console_errors(server, browser):
    url, _, loaded = server
    browser.send("Page.addScriptToEvaluateOnNewDocument", source=FAKE_TIMERS)
    browser.viewport(1280, 2000)
    browser.errors.clear()
    browser.open(url + "/status")
    tiles = {t["source"]: t for t in browser.js(TILES)}
    assert {s: t["state"] for s, t in tiles.items()} == {"source_a": "ok", "source_b": "stale",
                                                         "source_c": "failed"}
    assert tiles["source_b"]["records"] == "30" and tiles["source_a"]["records"] == "201"
    assert tiles["source_b"]["quarantine"].startswith("7") and tiles["source_c"]["quarantine"] == "0"
    assert tiles["source_a"]["loaded"] == "210"  # 100 + 10 x 11, the newest pass
    passes = browser.js("[...document.querySelectorAll('#passes tbody tr')].map(r => r.dataset.runId)")
    assert passes == [f"p{n:02d}" for n in range(11, -1, -1)]
    failed_link = browser.js("document.querySelector('#passes tr[data-run-id=p11] "
                             "td[data-stage=\"extract:source_c\"] a').getAttribute('href')")
    assert failed_link == "/status/runs/e11c"
    assert browser.js("document.querySelector('#passes tr[data-run-id=p11] [data-field=rows-in]').textContent") == "210"
    cells = browser.js("Object.fromEntries([...document.querySelectorAll('#rows-table td')].map("
                       "c => [c.parentElement.dataset.runId + ':' + c.dataset.source, c.textContent.trim()]))")
    assert cells["p11:source_a"] == f"{loaded['p11']['source_a']:,}" and cells["p11:source_c"] == "0"
    assert cells["p03:source_c"] == f"{loaded['p03']['source_c']:,}"
    series = browser.js("[...document.querySelectorAll('#price-chart g.series')].map("
                        "g => [g.dataset.source, g.querySelector('path').getTotalLength() > 0])")
    assert series == [["source_a", True], ["source_b", True], ["source_c", True]]
    prices = browser.js("[...document.querySelectorAll('#latest-prices tbody tr')].map(r => r.dataset.source)")
    assert prices == ["source_a", "source_b", "source_c"]
    assert browser.js("!document.querySelector('.refresh-controls').hidden")  # the script ran
    assert browser.js("document.documentElement.scrollWidth") <= 1280
    browser.screenshot(ARTIFACTS / "status-1280.png")
    assert browser.errors == [] and browser.dialogs == []


def test_auto_refresh_pauses_while_hidden_and_catches_up_when_shown(server, browser):
    url, store, _ = server
    browser.open(url + "/status")
    assert browser.js("window.__fetches") == 0
    assert browser.js("window.__hidden = true; window.__tick()") == 1  # one interval, fired while hidden
    assert browser.js("window.__fetches") == 0
    _run(store, "p-new", time.time(), stage="pipeline", status="failed", summary={"errors": ["stopped"]})
    browser.js("window.__hidden = false; document.dispatchEvent(new Event('visibilitychange'))")
    browser.wait_for("document.querySelector('#passes tr[data-run-id=\"p-new\"]') !== null")
    assert browser.js("window.__fetches") == 1
    assert "Updated" in browser.js("document.getElementById('refresh-status').textContent")
    browser.js("window.__tick()")  # visible: a tick refreshes
    browser.wait_for("window.__fetches === 2")
    assert browser.errors == []


def test_readable_at_360_px_and_with_javascript_off(server, browser):
    url = server[0]
    browser.viewport(360, 2000)
    browser.open(url + "/status")
    assert browser.js("document.documentElement.scrollWidth") <= 360  # tables and charts scroll in their boxes
    browser.screenshot(ARTIFACTS / "status-360.png")
    browser.send("Emulation.setScriptExecutionDisabled", value=True)
    try:
        browser.open(url + "/")  # the same page at the root
        assert [t["state"] for t in browser.js(TILES)] == ["ok", "stale", "failed"]
        assert browser.js("document.querySelectorAll('#passes tbody tr').length") >= 12
        assert browser.js("document.querySelector('.refresh-controls').hidden")  # no dead buttons
    finally:
        browser.send("Emulation.setScriptExecutionDisabled", value=False)
    browser.viewport(1280, 2000)
    assert browser.errors == []


def test_run_page_and_a_hostile_asset_name_in_chromium(server, browser):
    url = server[0]
    browser.open(url + "/status/runs/e11c")
    assert browser.js("document.querySelector('[data-field=status]').textContent") == "failed"
    assert "401" in browser.js("document.getElementById('errors').textContent")
    browser.screenshot(ARTIFACTS / "run.png")
    browser.open(url + "/status?symbol=evil")
    assert browser.js("document.querySelectorAll('#asset img, #asset script').length") == 0
    assert HOSTILE in browser.js("document.getElementById('asset-h').textContent")  # shown as text
    assert browser.dialogs == [] and browser.errors == []
