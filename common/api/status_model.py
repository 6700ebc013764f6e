"""What the status page shows, read from the store with indexed reads only, and cached against what changes it.

Why a cache keyed on two stamps: the page's figures change only when a transform commits (the store bumps its data
version in the same write) or when a run is recorded or ends (the ledger's run counts change). Both stamps are one
small read each, so a repeat render costs two reads however large the store. The ledger reads (~10 ms over 100k
runs) happen once per ledger change; the record count per source (~35 ms each over 1M rows: the only reads that
grow with the data) once per data version. Ages ("10 min ago") and freshness are computed from the cached runs
at every render, so they move with the clock. While a run is still `running` (a pass saves its progress without
changing the counts) the cached figures are re-read after `RUNNING_TTL_S`.

Freshness is /health's verdict (`common.api.health`), not a second rule: the same function judges the same run.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from common.api.cache import VersionedCache
from common.api.health import GOOD, _freshness, _heartbeat
from common.clock import Clock, epoch_or_none
from common.schedule import TRIGGER_HEARTBEAT_KEY
from common.sources import SOURCE_NAMES
from common.store import RUN_STATUSES, DataQuery, Run, Store

PASSES = 12
"""Passes on the timeline and in the rows chart."""
POINTS = 200
"""Newest observations per source on the price chart (one index range each)."""
MAX_ASSETS_PER_SYMBOL = 10
RUNNING_TTL_S = 5.0
MAX_CACHED_ASSETS = 64
_RANK = {"pass": 0, "warn": 1, "fail": 2}


@dataclass
class Tile:
    """One source at a glance. `state`: failed (its newest extract failed), stale (/health warns: no good extract
    within two schedule periods), else ok."""

    source: str
    state: str
    freshness: dict
    last_run: Run | None
    last_good: Run | None
    records: int
    quarantine: int
    loaded_last_pass: int


@dataclass
class PassRow:
    run: Run
    stages: dict[str, dict]  # "extract:source_a" / "transform_load" -> the pass summary's last entry for it
    loaded: dict[str, int]  # rows loaded per source by the pass's transform runs


@dataclass
class Overview:
    health: str
    checks: list[tuple[str, dict]]
    tiles: list[Tile]
    passes: list[PassRow]


@dataclass
class AssetView:
    """One asset across sources: each source's newest observation, and its newest `POINTS` prices (oldest first)."""

    asset_id: str
    symbol: str | None
    name: str | None
    latest: dict[str, dict]
    series: dict[str, list[tuple[float, float]]]
    alternatives: list[dict] = field(default_factory=list)

    @property
    def spread(self) -> dict | None:
        prices = [entry["price_usd"] for entry in self.latest.values() if entry["price_usd"] is not None]
        if len(prices) < 2:
            return None
        low, high = min(prices), max(prices)
        times = [epoch_or_none(entry["observed_at"]) or 0.0 for entry in self.latest.values()]
        return {"usd": high - low, "pct": (high - low) / low * 100 if low else None, "low": low, "high": high,
                "apart_s": max(times) - min(times)}


