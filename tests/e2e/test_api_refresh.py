"""POST /refresh against the real `http_api` function process: a token minted by `etl token` in another process
runs one pass (sources A and C on the emulator, B from a CSV, one SQLite file); a second refresh is 429, a token
signed with another secret is 401; the secret never appears in an answer or in the function's log."""

from __future__ import annotations

import subprocess

import requests

from tests.conftest import ROOT, csv_lines, write_csv
from tests.e2e.conftest import Stack, etl_cli, stage_env

SECRET = "e2e-refresh-secret-" + "z" * 40


def test_a_minted_token_refreshes_through_the_real_function(tmp_path, source_emulator, capfd):
    emulator = source_emulator(snapshot_every=0, coins=8)
    write_csv(tmp_path / "Historical_Data.csv", csv_lines(coins=2, days=10))
    env = stage_env(tmp_path, LOG_LEVEL="DEBUG", JWT_SECRET=SECRET, JWT_AUDIENCE="etl-api", JWT_ISSUER="ops",
                    SOURCE_A_URL=f"{emulator.url}/v1/tickers", SOURCE_C_URL=f"{emulator.url}/api/v3/coins/markets",
                    SOURCE_A_RATE="100/1s", SOURCE_C_RATE="100/1s", SOURCE_C_PER_PAGE="10",
                    SOURCE_C_MAX_PAGES="1", INVOCATION_BUDGET_S="60", LEASE_TTL_S="2")
    minted = subprocess.run(etl_cli("token", "--ttl", "300", "--sub", "e2e"), cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    stack = Stack(env)
    try:
        api = stack.start("http_api")
        answers = [requests.post(f"{api}/refresh", headers={"Authorization": f"Bearer {minted}"}, timeout=90)]
        first = answers[0]
        assert first.status_code == 200, first.text
        run = first.json()["pass"]
        assert run["status"] == "succeeded" and len(run["summary"]["stages"]) >= 4
        assert requests.get(f"{api}/data", timeout=10).json()["pagination"]["total"] > 0
        answers.append(requests.post(f"{api}/refresh", headers={"Authorization": f"Bearer {minted}"}, timeout=30))
        assert answers[-1].status_code == 429 and int(answers[-1].headers["Retry-After"]) > 0
        forged = subprocess.run(etl_cli("token"), cwd=ROOT, env={**env, "JWT_SECRET": "f" * 40},
                                capture_output=True, text=True, timeout=60, check=True).stdout.strip()
        answers.append(requests.post(f"{api}/refresh", headers={"Authorization": f"Bearer {forged}"}, timeout=30))
        assert answers[-1].status_code == 401 and answers[-1].json()["error"]["code"] == "invalid_token"
        assert answers[-1].headers["WWW-Authenticate"].startswith('Bearer realm="etl-api", error="invalid_token"')
    finally:
        stack.stop()
    logs = capfd.readouterr()
    assert "refresh requested" in logs.err + logs.out  # the function's log is what is searched below
    for text in [logs.out, logs.err, *(answer.text + str(answer.headers) for answer in answers)]:
        assert SECRET not in text
