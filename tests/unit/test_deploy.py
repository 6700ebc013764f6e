"""Deployment to Google Cloud Functions gen2: each package's requirements pinned to the versions tested here, and
`make deploy`'s dry run — every function deployed from its package, only http_api public, secrets from Secret
Manager, one Cloud Scheduler job calling the API's /refresh with OIDC within an attempt deadline past the budget,
the private stages invoked by the API alone."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

FUNCTIONS = sorted(p.name for p in (ROOT / "functions").iterdir() if (p / "main.py").exists())
API = "http_api"
STAGES = [name for name in FUNCTIONS if name != API]
DEPLOY_ENV = {"GCP_PROJECT": "my-proj", "GCP_REGION": "europe-west1",
              "RUNTIME_SERVICE_ACCOUNT": "etl-fn@my-proj.iam.gserviceaccount.com",
              "SCHEDULER_SERVICE_ACCOUNT": "etl-scheduler@my-proj.iam.gserviceaccount.com",
              "SOURCE_B_PATH": "gs://my-bucket/Historical_Data.csv", "INVOCATION_BUDGET_S": "540"}


def dry_run(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in DEPLOY_ENV and k not in ("DEPLOY", "ETL_SCHEDULE")}
    return subprocess.run([sys.executable, "-m", "deploy.gcloud"], cwd=ROOT, capture_output=True, text=True,
                          env={**clean, **DEPLOY_ENV, **env})


def commands(output: str) -> list[list[str]]:
    """The gcloud commands of the printed script (comments and variable assignments aside)."""
    found = []
    for line in output.splitlines():
        words = shlex.split(line, comments=True)
        if words and "gcloud" in words:
            found.append(words[words.index("gcloud"):])
    return found


def flag(words: list[str], name: str) -> str | None:
    for word in words:
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def env_vars(words: list[str]) -> dict[str, str]:
    """`--set-env-vars` as gcloud reads it (`gcloud topic escaping`: `^D^` makes D the delimiter instead of `,`)."""
    raw = flag(words, "--set-env-vars")
    delimiter = ","
    if raw.startswith("^"):
        delimiter, raw = raw[1:].split("^", 1)
    return dict(item.split("=", 1) for item in raw.split(delimiter))


def test_every_package_pins_the_exact_runtime_versions_tested_here():
    from deploy.pins import runtime_pins

    pins = runtime_pins()
    names = {line.split("==")[0].lower().replace("_", "-") for line in pins}
    assert {"functions-framework", "flask", "pymongo", "requests", "pyjwt", "prometheus-client", "gunicorn",
            "werkzeug", "urllib3"} <= names  # direct and transitive
    for name in FUNCTIONS:
        lines = (ROOT / "functions" / name / "requirements.txt").read_text().splitlines()
        wanted = [line for line in lines if line and not line.startswith("#")]
        assert wanted == pins, f"functions/{name}/requirements.txt is not `python -m deploy.pins --write` output"
        assert all("==" in line for line in wanted)


def test_dry_run_deploys_every_function_with_only_the_api_public():
    result = dry_run()
    assert result.returncode == 0, result.stderr
    deploys = {words[3]: words for words in commands(result.stdout) if words[1:3] == ["functions", "deploy"]}
    assert sorted(deploys) == FUNCTIONS
    for name, words in deploys.items():
        assert {"--gen2", "--trigger-http"} <= set(words)
        assert (flag(words, "--runtime"), flag(words, "--entry-point"), flag(words, "--source")) == \
            ("python311", name, f"build/{name}")
        assert flag(words, "--region") == "europe-west1" and flag(words, "--project") == "my-proj"
        assert flag(words, "--service-account") == DEPLOY_ENV["RUNTIME_SERVICE_ACCOUNT"]
        assert "MONGODB_URI=etl-mongodb-uri:latest" in flag(words, "--set-secrets").split(",")
        assert int(flag(words, "--timeout").rstrip("s")) > 540
        public = "--allow-unauthenticated" in words
        private = "--no-allow-unauthenticated" in words
        assert (public, private) == ((True, False) if name == "http_api" else (False, True)), name
    assert "JWT_SECRET=etl-jwt-secret:latest" in flag(deploys["http_api"], "--set-secrets").split(",")
    assert not any("JWT_SECRET" in flag(deploys[name], "--set-secrets") for name in STAGES)
    api_env = flag(deploys["http_api"], "--set-env-vars")
    assert "STAGE_AUTH=oidc" in api_env and "EXTRACT_SOURCE_B_URL=" in api_env and "TRANSFORM_LOAD_URL=" in api_env
    assert "SOURCE_B_PATH=gs://my-bucket/Historical_Data.csv" in flag(deploys["extract_source_b"], "--set-env-vars")


API_URL = "https://europe-west1-my-proj.cloudfunctions.net/http_api"  # gen2's URL for http_api, known beforehand


def test_dry_run_schedules_one_pass_per_tick_through_the_api_with_oidc():
    """One Cloud Scheduler job, `etl-pass`, POSTs the public API's /refresh with a Google ID token for the API's URL,
    so each scheduled pass goes through the orchestrator (a `pipeline` run, pass-level alerts)."""
    result = dry_run(ETL_SCHEDULE="15 * * * *")
    assert result.returncode == 0, result.stderr
    words_list = commands(result.stdout)
    jobs = [w for w in words_list if w[1:4] == ["scheduler", "jobs", "create"]]
    assert [(w[4], w[5]) for w in jobs] == [("http", "etl-pass")]
    job = jobs[0]
    assert flag(job, "--uri") == "${URL_HTTP_API}/refresh" and flag(job, "--http-method") == "POST"
    assert flag(job, "--oidc-service-account-email") == DEPLOY_ENV["SCHEDULER_SERVICE_ACCOUNT"]
    assert flag(job, "--oidc-token-audience") == "${URL_HTTP_API}"
    assert flag(job, "--schedule") == "15 * * * *"
    assert 540 < int(flag(job, "--attempt-deadline").rstrip("s")) <= 1800
    assert flag(job, "--max-retry-attempts") == "0"  # a missed tick is the next tick's work
    assert f"URL_HTTP_API={API_URL}" in result.stdout.splitlines()
    lines = result.stdout.splitlines()
    api_deployed = next(i for i, line in enumerate(lines) if "gcloud functions deploy http_api" in line)
    job_created = next(i for i, line in enumerate(lines) if "scheduler jobs create" in line)
    assert api_deployed < job_created
    checked = [line for line in lines[api_deployed:job_created] if "value(url)" in line]
    assert checked and "http_api" in checked[0]  # the deployed URL is checked against the audience before use
    deploys = {w[3]: w for w in words_list if w[1:3] == ["functions", "deploy"]}
    api_env = env_vars(deploys["http_api"])
    assert api_env["REFRESH_OIDC_AUDIENCE"] == API_URL
    assert api_env["REFRESH_OIDC_EMAILS"] == DEPLOY_ENV["SCHEDULER_SERVICE_ACCOUNT"]
    assert not any("REFRESH_OIDC_AUDIENCE" in env_vars(deploys[name]) for name in STAGES)
    deleted = {w[4] for w in words_list if w[1:4] == ["scheduler", "jobs", "delete"]}
    assert {"etl-pass"} | {"etl-" + name.replace("_", "-") for name in STAGES} <= deleted  # old per-stage jobs go


def test_env_values_holding_the_delimiters_reach_the_function_whole():
    """E-mail addresses (REFRESH_OIDC_EMAILS, ALERT_EMAIL_TO) hold `@`, aliases JSON holds `,`: each value arrives as
    set, whatever delimiter the script picks."""
    aliases = '{"source_b": {"close": ["Close@", "last,price"]}}'
    result = dry_run(ALERT_EMAIL_TO="ops@example.com,oncall@example.com", FIELD_ALIASES=aliases)
    assert result.returncode == 0, result.stderr
    deploys = {w[3]: w for w in commands(result.stdout) if w[1:3] == ["functions", "deploy"]}
    for name in FUNCTIONS:
        env = env_vars(deploys[name])
        assert env["ALERT_EMAIL_TO"] == "ops@example.com,oncall@example.com"
        assert env["FIELD_ALIASES"] == aliases and env["ETL_SCHEDULE"] == "0 * * * *"
    assert env_vars(deploys["http_api"])["REFRESH_OIDC_EMAILS"] == DEPLOY_ENV["SCHEDULER_SERVICE_ACCOUNT"]


def test_dry_run_lets_only_the_api_invoke_the_private_stages():
    result = dry_run()
    assert result.returncode == 0, result.stderr
    grants = [w for w in commands(result.stdout) if w[1:3] == ["functions", "add-invoker-policy-binding"]]
    granted = {(w[3], flag(w, "--member")) for w in grants}
    assert granted == {(name, f"serviceAccount:{DEPLOY_ENV['RUNTIME_SERVICE_ACCOUNT']}") for name in STAGES}


@pytest.mark.parametrize("env, message", [
    ({"INVOCATION_BUDGET_S": "1750"}, "attempt deadline"),
    ({"SOURCE_B_PATH": "./data/Historical_Data.csv"}, "SOURCE_B_PATH"),
    ({"GCP_PROJECT": ""}, "GCP_PROJECT"),
    ({"ETL_SCHEDULE": "45s"}, "ETL_SCHEDULE"),
])
def test_dry_run_refuses_what_cannot_work_once_deployed(env, message):
    result = dry_run(**env)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


def test_make_deploy_is_a_dry_run_by_default_and_needs_gcloud_to_run(tmp_path):
    if not shutil.which("make"):
        raise AssertionError("make is required")
    clean = {k: v for k, v in os.environ.items() if k not in ("DEPLOY",)}
    shown = subprocess.run(["make", "-s", "deploy"], cwd=ROOT, capture_output=True, text=True,
                           env={**clean, **DEPLOY_ENV})
    assert shown.returncode == 0, shown.stderr
    assert "dry run" in shown.stdout and "gcloud functions deploy http_api" in shown.stdout
    tools = tmp_path / "bin"  # what the recipes need, and no gcloud
    tools.mkdir()
    for tool in ("make", "sh", "bash", "rm", "mkdir", "cp", "find", "basename"):
        (tools / tool).symlink_to(shutil.which(tool))
    ran = subprocess.run(["make", "-s", "deploy"], cwd=ROOT, capture_output=True, text=True,
                         env={**clean, **DEPLOY_ENV, "DEPLOY": "1", "PATH": str(tools)})
    assert ran.returncode != 0 and "gcloud not found" in ran.stderr, ran.stderr


@pytest.mark.parametrize("env, message", [
    ({"K_SERVICE": "extract_source_b"}, "without a store: set MONGODB_URI"),
    ({"K_SERVICE": "x", "SQLITE_PATH": "data/etl.sqlite3"}, "SQLITE_PATH must be an absolute path when deployed"),
    ({"K_SERVICE": "x", "MONGODB_URI": "mongodb://h/db", "SOURCE_B_PATH": "./data/H.csv"},
     "SOURCE_B_PATH must be an absolute path or a gs:// / https:// location when deployed"),
    ({"SQLITE_PATH": "gs://bucket/etl.sqlite3"}, "SQLITE_PATH must be a local path"),
    ({"STAGE_AUTH": "basic"}, "STAGE_AUTH must be none or oidc"),
    ({"STORAGE_EMULATOR_HOST": "http://h:1/path?x"}, "STORAGE_EMULATOR_HOST must be host:port"),
])
def test_deployed_settings_never_default_into_the_functions_folder(env, message):
    from common.config import Settings
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env(env)


def test_deployed_source_b_unset_is_reported_by_the_stage_that_needs_it():
    from common.config import Settings
    from common.errors import SourceError
    from common.sources.csv_file import CsvFile

    settings = Settings.from_env({"K_SERVICE": "extract_source_a", "MONGODB_URI": "mongodb://h/db"})
    assert settings.source_b_path == ""  # extract_source_a does not need it, so it starts
    with pytest.raises(SourceError, match="no CSV location configured .SOURCE_B_PATH."):
        CsvFile(settings.source_b_path, 10, 1000)
    local = Settings.from_env({"STORAGE_EMULATOR_HOST": "127.0.0.1:9023"})
    assert (local.source_b_path, local.storage_emulator_host) == ("./data/Historical_Data.csv", "http://127.0.0.1:9023")
