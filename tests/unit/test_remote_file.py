"""Source B from object storage (`gs://`) or a web server (`https://`), read through the CSV reader in byte ranges.

The servers are `responses` fakes that honour Range like GCS and a static web server do; the real emulator and a real
range-serving server are in tests/e2e/test_source_b_object.py."""

from __future__ import annotations

import hashlib
import re

import pytest
import requests
import responses

from common.errors import SourceError
from common.sources.csv_file import CsvFile, FileStat
from common.sources.csv_position import CsvScan, resume
from common.sources.remote_file import RemoteOptions
from tests.conftest import csv_lines

GCS = "http://gcs.test"
HEADER = "SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap\n"


class FakeObject:
    """One object served over HTTP with Range support; every request's Range is recorded."""

    def __init__(self, data: bytes, generation: int = 1000) -> None:
        self.data, self.generation = data, generation
        self.ranges: list[tuple[int, int]] = []
        self.auth: list[str | None] = []
        self.honour_range = True
        self.etag = True

    def put(self, data: bytes) -> None:
        self.data, self.generation = data, self.generation + 1

    def metadata(self, request):
        self.auth.append(request.headers.get("Authorization"))
        return 200, {}, f'{{"size": "{len(self.data)}", "generation": "{self.generation}"}}'

    def media(self, request):
        self.auth.append(request.headers.get("Authorization"))
        wanted = request.headers.get("Range")
        if not wanted or not self.honour_range:
            return 200, self._validators(), self.data
        start, end = (int(x) for x in re.fullmatch(r"bytes=(\d+)-(\d+)", wanted).groups())
        self.ranges.append((start, end))
        size = len(self.data)
        if start >= size:
            return 416, {"Content-Range": f"bytes */{size}"}, b""
        end = min(end, size - 1)
        return 206, {"Content-Range": f"bytes {start}-{end}/{size}", **self._validators()}, self.data[start:end + 1]

    def _validators(self) -> dict:
        return {"ETag": f'"{self.generation}"'} if self.etag else {}


def serve_gcs(obj: FakeObject, bucket: str = "bkt", name: str = "dir/h.csv") -> None:
    path = f"{GCS}/storage/v1/b/{bucket}/o/{name.replace('/', '%2F')}"
    responses.add_callback(responses.GET, re.compile(re.escape(path) + r"\?alt=media.*"), obj.media)
    responses.add_callback(responses.GET, re.compile(re.escape(path) + r"(\?(?!alt=media).*)?$"), obj.metadata)


def csv_bytes(days: int = 30, seed: int = 1) -> bytes:
    return (HEADER + "".join(line + "\n" for line in csv_lines(coins=2, days=days, seed=seed))).encode()


def scan(reader: CsvFile, saved: dict | None = None):
    _, data_start = reader.read_header()
    stat = reader.stat()
    start = resume(reader, saved, data_start, stat)
    found = CsvScan(reader, start, stat)
    chunks = list(found)
    return chunks, found, start


def options(**overrides) -> RemoteOptions:
    return RemoteOptions(**{"storage_host": GCS, "window_bytes": 1024, "sleep": lambda s: None, **overrides})


@responses.activate
def test_gcs_object_reads_like_the_local_file_in_bounded_ranges_with_generation_as_identity(tmp_path):
    data = csv_bytes()
    local = tmp_path / "h.csv"
    local.write_bytes(data)
    obj = FakeObject(data, generation=1_700_000_000_123_456)
    serve_gcs(obj)
    remote = CsvFile("gs://bkt/dir/h.csv", chunk_rows=25, max_line_bytes=1000, remote=options())
    here = CsvFile(str(local), chunk_rows=25, max_line_bytes=1000)
    assert remote.read_header() == here.read_header()
    assert remote.stat() == FileStat(len(data), 1_700_000_000_123_456)
    got, _, _ = scan(remote)
    want, _, _ = scan(here)
    assert [(c.start, c.end, c.digest, c.text) for c, _ in got] == [(c.start, c.end, c.digest, c.text) for c, _ in want]
    assert got[-1][1].identity == want[-1][1].identity  # the head's fingerprint is the same hash as a local file's
    assert obj.ranges and all(end - start + 1 <= 1024 for start, end in obj.ranges)  # never more than one window


