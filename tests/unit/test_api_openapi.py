"""GET /openapi.json: a valid OpenAPI 3.1 document that describes every route, parameter and response the app has.

The document is written by hand (the API validates its parameters itself), so these tests hold it to the code:
the routes, methods and query parameters it lists are the app's, and every response documents the three
traceability headers. Whether the answers really conform is schemathesis's job (tests/e2e/test_api_schemathesis.py).
"""

from __future__ import annotations

import pytest
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from common.api.app import create_app
from common.api.params import DATA_PARAMS
from common.api.runs import RUNS_PARAMS
from common.wiring import Wiring

TRACE_HEADERS = {"X-Request-ID", "X-Run-ID", "X-API-Latency-Ms"}


@pytest.fixture
def app(settings, store):
    return create_app(Wiring(settings=settings, store=store))


@pytest.fixture
def spec(app):
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert TRACE_HEADERS <= set(response.headers.keys())
    return response.get_json()


def test_the_served_document_is_valid_openapi_3_1(spec):
    assert spec["openapi"].startswith("3.1")
    validate(spec)  # raises on any violation of the OpenAPI 3.1 schema


def test_the_validator_does_refuse_a_broken_document(spec):
    """The validation above can fail: an unknown top-level key (such as a spliced-in `meta`) is refused."""
    with pytest.raises(OpenAPIValidationError):
        validate({**spec, "meta": {"request_id": "x"}})


def _routes(app) -> set[tuple[str, str]]:
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        found |= {(path, method.lower()) for method in rule.methods - {"HEAD", "OPTIONS"}}
    return found


def test_every_route_of_the_app_is_documented_and_nothing_else(app, spec):
    documented = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert documented == _routes(app)


@pytest.mark.parametrize("path, names", [("/data", DATA_PARAMS), ("/runs", RUNS_PARAMS)])
def test_every_query_parameter_the_handler_accepts_is_documented(spec, path, names):
    assert [p["name"] for p in spec["paths"][path]["get"]["parameters"]] == list(names)


def test_every_response_documents_the_trace_headers_and_errors_use_the_envelope(spec):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            always = {"414", "503"} | ({"400"} if method == "get" else set())  # POST /refresh reads no query
            assert always <= set(operation["responses"]), (path, method)
            for status, response in operation["responses"].items():
                assert TRACE_HEADERS <= set(response["headers"]), (path, method, status)
                schema = next(iter(response["content"].values()))["schema"]
                if status >= "400" and path != "/health":
                    assert schema == {"$ref": "#/components/schemas/Error"}, (path, method, status)


def test_refresh_documents_its_auth_answers(spec):
    responses = spec["paths"]["/refresh"]["post"]["responses"]
    assert {"200", "202", "401", "409", "429", "503"} <= set(responses)
    assert "WWW-Authenticate" in responses["401"]["headers"] and "Retry-After" in responses["429"]["headers"]
    assert "Location" in responses["202"]["headers"]
    assert spec["components"]["securitySchemes"]["bearerJwt"]["scheme"] == "bearer"
