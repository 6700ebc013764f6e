"""`make deploy`: the gcloud commands that put the packaged functions on Cloud Functions gen2, as a bash script.

Printed by default (a dry run to read, diff and review); `DEPLOY=1 make deploy` runs the same script. Why it is
shaped this way:
- every function is deployed from its own `build/<name>` (`make package`), entry point = folder name, python311;
- only `http_api` is public; the stages are `--no-allow-unauthenticated`, and one identity may invoke them
  (`roles/run.invoker`): the functions' runtime service account, which the API's `POST /refresh` uses to run a pass
  over HTTP with identity tokens (`STAGE_AUTH=oidc`, see common/invokers.py);
- one Cloud Scheduler job, `etl-pass`, POSTs the API's `/refresh` on ETL_SCHEDULE with a Google-signed OIDC token
  (audience: the API's URL; the API accepts it from the scheduler's service account only: REFRESH_OIDC_AUDIENCE,
  REFRESH_OIDC_EMAILS), so every scheduled pass goes through the orchestrator: a `pipeline` run in the ledger and
  the pass-level alerts, exactly as `make run`'s trigger. The audience is gen2's `https://REGION-PROJECT.
  cloudfunctions.net/http_api`, known before the deploy (so the API is deployed once), and checked after it;
- secrets come from Secret Manager (`--set-secrets`), never from the command line or this script's output: each
  function gets only the ones it reads;
- the job's attempt deadline outlasts `INVOCATION_BUDGET_S` (`/refresh` ends its pass within that budget and
  answers 202 with the pass id when work is left), and Scheduler allows 30 minutes at most, so a budget that does
  not fit is refused here. No retry: a missed tick is the next tick's work, and REFRESH_MIN_S / the pass lease turn a
  duplicate call into a 429 / 409 that runs nothing.

Settings come from the environment (see `Plan.from_env` and the README's deployment section).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

ROOT = Path(__file__).resolve().parent.parent
API = "http_api"
PASS_JOB = "etl-pass"
SCHEDULER_MAX_DEADLINE_S = 1800
FUNCTION_MAX_TIMEOUT_S = 3600
SLACK_S = 60
FORWARDED = (  # non-secret settings passed on to every function when set here
    "SOURCE_A_URL", "SOURCE_A_RATE", "SOURCE_C_URL", "SOURCE_C_RATE", "SOURCE_C_MAX_PAGES", "SOURCE_C_PER_PAGE",
    "CSV_CHUNK_ROWS", "CSV_SETTLE_S", "LEASE_TTL_S", "STORE_TIMEOUT_S", "LOG_LEVEL", "HTTP_TIMEOUT_S",
    "HTTP_MAX_ATTEMPTS", "PASS_BUDGET_S", "FIELD_ALIASES", "FIELD_FORMATS", "ALERT_EMAIL_TO", "ALERT_EMAIL_FROM",
    "SMTP_HOST", "SMTP_PORT", "SMTP_SECURITY", "JWT_AUDIENCE", "JWT_ISSUER", "REFRESH_MIN_S",
)
SECRETS = {  # setting -> the functions that read it; the first two are always set, the others when listed
    "MONGODB_URI": None,  # every function
    "JWT_SECRET": {API},
    "SOURCE_A_API_KEY": {"extract_source_a"},
    "SOURCE_C_API_KEY": {"extract_source_c"},
    "ALERT_EMAIL_USER": {API},
    "ALERT_EMAIL_PASS": {API},  # alerts are judged after a pass: the API's /refresh runs passes
    "ALERT_WEBHOOK_URL": {API},
}


class PlanError(Exception):
    """A setting that cannot work once deployed; the message says which and why."""


@dataclass(frozen=True)
class Plan:
    project: str
    region: str
    runtime_account: str
    scheduler_account: str
    source_b_path: str
    budget_s: int
    pass_budget_s: int
    schedule: str
    time_zone: str
    secrets: tuple[str, ...]
    secret_prefix: str
    memory: str
    forwarded: tuple[tuple[str, str], ...]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Plan":
        def need(name: str, hint: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise PlanError(f"{name} is not set: {hint}")
            return value

        budget = _number(env, "INVOCATION_BUDGET_S", 540)
        if budget + SLACK_S > SCHEDULER_MAX_DEADLINE_S:
            raise PlanError(f"INVOCATION_BUDGET_S={budget}: Cloud Scheduler's attempt deadline must outlast it by "
                            f"{SLACK_S}s and is capped at {SCHEDULER_MAX_DEADLINE_S}s; use at most "
                            f"{SCHEDULER_MAX_DEADLINE_S - SLACK_S}")
        source_b = need("SOURCE_B_PATH", "gs://bucket/object (or an https:// URL) holding Historical_Data.csv")
        if not source_b.startswith(("gs://", "https://")):
            raise PlanError(f"SOURCE_B_PATH={source_b!r}: a deployed function has no such file; upload the CSV "
                            "(gcloud storage cp data/Historical_Data.csv gs://BUCKET/) and use its gs:// location")
        extra = tuple(s.strip() for s in env.get("DEPLOY_SECRETS", "").split(",") if s.strip())
        unknown = [s for s in extra if s not in SECRETS]
        if unknown:
            raise PlanError(f"DEPLOY_SECRETS: unknown setting(s) {', '.join(unknown)}; known: {', '.join(SECRETS)}")
        return cls(
            project=need("GCP_PROJECT", "the Google Cloud project id"),
            region=env.get("GCP_REGION", "").strip() or "us-central1",
            runtime_account=need("RUNTIME_SERVICE_ACCOUNT", "the service account the functions run as"),
            scheduler_account=need("SCHEDULER_SERVICE_ACCOUNT", "the service account Cloud Scheduler signs as"),
            source_b_path=source_b, budget_s=budget, pass_budget_s=_number(env, "PASS_BUDGET_S", 3000),
            schedule=scheduler_cron(env.get("ETL_SCHEDULE", "").strip() or "0 * * * *", "ETL_SCHEDULE"),
            time_zone=env.get("SCHEDULER_TIME_ZONE", "").strip() or "Etc/UTC",
            secrets=("MONGODB_URI", "JWT_SECRET", *(s for s in extra if s not in ("MONGODB_URI", "JWT_SECRET"))),
            secret_prefix=env.get("SECRET_PREFIX", "").strip() or "etl-",
            memory=env.get("FUNCTION_MEMORY", "").strip() or "1Gi",
            forwarded=tuple((name, env[name]) for name in FORWARDED if env.get(name, "").strip()),
        )

    def secret_id(self, setting: str) -> str:
        return self.secret_prefix + setting.lower().replace("_", "-")

    @property
    def api_url(self) -> str:
        """The URL Cloud Functions gen2 gives `http_api` (its `url` field): the scheduler's OIDC audience."""
        return f"https://{self.region}-{self.project}.cloudfunctions.net/{API}"