@responses.activate
def test_gcs_append_reads_only_new_lines_and_a_same_size_correction_rereads_its_chunk():
    data = csv_bytes(days=700)  # past the 64 KB head, whose change would count as a replaced file
    assert len(data) > 2 * 64 * 1024
    obj = FakeObject(data)
    serve_gcs(obj)
    reader = CsvFile("gs://bkt/dir/h.csv", chunk_rows=100, max_line_bytes=1000, remote=options(window_bytes=8192))
    chunks, found, _ = scan(reader)
    saved = found.position.to_dict()

    obj.put(data + b"99,Extra,XTR,2020-01-01 00:00:00,1,1,1,1,1,1\n")  # re-uploaded with one more line
    more, found, start = scan(reader, saved)
    assert start.reason is None and [c.text[:8] for c, _ in more] == ["99,Extra"]
    saved = found.position.to_dict()

    obj.ranges.clear()
    same = scan(reader, saved)[0]
    size = len(obj.data)  # same size and generation: the header line and a probe at the end, no data byte
    assert same == [] and obj.ranges == [(0, 8191), (size, size + 8191)]

    middle = obj.data.index(b"\n", len(obj.data) // 2) + 1  # first byte of a line in the middle
    corrected = obj.data[:middle] + obj.data[middle:].replace(b",", b";", 1)  # same size, new generation
    assert len(corrected) == len(obj.data)
    obj.put(corrected)
    again, found, start = scan(reader, saved)
    assert start.verify and start.reason is None and found.rewritten and len(again) == 1
    assert again[0][0].start <= middle < again[0][0].end


@responses.activate
def test_https_etag_is_the_identity_and_a_rewrite_of_the_head_counts_as_replaced():
    obj = FakeObject(csv_bytes(seed=1))
    responses.add_callback(responses.GET, "https://files.test/h.csv", obj.media)
    reader = CsvFile("https://files.test/h.csv", chunk_rows=25, max_line_bytes=1000, remote=options())
    stat = reader.stat()
    assert stat.size == len(obj.data) and stat.mtime_ns == int(hashlib.sha256(b'"1000"').hexdigest()[:15], 16)
    _, found, _ = scan(reader)
    obj.put(csv_bytes(seed=2))
    again, _, start = scan(reader, found.position.to_dict())
    assert "replaced" in start.reason and again[0][0].first_row == 1


@responses.activate
def test_a_server_without_range_support_is_refused_with_a_clear_error():
    obj = FakeObject(csv_bytes())
    obj.honour_range = False
    responses.add_callback(responses.GET, "https://files.test/h.csv", obj.media)
    reader = CsvFile("https://files.test/h.csv", chunk_rows=25, max_line_bytes=1000, remote=options())
    with pytest.raises(SourceError, match="does not support Range requests"):
        reader.stat()
    with pytest.raises(SourceError, match="does not support Range requests"):
        reader.read_header()


@responses.activate
def test_a_web_server_without_etag_or_last_modified_is_refused():
    obj = FakeObject(csv_bytes())
    obj.etag = False
    responses.add_callback(responses.GET, "https://files.test/h.csv", obj.media)
    reader = CsvFile("https://files.test/h.csv", chunk_rows=25, max_line_bytes=1000, remote=options())
    with pytest.raises(SourceError, match="neither ETag nor Last-Modified"):
        reader.stat()


@responses.activate
def test_last_modified_stands_in_for_a_missing_etag():
    obj = FakeObject(csv_bytes())
    obj.etag = False

    def media(request):
        status, headers, body = obj.media(request)
        return status, {**headers, "Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT"}, body

    responses.add_callback(responses.GET, "https://files.test/h.csv", media)
    reader = CsvFile("https://files.test/h.csv", chunk_rows=25, max_line_bytes=1000, remote=options())
    assert reader.stat() == FileStat(len(obj.data), 1_445_412_480 * 10**9)


@responses.activate
def test_missing_object_and_forbidden_bucket_say_what_to_fix():
    responses.get(f"{GCS}/storage/v1/b/bkt/o/nope.csv", status=404, json={"error": {"message": "No such object"}})
    responses.get(f"{GCS}/storage/v1/b/locked/o/h.csv", status=403, json={"error": {"message": "denied"}})
    with pytest.raises(SourceError, match=r"not found: gs://bkt/nope.csv"):
        CsvFile("gs://bkt/nope.csv", 25, 1000, remote=options()).stat()
    with pytest.raises(SourceError, match=r"403.*roles/storage.objectViewer"):
        CsvFile("gs://locked/h.csv", 25, 1000, remote=options()).stat()


@responses.activate
def test_a_gzip_encoded_object_is_refused():
    responses.get(f"{GCS}/storage/v1/b/bkt/o/h.csv",
                  json={"size": "100", "generation": "5", "contentEncoding": "gzip"})
    with pytest.raises(SourceError, match="gzip"):
        CsvFile("gs://bkt/h.csv", 25, 1000, remote=options()).stat()


@responses.activate
def test_a_dropped_connection_is_retried_from_where_it_stopped():
    data = csv_bytes()
    obj = FakeObject(data)
    calls = {"n": 0}

    def flaky(request):
        calls["n"] += 1
        if calls["n"] == 3:
            raise requests.ConnectionError("connection reset by peer")
        return obj.media(request)

    responses.add_callback(responses.GET, "https://files.test/h.csv", flaky)
    waits: list[float] = []
    reader = CsvFile("https://files.test/h.csv", 25, 1000, remote=options(sleep=waits.append))
    chunks, _, _ = scan(reader)
    assert "".join(c.text for c, _ in chunks).encode() == data[len(HEADER):]
    assert len(waits) == 1


@responses.activate
def test_real_gcs_requests_carry_a_metadata_server_token_fetched_once():
    token_url = "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"
    responses.get(token_url, json={"access_token": "ya29.secret", "expires_in": 3599},
                  match=[responses.matchers.header_matcher({"Metadata-Flavor": "Google"})])
    obj = FakeObject(csv_bytes())
    serve_gcs(obj)
    from common.gcp_metadata import MetadataServer

    reader = CsvFile("gs://bkt/dir/h.csv", 25, 1000, remote=options(token=MetadataServer().access_token))
    scan(reader)
    assert obj.auth and set(obj.auth) == {"Bearer ya29.secret"}
    assert len([c for c in responses.calls if c.request.url == token_url]) == 1


def test_remote_options_from_settings_use_the_emulator_without_credentials():
    from common.config import Settings

    emulated = RemoteOptions.from_settings(Settings.from_env({"STORAGE_EMULATOR_HOST": "127.0.0.1:9023"}))
    assert emulated.storage_host == "http://127.0.0.1:9023" and emulated.token is None
    real = RemoteOptions.from_settings(Settings.from_env({}))
    assert real.storage_host == "https://storage.googleapis.com" and real.token is not None
