"""Hostile requests against real servers on loopback: `etl serve` (gunicorn with the JSON worker) and
functions-framework processes. What the application answers is JSON in one shape; what functions-framework's
gunicorn rejects before any application code runs is pinned here exactly as documented in the README."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest
import requests

from common.api.limits import MAX_TARGET_BYTES
from tests.e2e.conftest import Stack, etl_cli, free_port, stage_env

BIG_HEADER = b"X-Request-ID: " + b"a" * 10_240
HOSTILE = {  # name: (request head lines after the request line, status)
    "10 KB X-Request-ID": ([BIG_HEADER], 431),
    "CR inside a header value": ([b"X-Request-ID: a\rb"], 400),
    "NUL inside a header value": ([b"X-Note: a\x00b"], 400),
    "a header name with a space": ([b"X Bad: 1"], 400),
    "101 header fields": ([b"X-H%d: 1" % i for i in range(101)], 431),
}


def raw_request(port: int, request_line: bytes, lines: list[bytes] = ()) -> tuple[int, dict, bytes]:
    """Send bytes as they are (requests would refuse most of these) and read the whole answer."""
    head = b"\r\n".join([request_line, b"Host: 127.0.0.1", *lines, b"Connection: close"]) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    header_block, _, body = rest.partition(b"\r\n\r\n")
    headers = {}
    for line in header_block.split(b"\r\n"):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def assert_json_error(answer: tuple[int, dict, bytes], status: int, code: str | None = None) -> dict:
    got, headers, body = answer
    assert got == status, body[:300]
    assert headers["content-type"].startswith("application/json"), body[:300]
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message", "request_id"} and headers["x-request-id"] == error["request_id"]
    assert code is None or error["code"] == code
    assert b"Traceback" not in body and b"aaaaaaaaaa" not in body
    return error


def wait_until_answering(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(url, timeout=2)
            return
        except requests.ConnectionError:
            assert time.monotonic() < deadline and process.poll() is None, "server did not start"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def etl_serve(tmp_path_factory):
    port = free_port()
    server = subprocess.Popen(etl_cli("serve", "--port", str(port)), env=stage_env(tmp_path_factory.mktemp("serve")))
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/health", server)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def functions(tmp_path_factory):
    stack = Stack(stage_env(tmp_path_factory.mktemp("ff")))
    try:
        yield {name: int(stack.start(name).rsplit(":", 1)[1]) for name in ("http_api", "transform_load")}
    finally:
        stack.stop()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_etl_serve_answers_what_gunicorn_rejects_in_json(etl_serve, case):
    lines, status = HOSTILE[case]
    error = assert_json_error(raw_request(etl_serve, b"GET /health HTTP/1.1", lines), status)
    assert error["request_id"] != "a" * 10_240


def test_etl_serve_answers_a_long_request_line_and_bad_framing_in_json(etl_serve):
    target = b"/data?symbol=" + b"A" * 9216
    assert_json_error(raw_request(etl_serve, b"GET " + target + b" HTTP/1.1"), 414, "request_uri_too_long")
    assert_json_error(raw_request(etl_serve, b"GET /health HTTP/1.1\nX-A: 1"), 400, "bad_request")
    assert_json_error(raw_request(etl_serve, b"GET /he alth HTTP/1.1"), 400, "bad_request")


@pytest.mark.parametrize("value", ["%C2%B2", "%D9%A3", "9" * 5000])
def test_unicode_digits_and_huge_numbers_are_400_on_every_server(etl_serve, functions, value):
    for port in (etl_serve, functions["http_api"]):
        answer = raw_request(port, f"GET /data?limit={value} HTTP/1.1".encode())
        assert "limit must be an integer" in assert_json_error(answer, 400, "invalid_input")["message"]


def test_under_functions_framework_the_application_bounds_the_request_target(functions):
    target = b"/data?symbol=" + b"A" * (MAX_TARGET_BYTES + 1024)
    for port in functions.values():
        assert_json_error(raw_request(port, b"GET " + target + b" HTTP/1.1"), 414, "request_uri_too_long")
    assert_json_error(raw_request(functions["http_api"], b"GET /favicon.ico HTTP/1.1"), 404, "not_found")
    assert_json_error(raw_request(functions["transform_load"], b"GET / HTTP/1.1"), 405, "method_not_allowed")


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_under_functions_framework_gunicorn_answers_framing_errors_itself(functions, case):
    """Documented limit, not a wish: functions-framework builds its own gunicorn (no worker class, no limits,
    no GUNICORN_CMD_ARGS), and gunicorn answers these in HTML before any application code runs."""
    lines, status = HOSTILE[case]
    got, headers, body = raw_request(functions["http_api"], b"GET /health HTTP/1.1", lines)
    assert (got, headers["content-type"]) == (status, "text/html")
    assert b"aaaaaaaaaa" not in body


def test_a_hostile_request_id_is_never_echoed_by_a_server(etl_serve, functions):
    for port in (etl_serve, *functions.values()):
        for given in (b"x" * 65, b"<script>", b"a;b", b"\xc3\xa9"):
            _, headers, _ = raw_request(port, b"GET /health HTTP/1.1", [b"X-Request-ID: " + given])
            assert headers["x-request-id"].encode() != given and len(headers["x-request-id"]) == 32


@pytest.mark.parametrize("uri", ["mongodb://", "mongodb://user:secret@"])
def test_a_malformed_mongodb_uri_stops_the_cli_with_a_clear_message(tmp_path, uri):
    env = stage_env(tmp_path, MONGODB_URI=uri, STORE_TIMEOUT_S="0.2")
    for args in (("run", "--source", "b"), ("serve", "--port", str(free_port()))):
        done = subprocess.run(etl_cli(*args), env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, (args, done.stderr[-2000:])
        assert "Traceback" not in done.stderr and "secret" not in done.stderr + done.stdout
        error = json.loads(done.stderr.strip().splitlines()[-1])["error"]
        assert error["code"] in ("config_error", "store_unavailable"), error


def test_a_malformed_mongodb_uri_is_a_json_error_from_the_functions(tmp_path):
    stack = Stack(stage_env(tmp_path, MONGODB_URI="mongodb://", STORE_TIMEOUT_S="0.2"))
    try:
        for name, method in (("http_api", requests.get), ("transform_load", requests.post)):
            response = method(stack.start(name) + ("/health" if name == "http_api" else "/"), timeout=30)
            assert response.status_code in (500, 503) and response.headers["Content-Type"] == "application/json"
            assert response.json()["error"]["code"] in ("config_error", "store_unavailable")
    finally:
        stack.stop()