class StatusModel:
    """Builds the page's figures; one per app (the cache is per process)."""

    def __init__(self, store: Store, clock: Clock, stale_after_s: float) -> None:
        self.store, self.clock, self.stale_after_s = store, clock, stale_after_s
        self._lock = threading.Lock()
        self._figures: dict = {}
        self._records: dict = {}
        self._assets = VersionedCache(MAX_CACHED_ASSETS)

    # --- the overview ---------------------------------------------------------------------------------------------
    def overview(self) -> Overview:
        figures = self._cached_figures()
        now = self.clock()
        heartbeat = _heartbeat(self.store.get_state(TRIGGER_HEARTBEAT_KEY)[0], now, self.stale_after_s)
        last_pass = figures["passes"][0] if figures["passes"] else None
        tiles, checks = [], [("scheduler:heartbeat", heartbeat)]
        for source in SOURCE_NAMES:
            good, last = figures["last_good"].get(source), figures["last_run"].get(source)
            freshness = _freshness(source, good, now, self.stale_after_s)
            checks.append((f"{source}:freshness", freshness))
            state = "failed" if last is not None and last.status == "failed" else (
                "stale" if freshness["status"] != "pass" else "ok")
            tiles.append(Tile(source, state, freshness, last, good, figures["records"][source],
                              figures["quarantine"][source], last_pass.loaded.get(source, 0) if last_pass else 0))
        health = max((check["status"] for _, check in checks), key=_RANK.__getitem__)
        return Overview(health, checks, tiles, figures["passes"])

    def _cached_figures(self) -> dict:
        with self._lock:  # one computation at a time: concurrent renders wait for it and share it
            version = self.store.data_version()
            stamp = (version, tuple(sorted(self.store.count_runs().items(), key=str)))
            if self._records.get("version") != version:  # the costly part (a count per source): data only
                self._records = {"version": version, "counts": {source: self.store.count_normalized(source)
                                                                for source in SOURCE_NAMES}}
            cached = self._figures
            fresh = cached.get("stamp") == stamp and not (
                cached["running"] and self.clock() - cached["at"] >= RUNNING_TTL_S)
            if not fresh:
                self._figures = cached = {**self._read_figures(), "stamp": stamp, "at": self.clock()}
            return {**cached, "records": self._records["counts"]}

    def _read_figures(self) -> dict:
        store = self.store
        newest = [run for run in store.latest_runs(RUN_STATUSES) if run.stage == "extract"]
        good = [run for run in store.latest_runs(GOOD) if run.stage == "extract"]
        passes = [self._pass_row(run) for run in store.list_runs(stage="pipeline", limit=PASSES)]
        running = any(run.status == "running" for run in newest) or any(
            row.run.status == "running" for row in passes)
        return {"last_run": {run.source: run for run in newest}, "last_good": {run.source: run for run in good},
                "quarantine": {source: store.count_quarantine(source, unresolved_only=True)
                               for source in SOURCE_NAMES},
                "passes": passes, "running": running}

    def _pass_row(self, run: Run) -> PassRow:
        stages: dict[str, dict] = {}
        loaded: dict[str, int] = dict.fromkeys(SOURCE_NAMES, 0)
        for entry in run.summary.get("stages") or []:
            if not isinstance(entry, dict):
                continue
            key = f"{entry.get('stage')}:{entry.get('source')}" if entry.get("source") else str(entry.get("stage"))
            stages[key] = entry  # the last invocation of a stage decides, as in the pass verdict
            if entry.get("stage") == "transform_load" and entry.get("run_id"):
                transform = self.store.get_run(str(entry["run_id"]))
                by_source = (transform.summary.get("by_source") or {}) if transform else {}
                for source, counts in by_source.items():
                    if source in loaded and isinstance(counts, dict):
                        loaded[source] += int(counts.get("loaded") or 0)
        return PassRow(run, stages, loaded)

    # --- one asset --------------------------------------------------------------------------------------------------
    def asset(self, symbol: str | None, asset_id: str | None) -> AssetView | None:
        """The asset with this id, else the one with this symbol reported by most sources (others listed)."""
        version = self.store.data_version()
        kept = self._assets.get(version, (symbol, asset_id))  # (view,): "no such asset" is an answer too
        if kept is None:
            kept = (self._read_asset(symbol, asset_id),)
            self._assets.put(version, (symbol, asset_id), kept)
        return kept[0]

    def _read_asset(self, symbol: str | None, asset_id: str | None) -> AssetView | None:
        query = DataQuery(asset_id=asset_id, limit=1) if asset_id else DataQuery(
            symbols=(symbol or "",), limit=MAX_ASSETS_PER_SYMBOL)
        found: dict[str, dict[str, dict]] = {}
        for item in self.store.latest_by_source(query):  # ordered by asset, then source
            found.setdefault(item["asset_id"], {}).setdefault(item["source"], item)
        if not found:
            return None
        chosen = max(found, key=lambda a: (len(found[a]), -sorted(found).index(a)))
        latest = found[chosen]
        newest = max(latest.values(), key=lambda item: item["observed_at"])
        series = {}
        for source in latest:
            rows = self.store.read_normalized(DataQuery(asset_id=chosen, source=source, limit=POINTS))
            series[source] = [(at, row["price_usd"]) for row in reversed(rows)
                              if row["price_usd"] is not None and (at := epoch_or_none(row["observed_at"]))]
        alternatives = [{"asset_id": a, "name": next(iter(found[a].values()))["name"]} for a in sorted(found)
                        if a != chosen]
        return AssetView(chosen, newest["symbol"], newest["name"], latest, series, alternatives)
