"""Two loopback servers (issue 7, item 8): source C's URL redirects to another host; the real `etl` process must
send its key to the first and never to the second."""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.e2e.conftest import etl_cli, stage_env

KEY = "cg-demo-secret-1234"
COINS = [{"id": f"coin-{n}", "symbol": f"c{n}", "name": f"Coin {n}", "current_price": 1.5 + n,
          "market_cap": 1e9 - n, "total_volume": 1e6, "last_updated": "2025-10-10T14:25:20.000Z"} for n in range(3)]


class Recorder(BaseHTTPRequestHandler):
    """Records each request's headers; answers with the server's `reply(handler)`."""

    def do_GET(self) -> None:
        self.server.seen.append(dict(self.headers.items()))
        status, headers, body = self.server.reply(self)
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        pass


def serve(reply) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.seen, server.reply = [], reply
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    return server


def test_the_key_reaches_the_source_and_never_the_host_it_redirects_to(tmp_path):
    other = serve(lambda handler: (200, {"Content-Type": "application/json"}, json.dumps(COINS).encode()))
    other_url = f"http://localhost:{other.server_address[1]}/markets"
    origin = serve(lambda handler: (302, {"Location": f"{other_url}?{handler.path.partition('?')[2]}"}, b""))
    env = stage_env(tmp_path, SOURCE_C_URL=f"http://127.0.0.1:{origin.server_address[1]}/api/v3/coins/markets",
                    SOURCE_C_API_KEY=KEY, SOURCE_C_PER_PAGE="5", SOURCE_C_RATE="100/1s")
    try:
        done = subprocess.run(etl_cli("run", "--source", "c", "--stage", "extract", "--quiet"), env=env,
                              capture_output=True, text=True, timeout=60)
    finally:
        for server in (origin, other):
            server.shutdown()
            server.server_close()
    [run] = json.loads(done.stdout)["runs"]
    assert run["status"] == "succeeded" and run["rows_in"] == 3, done.stderr
    assert [headers.get("x-cg-demo-api-key") for headers in origin.seen] == [KEY]
    assert len(other.seen) == 1
    leaked = {name: value for name, value in other.seen[0].items() if KEY in value}
    assert not leaked, f"the other host received the key in {sorted(leaked)}"
    assert KEY not in done.stdout + done.stderr