def _number(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    try:
        value = int(float(raw)) if raw else default
    except ValueError:
        raise PlanError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value < 1:
        raise PlanError(f"{name} must be >= 1")
    return value


def scheduler_cron(schedule: str, setting: str) -> str:
    """ETL_SCHEDULE as Cloud Scheduler's unix-cron: 5 fields as they are; `Nm` / `Nh` intervals that divide an
    hour / a day; `@hourly`, `@daily`. Seconds are refused (Scheduler runs a job at most once a minute)."""
    named = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0"}
    if schedule in named:
        return named[schedule]
    if len(schedule.split()) == 5:
        return schedule
    match = re.fullmatch(r"(\d+)\s*([mh])", schedule)
    if match and match.group(2) == "m" and 0 < int(match.group(1)) <= 60 and 60 % int(match.group(1)) == 0:
        return "0 * * * *" if match.group(1) == "60" else f"*/{int(match.group(1))} * * * *"
    if match and match.group(2) == "h" and 0 < int(match.group(1)) <= 24 and 24 % int(match.group(1)) == 0:
        return "0 0 * * *" if match.group(1) == "24" else f"0 */{int(match.group(1))} * * *"
    raise PlanError(f"{setting}={schedule!r} cannot be a Cloud Scheduler schedule: use 5-field cron (UTC) or an "
                    "interval in whole minutes or hours that divides an hour or a day (15m, 2h)")


def functions() -> list[str]:
    return sorted(p.name for p in (ROOT / "functions").iterdir() if (p / "main.py").exists())


def url_var(name: str) -> str:
    return f"URL_{name.upper()}"


def script(plan: Plan) -> str:
    """The whole deployment as a bash script; values are shell-quoted, secrets appear only as Secret Manager ids."""
    names = functions()
    stages = [name for name in names if name != API]
    where = f"--region={plan.region} --project={plan.project}"
    lines = [
        "#!/usr/bin/env bash",
        "# make deploy: Cloud Functions gen2 + Cloud Scheduler. A dry run prints this; DEPLOY=1 make deploy runs it.",
        "set -euo pipefail",
        "# 0. what the runtime service account reads: its secrets and the Source B bucket",
    ]
    for setting in plan.secrets:
        lines.append(f"gcloud secrets add-iam-policy-binding {plan.secret_id(setting)} --project={plan.project} "
                     f"--member=serviceAccount:{plan.runtime_account} --role=roles/secretmanager.secretAccessor")
    if plan.source_b_path.startswith("gs://"):
        bucket = plan.source_b_path[len("gs://"):].split("/", 1)[0]
        lines.append(f"gcloud storage buckets add-iam-policy-binding gs://{bucket} --project={plan.project} "
                     f"--member=serviceAccount:{plan.runtime_account} --role=roles/storage.objectViewer")
    lines.append("# 1. the stage functions: private; only the API's /refresh (the runtime account) invokes them")
    for name in stages:
        lines.append(_deploy(plan, name, where, public=False, env=_env(plan, name)))
        lines.append(f"{url_var(name)}=$(gcloud functions describe {name} --gen2 {where} "
                     "--format='value(serviceConfig.uri)')")
        lines.append(f"gcloud functions add-invoker-policy-binding {name} {where} "
                     f"--member=serviceAccount:{plan.runtime_account}")
    api = url_var(API)
    lines.append("# 2. the API: public; runs passes over HTTP with identity tokens; takes the scheduler's ID tokens")
    lines.append(f"{api}={shlex.quote(plan.api_url)}")
    api_env = _env(plan, API) + [("STAGE_AUTH", "oidc"), ("REFRESH_OIDC_AUDIENCE", plan.api_url),
                                 ("REFRESH_OIDC_EMAILS", plan.scheduler_account)] + [
        (f"{name.upper()}_URL", f"${{{url_var(name)}}}") for name in stages]
    lines.append(_deploy(plan, API, where, public=True, env=api_env))
    lines.append(f"test \"$(gcloud functions describe {API} --gen2 {where} --format='value(url)')\" = \"${{{api}}}\" "
                 f"|| {{ echo \"{API}'s URL is not ${{{api}}}: the scheduler's token audience would not match\" >&2; "
                 "exit 1; }")
    lines.append("# 3. Cloud Scheduler: one pass per ETL_SCHEDULE tick through the API's /refresh, with an OIDC "
                 "token, deadline past the budget (the per-stage jobs of earlier versions are removed)")
    deadline = min(SCHEDULER_MAX_DEADLINE_S, plan.budget_s + SLACK_S)
    location = f"--location={plan.region} --project={plan.project}"
    for job in ["etl-" + name.replace("_", "-") for name in stages] + [PASS_JOB]:
        lines.append(f"gcloud scheduler jobs delete {job} {location} --quiet 2>/dev/null || true")
    lines.append(
        f"gcloud scheduler jobs create http {PASS_JOB} {location} --schedule={shlex.quote(plan.schedule)} "
        f"--time-zone={plan.time_zone} --http-method=POST --uri=\"${{{api}}}/refresh\" "
        f"--oidc-service-account-email={plan.scheduler_account} --oidc-token-audience=\"${{{api}}}\" "
        f"--attempt-deadline={deadline}s --max-retry-attempts=0")
    lines.append(f"echo \"API: $(gcloud functions describe {API} --gen2 {where} "
                 "--format='value(serviceConfig.uri)')\"")
    return "\n".join(lines) + "\n"


def _env(plan: Plan, name: str) -> list[tuple[str, str]]:
    env = [("INVOCATION_BUDGET_S", str(plan.budget_s)), ("ETL_SCHEDULE", plan.schedule), *plan.forwarded]
    if name == "extract_source_b":
        env.append(("SOURCE_B_PATH", plan.source_b_path))
    return env


def _deploy(plan: Plan, name: str, where: str, *, public: bool, env: list[tuple[str, str]]) -> str:
    budget = plan.pass_budget_s if name == API else plan.budget_s  # the API's /refresh runs a whole pass
    timeout = min(FUNCTION_MAX_TIMEOUT_S, budget + SLACK_S)
    secrets = ",".join(f"{s}={plan.secret_id(s)}:latest" for s in plan.secrets
                       if SECRETS[s] is None or name in SECRETS[s])
    pairs = [f"{key}={value}" for key, value in env]
    delimiter = _delimiter(pairs)
    env_vars = f"^{delimiter}^" + delimiter.join(pairs)  # `gcloud topic escaping`: values hold "," and "@"
    return (f"gcloud functions deploy {name} --gen2 --runtime=python311 {where} --trigger-http "
            f"--entry-point={name} --source=build/{name} --service-account={plan.runtime_account} "
            f"{'--allow-unauthenticated' if public else '--no-allow-unauthenticated'} --timeout={timeout}s "
            f"--memory={plan.memory} --set-env-vars=\"{_double_quoted(env_vars)}\" --set-secrets={secrets}")


def _delimiter(pairs: list[str]) -> str:
    """A `--set-env-vars` delimiter that no value holds (e-mail addresses hold `@`, JSON settings `,`)."""
    for candidate in "|~#;!%+":
        if not any(candidate in pair for pair in pairs):
            return candidate
    raise PlanError("the settings' values use every character `make deploy` could separate them with: |~#;!%+")


def _double_quoted(text: str) -> str:
    """Text for inside double quotes: `${URL_...}` expands, nothing else does."""
    return re.sub(r'(["\\`])', r"\\\1", text).replace("$", "\\$").replace("\\${URL_", "${URL_")


def main(argv: list[str] | None = None) -> int:
    run = "--run" in (argv if argv is not None else sys.argv[1:])
    try:
        text = script(Plan.from_env(os.environ))
    except PlanError as exc:
        print(f"make deploy: {exc}", file=sys.stderr)
        return 2
    if not run:
        print("# dry run: nothing was changed. Review, then run it with DEPLOY=1 make deploy")
        print(text, end="")
        return 0
    if not shutil.which("gcloud"):
        print("make deploy: gcloud not found on PATH: install the Google Cloud CLI and `gcloud auth login`",
              file=sys.stderr)
        return 2
    return subprocess.run(["bash", "-c", text], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
