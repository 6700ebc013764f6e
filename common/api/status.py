"""GET / and /status (the status page) and GET /status/runs/<run_id> (one run as a page), rendered on the server.

Why HTML from the API itself: an operator's first questions (is every source fresh, did the last passes succeed,
what is stuck in quarantine, do the sources agree on a price) should not need reading JSON, and the page must work
offline: every asset is served by this app (`static/`), charts are inline SVG (`status_charts`), and the numbers
are in HTML tables, so it reads with JavaScript off. `static/status.js` only refreshes the page in place.

Why a separate path for the run page rather than content negotiation on /runs/<id>: /runs/<id> stays JSON for
every client (its OpenAPI contract and caches need no `Vary: Accept`), and a link from the page is a plain link.

Every answer carries the API's traceability headers (set by the app for every response) and a strict
Content-Security-Policy: no inline script or style, nothing from another origin, so a string that escaped the
templates' escaping still could not run. Errors (an unknown parameter, an unknown run, the store down) answer in
the API's one JSON error shape.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import flask

from common.api.params import matching, single_values
from common.api.runs import _RUN_ID
from common.api.status_charts import bar_chart, line_chart, money, style
from common.api.status_model import POINTS, StatusModel
from common.clock import Clock, epoch_or_none, iso_utc
from common.errors import InputError, NotFound
from common.schedule import parse_schedule
from common.sources import SOURCE_NAMES
from common.store import Store

STATUS_PARAMS = ("symbol", "asset")
DEFAULT_SYMBOL = "BTC"
REFRESH_S = 60
"""Auto-refresh interval: the figures move when a pass ends (hourly by default); a minute keeps a wall display
current without loading the API (a repeat render reads two version stamps)."""
SYMBOL = re.compile(r"[A-Za-z0-9.$_-]{1,20}")
ASSET_ID = re.compile(r"[a-z0-9-]{1,100}")
STALE_AFTER_PERIODS = 2
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
          "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
STATIC = Path(__file__).with_name("static")
ASSETS = {"status.css": "text/css", "status.js": "text/javascript"}
STYLES = {source: style(index) for index, source in enumerate(SOURCE_NAMES)}
"""One look per source on every chart and legend."""


def status_blueprint(store: Store, clock: Clock, etl_schedule: str) -> flask.Blueprint:
    blueprint = flask.Blueprint("status", __name__)
    model = StatusModel(store, clock, STALE_AFTER_PERIODS * parse_schedule(etl_schedule).period_s)
    assets = {name: (STATIC / name).read_bytes() for name in ASSETS}
    versions = {name: hashlib.sha256(body).hexdigest()[:12] for name, body in assets.items()}

    @blueprint.app_template_filter("ago")
    def ago(iso: str | None) -> str:
        at = epoch_or_none(iso)
        return "never" if at is None else f"{age(max(0.0, clock() - at))} ago"

    for name, function in FILTERS.items():
        blueprint.add_app_template_filter(function, name)

    @blueprint.get("/")
    @blueprint.get("/status")
    def status_page():
        symbol, asset_id, notice = _asset_choice(single_values(flask.request.args, STATUS_PARAMS))
        overview = model.overview()
        view = model.asset(symbol, asset_id) if symbol or asset_id else None
        rows = bar_chart([(row.run.run_id, _short_time(row.run.started_at)) for row in reversed(overview.passes)],
                         list(SOURCE_NAMES), {(row.run.run_id, s): n for row in overview.passes
                                              for s, n in row.loaded.items()})
        return _html(flask.render_template(
            "status.html", overview=overview, view=view, symbol=symbol, asset_id=asset_id, notice=notice,
            rows_chart=rows, price_chart=line_chart(view.series, STYLES) if view else None, sources=SOURCE_NAMES,
            styles=STYLES, stage_keys=[f"extract:{s}" for s in SOURCE_NAMES] + ["transform_load"],
            longest=max([row.run.duration_ms or 0 for row in overview.passes] or [0]) or 1,
            stale_after_ms=model.stale_after_s * 1000, points=POINTS, now=iso_utc(clock()),
            refresh_s=REFRESH_S, versions=versions))

    @blueprint.get("/status/assets/<name>")
    def asset(name: str):
        """The page's CSS and script. Not under /static: functions-framework's own app answers /static/ itself.
        Their URLs carry `v` (a digest of the file), so a browser may keep them for a year."""
        single_values(flask.request.args, ("v",))
        if name not in assets:
            raise NotFound("no such asset")
        response = flask.Response(assets[name], mimetype=ASSETS[name])
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @blueprint.get("/status/runs/<run_id>")
    def run_page(run_id: str):
        single_values(flask.request.args, ())
        found = store.get_run(run_id) if _RUN_ID.fullmatch(run_id) else None
        if found is None:
            raise NotFound(f"no run with id {run_id if _RUN_ID.fullmatch(run_id) else '(not a run id)'}")
        summary = found.summary if isinstance(found.summary, dict) else {}
        shown = {k: v for k, v in summary.items() if k not in ("errors", "warnings", "drift", "stages")}
        return _html(flask.render_template(
            "run.html", run=found, errors=_texts(summary.get("errors")), warnings=_texts(summary.get("warnings")),
            drift=[d for d in summary.get("drift") or [] if isinstance(d, dict)],
            stages=[s for s in summary.get("stages") or [] if isinstance(s, dict)],
            details=json.dumps(shown, indent=2, sort_keys=True, default=str), now=iso_utc(clock()),
            versions=versions))

    return blueprint


def _asset_choice(values) -> tuple[str | None, str | None, str | None]:
    """(symbol, asset_id, notice). A value that is not a ticker or an asset id is said so on the page (a person
    typed it into the form), not refused: the rest of the page is still worth showing."""
    try:
        asset_id = matching(values, "asset", ASSET_ID, "an asset id such as btc-bitcoin")
        symbol = matching(values, "symbol", SYMBOL, "a ticker")
    except InputError:
        raw = values.get("asset") or values.get("symbol") or ""
        return None, None, f"“{raw[:40]}” is not a ticker (letters, digits, . $ _ -) or an asset id"
    if asset_id:
        return None, asset_id, None
    return (symbol or DEFAULT_SYMBOL).upper(), None, None


def duration(ms: float | int | None) -> str:
    if ms is None:
        return "—"
    seconds = int(round(ms / 1000))
    if seconds < 60:
        return f"{ms / 1000:.1f} s" if ms < 10_000 else f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} d {hours % 24} h"


def age(seconds: float) -> str:
    """How long ago, to the precision a glance needs: 40 s, 12 min, 2 h 59 min, 3 d 4 h."""
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 48 * 3600:
        return duration(seconds * 1000)
    return f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"


def _short_time(iso: str) -> str:
    return iso[11:16] if iso and len(iso) >= 16 else str(iso)


def _texts(values) -> list[str]:
    return [str(v) for v in values] if isinstance(values, list) else []


def _html(body: str) -> flask.Response:
    response = flask.Response(body, mimetype="text/html")
    response.headers["Content-Security-Policy"] = POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-cache"
    return response


def _count(value) -> str:
    return f"{value:,}" if isinstance(value, int) else "—"


def _iso_time(epoch: float) -> str:
    return iso_utc(epoch)[:16].replace("T", " ")


FILTERS = {"duration": duration, "money": money, "count": _count, "short_time": _short_time, "iso_time": _iso_time}
"""Number and time formats the templates share."""
