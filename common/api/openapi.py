"""GET /openapi.json: the OpenAPI 3.1 description of the public API, kept next to the code it describes.

Why a Python dict and not a generated document: the API validates its parameters by hand (`common.api.params`),
so there is no framework to generate it from; the enums come from the same constants the handlers use, and the
tests hold the document to the code (openapi-spec-validator for its form, schemathesis for every answer).
Every response documents the three traceability headers (`common.api.trace`, set in `common.api.app`) and every
JSON object body its `meta` block; every error is the envelope of `common.api.envelope`.
"""

from __future__ import annotations

import json

import flask

from common.api.params import MAX_CURSOR, MAX_LIMIT, MAX_PAGE, VIEWS
from common.api.runs import MAX_CURSOR_CHARS, MAX_LIMIT as MAX_RUNS_LIMIT, STAGES
from common.sources import SOURCE_NAMES
from common.store import RUN_STATUSES, SORTABLE_FIELDS

JSON = "application/json"
HEALTH_JSON = "application/health+json"
PROMETHEUS_TEXT = "text/plain"
HTML = "text/html"
_REF = "#/components/schemas/"


def _ref(name: str) -> dict:
    return {"$ref": _REF + name}


def _headers(*extra: str) -> dict:
    headers = {name: {"$ref": f"#/components/headers/{name}"} for name in ("X-Request-ID", "X-Run-ID",
                                                                          "X-API-Latency-Ms")}
    headers.update({name: {"$ref": f"#/components/headers/{name}"} for name in extra})
    return headers


def _json(description: str, schema: dict, *headers: str, media: str = JSON) -> dict:
    return {"description": description, "headers": _headers(*headers), "content": {media: {"schema": schema}}}


def _error(description: str, *headers: str) -> dict:
    return _json(description, _ref("Error"), *headers)


def _query(name: str, description: str, schema: dict) -> dict:
    """An optional query parameter. The handlers strip blanks and read an empty value as absent (the default), so
    the document says so: a blank value is one of the accepted forms."""
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"anyOf": [schema, _BLANK]}}


# The answers every operation may give whatever its parameters: a bad query (unknown, repeated or malformed
# parameter), a request target over the limit, the store down.
_COMMON_ERRORS = {
    "400": _error("A query parameter is unknown, repeated or invalid; the message names it"),
    "414": _error("The request target is longer than the API accepts"),
    "503": _error("The data store is unavailable; retry later"),
}

_BLANK = {"type": "string", "pattern": "^[ \\t]*$", "description": "empty: the default"}
_ISO_8601 = {"type": "string", "pattern": "^[ \\t]*[0-9]{4}-[0-9]{2}-[0-9]{2}",
             "description": "an ISO 8601 date or date-time; no zone means UTC", "examples": ["2026-01-01T00:00:00Z"]}
_NULLABLE_NUMBER = {"type": ["number", "null"]}
_NULLABLE_STRING = {"type": ["string", "null"]}

