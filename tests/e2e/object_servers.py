"""Object servers on loopback for Source B: the real gcp-storage-emulator process, and a small stdlib web server
that honours Range (or, on demand, ignores it) with an ETag per version."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import pytest
import requests

from tests.e2e.conftest import free_port

BUCKET = "etl-test"


class GcsEmulator:
    """A running gcp-storage-emulator (in memory) with one bucket."""

    def __init__(self, process: subprocess.Popen, url: str) -> None:
        self.process, self.url = process, url

    def upload(self, name: str, data: bytes) -> dict:
        """Create or overwrite an object (a new generation), as `gcloud storage cp` would."""
        answer = requests.post(f"{self.url}/upload/storage/v1/b/{BUCKET}/o",
                               params={"uploadType": "media", "name": name}, data=data, timeout=10,
                               headers={"Content-Type": "text/csv"})
        answer.raise_for_status()
        return answer.json()

    def location(self, name: str) -> str:
        return f"gs://{BUCKET}/{name}"

    def metadata(self, name: str) -> dict:
        return requests.get(f"{self.url}/storage/v1/b/{BUCKET}/o/{quote(name, safe='')}", timeout=10).json()


@pytest.fixture
def gcs_emulator(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port", str(port),
         "--in-memory", "--default-bucket", BUCKET, "-q"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(url + "/", timeout=1)
            break
        except requests.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("gcp-storage-emulator did not start (pip install gcp-storage-emulator)") from None
            time.sleep(0.1)
    yield GcsEmulator(process, url)
    process.terminate()
    process.wait(10)


class RangeServer:
    """Serves `files` (path -> bytes) with Range and an ETag per version; `honour_range=False` answers every GET
    with the whole body, as a server without Range support does. Counts the body bytes it managed to send."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.versions: dict[str, int] = {}
        self.honour_range = True
        self.sent = 0
        self.ranges: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - stdlib hook name
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                wanted = self.headers.get("Range")
                start, end, status = 0, len(data) - 1, 200
                if wanted and server.honour_range:
                    server.ranges.append(wanted)
                    first, _, last = wanted.removeprefix("bytes=").partition("-")
                    start, end, status = int(first), min(int(last or len(data) - 1), len(data) - 1), 206
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                self.send_response(status)
                self.send_header("ETag", f'"v{server.versions[self.path]}"')
                self.send_header("Content-Length", str(end - start + 1))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                view = memoryview(data)[start:end + 1]
                try:
                    for at in range(0, len(view), 65536):
                        self.wfile.write(view[at:at + 65536])
                        server.sent += len(view[at:at + 65536])
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def put(self, path: str, data: bytes) -> str:
        self.files[path] = data
        self.versions[path] = self.versions.get(path, 0) + 1
        return self.url + path


@pytest.fixture
def range_server():
    server = RangeServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()
