"""GET /data: normalized records, paged by `page` or by an opaque keyset `cursor`, or one entry per asset.

Why a cursor: OFFSET costs a walk over every skipped row; a keyset cursor (the last row's sort value and its
position in the store, `Rows.after`) is one index seek at any depth and stays right while rows arrive: rows
inserted behind it are not seen, rows ahead of it are, none twice. NULL sort values (a missing price, market cap or
volume) sort lowest: last when descending, first ascending.

Why cached answers: records change only when a transform commits, and every commit bumps the store's data version
in the same write. So a total (a COUNT over a million rows costs more than the page) and a whole encoded page are
kept per (query, data version): a repeated request costs one small read and no encoding; any commit invalidates
them all at once.
"""

from __future__ import annotations

import json
import math

import flask

from common.api.cache import VersionedCache
from common.api.params import DataRequest, encode_cursor, parse_data_request
from common.store import DataQuery, RecordStore

MAX_CACHED_TOTALS = 512
MAX_CACHED_PAGES = 256
MAX_CACHED_PAGE_BYTES = 32 * 2**20


def _filters(view: str | None, query: DataQuery) -> tuple:
    return view, tuple(sorted(query.wanted_symbols())), query.source, query.asset_id, query.from_at, query.to_at


def data_blueprint(store: RecordStore) -> flask.Blueprint:
    blueprint = flask.Blueprint("data", __name__)
    totals, pages = VersionedCache(MAX_CACHED_TOTALS), VersionedCache(MAX_CACHED_PAGES, MAX_CACHED_PAGE_BYTES)

    def total(version: int, view: str | None, query: DataQuery) -> int:
        key = _filters(view, query)
        found = totals.get(version, key)
        if found is None:
            found = store.count_assets(query) if view == "latest" else store.count_matching(query)
            totals.put(version, key, found)
        return found

    @blueprint.get("/data")
    def data():
        request = parse_data_request(flask.request.args)
        query = request.query
        version = store.data_version()  # read first: a commit after it makes what we compute stale, never wrong
        key = (*_filters(request.view, query), query.sort_by, query.descending, query.page, query.limit,
               query.after, request.cursor)
        body = pages.get(version, key)
        if body is None:
            count = total(version, request.view, query)
            answer = _latest(store, query, count) if request.view == "latest" else _rows(store, request, count)
            body = json.dumps(answer, separators=(",", ":")).encode()
            pages.put(version, key, body, len(body))
        return flask.Response(body, mimetype="application/json")

    return blueprint


def _rows(store: RecordStore, request: DataRequest, total: int) -> dict:
    query = request.query
    rows = store.read_page(query)
    pagination: dict = {"limit": query.limit, "total": total}
    if not request.cursor:
        pagination = {"page": query.page, **pagination, "pages": math.ceil(total / query.limit)}
    if rows.after is not None:
        pagination["next_cursor"] = encode_cursor(query, rows.after)
    return {"data": rows.items, "pagination": pagination}


def _latest(store: RecordStore, query: DataQuery, total: int) -> dict:
    """One entry per asset: its newest observation, and each source's newest price beside it."""
    assets: dict[str, dict] = {}
    for item in store.latest_by_source(query):  # ordered by asset_id, then source
        entry = assets.get(item["asset_id"])
        if entry is None:
            entry = assets[item["asset_id"]] = {"asset_id": item["asset_id"], "sources": {}}
        if item["source"] in entry["sources"]:
            continue  # two source ids of one asset at one instant: the first by source_id
        entry["sources"][item["source"]] = {"price_usd": item["price_usd"], "observed_at": item["observed_at"]}
        if item["observed_at"] > entry.get("observed_at", ""):
            entry.update(symbol=item["symbol"], name=item["name"], observed_at=item["observed_at"],
                         price_usd=item["price_usd"], source=item["source"])
    data = [{"asset_id": e["asset_id"], "symbol": e["symbol"], "name": e["name"], "observed_at": e["observed_at"],
             "price_usd": e["price_usd"], "source": e["source"], "sources": e["sources"]} for e in assets.values()]
    return {"data": data, "pagination": {"page": query.page, "limit": query.limit, "total": total,
                                         "pages": math.ceil(total / query.limit)}}