SCHEMAS: dict = {
    "Meta": {"type": "object", "description": "The three traceability values, the same as the headers",
             "required": ["request_id", "run_id", "latency_ms"],
             "properties": {"request_id": {"type": "string"}, "run_id": {"type": "string"},
                            "latency_ms": {"type": "number", "minimum": 0}}},
    "Error": {"type": "object", "required": ["error", "meta"],
              "properties": {"error": {"type": "object", "required": ["code", "message", "request_id"],
                                       "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                                                      "request_id": {"type": "string"}}},
                             "pass_id": {**_NULLABLE_STRING, "description": "409 from /refresh: the running pass"},
                             "meta": _ref("Meta")}},
    "Record": {"type": "object", "description": "One normalized observation of one asset by one source",
               "required": ["source", "source_id", "observed_at", "asset_id"],
               "properties": {"idempotency_key": {"type": "string"}, "source": {"enum": list(SOURCE_NAMES)},
                              "source_id": {"type": "string"}, "symbol": _NULLABLE_STRING,
                              "observed_at": {"type": "string"}, "asset_id": {"type": "string"},
                              "name": _NULLABLE_STRING, "price_usd": _NULLABLE_NUMBER, "open_usd": _NULLABLE_NUMBER,
                              "high_usd": _NULLABLE_NUMBER, "low_usd": _NULLABLE_NUMBER,
                              "market_cap_usd": _NULLABLE_NUMBER, "volume_24h_usd": _NULLABLE_NUMBER,
                              "ingested_at": _NULLABLE_STRING, "run_id": _NULLABLE_STRING}},
    "LatestEntry": {"type": "object", "description": "view=latest: an asset's newest observation and each source's",
                    "required": ["asset_id", "observed_at", "source", "sources"],
                    "properties": {"asset_id": {"type": "string"}, "symbol": _NULLABLE_STRING,
                                   "name": _NULLABLE_STRING, "observed_at": {"type": "string"},
                                   "price_usd": _NULLABLE_NUMBER, "source": {"enum": list(SOURCE_NAMES)},
                                   "sources": {"type": "object", "additionalProperties": {
                                       "type": "object", "required": ["price_usd", "observed_at"],
                                       "properties": {"price_usd": _NULLABLE_NUMBER,
                                                      "observed_at": {"type": "string"}}}}}},
    "DataPagination": {"type": "object", "required": ["limit", "total"],
                       "properties": {"page": {"type": "integer", "minimum": 1},
                                      "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                                      "total": {"type": "integer", "minimum": 0},
                                      "pages": {"type": "integer", "minimum": 0},
                                      "next_cursor": {"type": "string", "description": "absent on the last page"}}},
    "DataPage": {"type": "object", "required": ["data", "pagination", "meta"],
                 "properties": {"data": {"type": "array", "items": {"anyOf": [_ref("Record"), _ref("LatestEntry")]}},
                                "pagination": _ref("DataPagination"), "meta": _ref("Meta")}},
    "Run": {"type": "object", "required": ["run_id", "stage", "source", "status", "started_at"],
            "properties": {"run_id": {"type": "string"}, "stage": {"type": "string"}, "source": _NULLABLE_STRING,
                           "status": {"enum": list(RUN_STATUSES)}, "started_at": {"type": "string"},
                           "finished_at": _NULLABLE_STRING, "duration_ms": {"type": ["integer", "null"]},
                           "rows_in": {"type": "integer"}, "rows_out": {"type": "integer"},
                           "quarantined": {"type": "integer"}, "checkpoint": {"type": ["object", "null"]},
                           "summary": {"type": "object"}, "warnings": {"type": "integer"},
                           "errors": {"type": "integer"}}},
    "RunList": {"type": "object", "required": ["runs", "pagination", "meta"],
                "properties": {"runs": {"type": "array", "items": _ref("Run")},
                               "pagination": {"type": "object", "required": ["limit"],
                                              "properties": {"limit": {"type": "integer"},
                                                             "next_cursor": {"type": "string"}}},
                               "meta": _ref("Meta")}},
    "RunEntry": {"type": "object", "required": ["run", "meta"],
                 "properties": {"run": _ref("Run"), "meta": _ref("Meta")}},
    "Durations": {"type": "object", "required": ["avg", "p95", "runs"],
                  "properties": {"avg": {"type": ["integer", "null"]}, "p95": {"type": ["integer", "null"]},
                                 "runs": {"type": "integer"}}},
    "LastSuccess": {"type": ["object", "null"], "required": ["run_id", "at"],
                    "properties": {"run_id": {"type": "string"}, "at": {"type": "string"}}},
    "StageFigures": {"type": "object", "required": ["runs", "failed_runs", "error_rate", "duration_ms",
                                                    "last_success"],
                     "properties": {"runs": {"type": "integer"}, "failed_runs": {"type": "integer"},
                                    "error_rate": _NULLABLE_NUMBER, "duration_ms": _ref("Durations"),
                                    "last_success": _ref("LastSuccess")}},
    "Stats": {"type": "object", "required": ["sources", "stages", "overall", "window", "generated_at", "meta"],
              "properties": {
                  "sources": {"type": "object", "additionalProperties": {"allOf": [_ref("StageFigures"), {
                      "type": "object", "required": ["records", "raw_batches", "quarantine_unresolved"],
                      "properties": {"records": {"type": "integer"}, "quarantine_unresolved": {"type": "integer"},
                                     "raw_batches": {"type": "object", "required": ["pending", "done"],
                                                     "properties": {"pending": {"type": "integer"},
                                                                    "done": {"type": "integer"}}}}}]}},
                  "stages": {"type": "object", "additionalProperties": _ref("StageFigures")},
                  "overall": {"type": "object", "required": ["last_successful_pass", "pass_duration_ms",
                                                             "error_rate_24h", "error_rate_7d"],
                              "properties": {"last_successful_pass": _ref("LastSuccess"),
                                             "pass_duration_ms": _ref("Durations"),
                                             "error_rate_24h": _NULLABLE_NUMBER, "error_rate_7d": _NULLABLE_NUMBER}},
                  "window": {"type": "object"}, "generated_at": {"type": "string"}, "meta": _ref("Meta")}},
    "Health": {"type": "object", "description": "draft-inadarei-api-health-check; a 503 also carries `error`",
               "required": ["status", "description", "meta"],
               "properties": {"status": {"enum": ["pass", "warn", "fail"]}, "description": {"type": "string"},
                              "checks": {"type": "object", "additionalProperties": {"type": "array", "items": {
                                  "type": "object", "required": ["componentType", "status", "time"],
                                  "properties": {"componentType": {"type": "string"},
                                                 "status": {"enum": ["pass", "warn", "fail"]},
                                                 "observedValue": {}, "observedUnit": {"type": "string"},
                                                 "time": {"type": "string"}, "output": {"type": "string"}}}}},
                              "error": {"type": "object"}, "meta": _ref("Meta")}},
    "Refreshed": {"type": "object", "required": ["pass_id", "pass", "meta"],
                  "properties": {"pass_id": {"type": "string"}, "pass": _ref("Run"),
                                 "location": {"type": "string"}, "meta": _ref("Meta")}},
}

HEADERS: dict = {
    "X-Request-ID": {"description": "The caller's X-Request-ID when safe ([A-Za-z0-9._-]{1,64}), else generated",
                     "required": True, "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}},
    "X-Run-ID": {"description": "The last successful pass (else transform), `none` or `unknown`", "required": True,
                 "schema": {"type": "string"}},
    "X-API-Latency-Ms": {"description": "Milliseconds the API took, two decimals", "required": True,
                         "schema": {"type": "string", "pattern": "^[0-9]+\\.[0-9]{2}$"}},
    "WWW-Authenticate": {"description": "Bearer challenge", "required": True, "schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds until a refresh is accepted", "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"}},
    "Location": {"description": "/runs/<pass id>", "required": True, "schema": {"type": "string"}},
}

_DATA_PARAMS = [
    _query("page", f"Page number (1..{MAX_PAGE}); not with cursor", {"type": "integer", "minimum": 1,
                                                                      "maximum": MAX_PAGE}),
    _query("limit", f"Rows per page (1..{MAX_LIMIT}, default 100)", {"type": "integer", "minimum": 1,
                                                                      "maximum": MAX_LIMIT}),
    _query("cursor", "pagination.next_cursor of the previous page, unchanged", {"type": "string",
                                                                                "maxLength": MAX_CURSOR}),
    _query("symbol", "A ticker or comma-separated tickers, case-insensitive", {"type": "string"}),
    _query("source", "Only this source's records", {"enum": list(SOURCE_NAMES)}),
    _query("asset_id", "A lowercase asset id such as btc-bitcoin", {"type": "string",
                                                                    "pattern": "^[ \\t]*[a-z0-9-]{1,100}[ \\t]*$"}),
    _query("from", "observed_at from (inclusive), ISO 8601", _ISO_8601),
    _query("to", "observed_at until (exclusive), ISO 8601", _ISO_8601),
    _query("sort_by", "Sort field (default observed_at)", {"enum": list(SORTABLE_FIELDS)}),
    _query("order", "Sort direction (default desc)", {"enum": ["asc", "desc"]}),
    _query("view", "latest: one entry per asset; excludes cursor, sort_by, order, from, to", {"enum": list(VIEWS)}),
]
_RUNS_PARAMS = [
    _query("stage", "Only runs of this stage", {"enum": list(STAGES)}),
    _query("source", "Only runs of this source", {"enum": list(SOURCE_NAMES)}),
    _query("status", "Only runs with this status", {"enum": list(RUN_STATUSES)}),
    _query("limit", f"Runs per page (1..{MAX_RUNS_LIMIT}, default 50)", {"type": "integer", "minimum": 1,
                                                                         "maximum": MAX_RUNS_LIMIT}),
    _query("cursor", "pagination.next_cursor of the previous page", {"type": "string",
                                                                     "maxLength": MAX_CURSOR_CHARS}),
]

_STATUS_PARAMS = [
    _query("symbol", "The asset shown, by ticker (default BTC); a value that is not a ticker is said so on the page",
           {"type": "string"}),
    _query("asset", "The asset shown, by asset id (wins over symbol)", {"type": "string"}),
]
_STATUS_PAGE = {"200": _json("The page, rendered on the server (readable without JavaScript)", {"type": "string"},
                             media=HTML)}


def _get(operation_id: str, summary: str, responses: dict, parameters: list | None = None) -> dict:
    return {"get": {"operationId": operation_id, "summary": summary, "parameters": parameters or [],
                    "responses": dict(sorted({**_COMMON_ERRORS, **responses}.items()))}}


def document() -> dict:
    """The OpenAPI 3.1 document (a fresh dict: callers may change it)."""
    health_body = _ref("Health")
    paths = {
        "/data": _get("listData", "Normalized records, paged by page or cursor, or one entry per asset",
                      {"200": _json("A page of records (or of assets with view=latest)", _ref("DataPage"))},
                      _DATA_PARAMS),
        "/runs": _get("listRuns", "The run ledger, newest first, cursor-paginated",
                      {"200": _json("A page of runs (without their summaries)", _ref("RunList"))}, _RUNS_PARAMS),
        "/runs/{run_id}": _get("getRun", "One run with its full summary",
                               {"200": _json("The run", _ref("RunEntry")), "404": _error("No run with that id")},
                               [{"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}]),
        "/stats": _get("getStats", "Per-source and overall figures of the ETL",
                       {"200": _json("The figures (cached up to 5 s)", _ref("Stats"))}),
        "/metrics": _get("getMetrics", "Prometheus text exposition format",
                         {"200": _json("The metrics", {"type": "string"}, media=PROMETHEUS_TEXT)}),
        "/health": _get("getHealth", "Store, scheduler heartbeat and per-source freshness",
                        {"200": _json("pass or warn", health_body, media=HEALTH_JSON),
                         "503": _json("fail: the store is down", health_body, media=HEALTH_JSON)}),
        "/health/live": _get("getLiveness", "The process answers (touches no dependency)",
                             {"200": _json("pass", health_body, media=HEALTH_JSON)}),
        "/": _get("getStatusPage", "The status page (HTML; the same as /status)", _STATUS_PAGE, _STATUS_PARAMS),
        "/status": _get("getStatus", "The status page: source tiles, last passes, rows per pass, one asset's prices",
                        _STATUS_PAGE, _STATUS_PARAMS),
        "/status/runs/{run_id}": _get("getRunPage", "One run as an HTML page (errors, warnings, drift, stages)",
                                      {"200": _json("The run page", {"type": "string"}, media=HTML),
                                       "404": _error("No run with that id")},
                                      [{"name": "run_id", "in": "path", "required": True,
                                        "schema": {"type": "string"}}]),
        "/status/assets/{name}": _get(
            "getStatusAsset", "The status page's stylesheet or script (cached for a year: the URL carries a digest)",
            {"200": {"description": "The file", "headers": _headers(),
                     "content": {"text/css": {"schema": {"type": "string"}},
                                 "text/javascript": {"schema": {"type": "string"}}}},
             "404": _error("No such asset")},
            [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
             _query("v", "The file's digest, as the page links it (any value is accepted)", {"type": "string"})]),
        "/openapi.json": _get("getOpenApi", "This document",
                              {"200": _json("The OpenAPI 3.1 document", {"type": "object"})}),
        "/refresh": {"post": {
            "operationId": "refresh",
            "summary": "Run one pipeline pass within the request (bearer JWT: HS256, or a Google OIDC ID token)",
            "security": [{"bearerJwt": []}],
            "responses": {
                "200": _json("The pass ran to its end", _ref("Refreshed")),
                "202": _json("The budget ran out first; the pass is recorded at Location", _ref("Refreshed"),
                             "Location"),
                "401": _error("Missing, malformed, expired or otherwise invalid token", "WWW-Authenticate"),
                "409": _error("A pass is already running (pass_id, Location when known)"),
                "414": _COMMON_ERRORS["414"],
                "429": _error("At most one refresh per REFRESH_MIN_S", "Retry-After"),
                "503": _error("Refresh disabled (no JWT_SECRET nor OIDC), Google's keys or the store unavailable"),
            }}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "crypto-etl API", "version": "1",
                 "description": "Every answer carries X-Request-ID, X-Run-ID and X-API-Latency-Ms; every JSON "
                                "object body a `meta` block with the same values; errors are "
                                "{error: {code, message, request_id}, meta}. Unknown paths answer 404 and "
                                "other methods 405 (with Allow), in the same error shape."},
        "paths": paths,
        "components": {"schemas": SCHEMAS, "headers": HEADERS,
                       "securitySchemes": {"bearerJwt": {
                           "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                           "description": "An HS256 JWT from `etl token` (JWT_SECRET), or a Google-signed OIDC ID "
                                          "token (RS256) for REFRESH_OIDC_AUDIENCE from an account in "
                                          "REFRESH_OIDC_EMAILS (Cloud Scheduler)"}}},
    }


def openapi_blueprint() -> flask.Blueprint:
    blueprint = flask.Blueprint("openapi", __name__)
    body = json.dumps(document(), separators=(",", ":")).encode()

    @blueprint.get("/openapi.json")
    def openapi():
        # Streamed, so the app's `meta` splice leaves it alone: OpenAPI allows no unknown key at the top level.
        return flask.Response(iter([body]), mimetype=JSON)

    return blueprint
