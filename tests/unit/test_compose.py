"""The compose stack as Debian's docker-compose 1.29 resolves it (`docker-compose config`), the `.env.example` that
documents it, and the Makefile targets that drive it. No Docker engine is needed: only the file is checked here;
tests/e2e/test_compose_health.py runs the healthcheck commands against real functions."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from common.config import Settings
from tests.conftest import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
FUNCTIONS = sorted(path.name for path in (ROOT / "functions").iterdir() if (path / "main.py").exists())
STAGES = [name for name in FUNCTIONS if name != "http_api"]
SECRET_FIELDS = [name for name, spec in Settings.__dataclass_fields__.items() if not spec.repr]
PRODUCT_VARIABLES = sorted(set(re.findall(r'reader\.\w+\("([A-Z][A-Z0-9_]+)"',
                                         (ROOT / "common" / "config.py").read_text())))  # every setting read
OFFLINE_PROFILE = "offline"
SET_BY_PLATFORM = {"K_SERVICE"}  # Cloud Functions / Cloud Run set it; in compose it stays unset
COMPOSE_DEFAULTS = {"MONGODB_URI", "SOURCE_B_PATH"}  # the stack's own MongoDB and mounted CSV, unless .env says


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    assert found, "docker-compose is missing: apt-get install -y docker-compose (.ci/run installs it)"
    return found


def compose(*args: str, env: dict[str, str] | None = None, tmp_path: Path) -> subprocess.CompletedProcess:
    """docker-compose on the repo's file with an empty .env of our own (a developer's .env must not leak in)."""
    env_file = tmp_path / "empty.env"
    env_file.touch()
    clean = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **(env or {})}
    return subprocess.run([docker_compose(), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE),
                           "--env-file", str(env_file), *args], env=clean, capture_output=True, text=True,
                          timeout=60)


def resolved(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    done = compose(*args, "config", env=env, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


@pytest.fixture
def config(tmp_path) -> dict:
    return resolved(tmp_path)


def env_of(service: dict) -> dict:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    return environment


def ports_of(service: dict) -> set[tuple[str, int]]:
    """(published, target) pairs whatever syntax the resolved file uses."""
    pairs = set()
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            pairs.add((str(port.get("published")), int(port["target"])))
        else:
            parts = str(port).split("/")[0].split(":")  # [host:]published:target[/protocol]
            pairs.add((parts[-2], int(parts[-1])))
    return pairs


def waits_for(service: dict) -> dict[str, str]:
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return {name: "service_started" for name in depends}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in depends.items()}


def test_debian_docker_compose_validates_the_file_silently(tmp_path):
    for args in ((), ("--profile", OFFLINE_PROFILE)):
        done = compose(*args, "config", "-q", tmp_path=tmp_path)
        assert done.returncode == 0 and done.stderr == "", done.stderr  # no "variable is not set" warnings either


def test_every_function_is_a_service_serving_its_own_target_with_a_healthcheck(config):
    services = config["services"]
    for name in FUNCTIONS:
        service = services[name]
        assert env_of(service)["FUNCTION_TARGET"] == name
        assert service["healthcheck"]["test"], name
    assert services["http_api"]["healthcheck"]["test"][-1].endswith("/health/live")
    assert {"mongodb", "trigger", "prometheus", *FUNCTIONS} <= set(services)


def test_mongodb_is_the_official_image_with_a_healthcheck_and_a_named_volume(config):
    mongodb = config["services"]["mongodb"]
    assert re.fullmatch(r"mongo:\d+(\.\d+)*", mongodb["image"])
    assert "ping" in " ".join(mongodb["healthcheck"]["test"])
    mounts = [(v["source"], v["target"]) if isinstance(v, dict) else tuple(v.split(":")[:2])
              for v in mongodb["volumes"]]
    named = [source for source, target in mounts if target == "/data/db"]
    assert named and named[0] in (config.get("volumes") or {}), mounts
    assert not mongodb.get("ports"), "the store stays on the compose network"
    for name in (*FUNCTIONS, "trigger"):
        uri = env_of(config["services"][name])["MONGODB_URI"]
        assert uri.startswith("mongodb://mongodb:27017/") and "@" not in uri


def test_api_on_3000_and_prometheus_on_9090(config):
    services = config["services"]
    assert ports_of(services["http_api"]) == {("3000", 8080)}
    assert ports_of(services["prometheus"]) == {("9090", 9090)}
    assert all(not services[name].get("ports") for name in STAGES), "stage functions are not published"


def test_services_start_when_what_they_need_is_healthy(config):
    services = config["services"]
    for name in FUNCTIONS:
        assert waits_for(services[name]) == {"mongodb": "service_healthy"}, name
    assert waits_for(services["trigger"]) == {"mongodb": "service_healthy",
                                              **{name: "service_healthy" for name in STAGES}}
    assert waits_for(services["prometheus"]) == {"http_api": "service_healthy"}
    trigger_env = env_of(services["trigger"])
    for name in STAGES:
        assert trigger_env[f"{name.upper()}_URL"] == f"http://{name}:8080"


def test_prometheus_mounts_the_root_config_and_the_rules_where_the_config_looks_for_them(config):
    prometheus = config["services"]["prometheus"]
    mounts = {}
    for volume in prometheus["volumes"]:
        source, target = (volume["source"], volume["target"]) if isinstance(volume, dict) else volume.split(":")[:2]
        mounts[target] = Path(source).resolve()
    assert mounts["/etc/prometheus/prometheus.yml"] == ROOT / "prometheus.yml"
    root_config = yaml.safe_load((ROOT / "prometheus.yml").read_text())
    for rule_file in root_config["rule_files"]:  # relative to the config file, in the repo and in the container
        in_container = Path("/etc/prometheus") / rule_file
        mounted = [target for target in mounts if in_container.is_relative_to(target) and target != "/etc/prometheus"]
        assert mounted, f"{in_container} is not mounted"
        assert (mounts[mounted[0]] / in_container.relative_to(mounted[0])) == (ROOT / rule_file).resolve()
        assert (ROOT / rule_file).is_file()
    targets = [t for job in root_config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert "http_api:8080" in targets


def test_offline_profile_adds_the_emulator_and_make_points_a_and_c_at_it(tmp_path):
    online = resolved(tmp_path)["services"]
    emulator = online["emulator"]
    assert emulator["profiles"] == [OFFLINE_PROFILE]
    assert all(not service.get("profiles") for name, service in online.items() if name != "emulator")
    command = emulator["command"] if isinstance(emulator["command"], list) else emulator["command"].split()
    assert command[:3] == ["python", "-m", "local.emulator"] and "0.0.0.0" in command
    port = command[command.index("--port") + 1]
    for name in ("extract_source_a", "extract_source_c"):  # online: the product's defaults (the public APIs)
        assert env_of(online[name]).get(f"SOURCE_{name[-1].upper()}_URL") in (None, "")

    line = make_dry_run("local-up", "OFFLINE=1", docker_answers_compose=False, tmp_path=tmp_path)
    assert f"--profile {OFFLINE_PROFILE}" in line and "up -d --build" in line
    exported = dict(re.findall(r"\b([A-Z][A-Z0-9_]+)=(\S+)", line.split("docker-compose")[0]))
    offline = resolved(tmp_path, "--profile", OFFLINE_PROFILE, env=exported)["services"]
    assert env_of(offline["extract_source_a"])["SOURCE_A_URL"] == f"http://emulator:{port}/v1/tickers"
    assert env_of(offline["extract_source_c"])["SOURCE_C_URL"] == f"http://emulator:{port}/api/v3/coins/markets"
    assert env_of(offline["extract_source_b"]).get("SOURCE_A_URL") == exported["SOURCE_A_URL"]  # same settings


def test_no_credential_defaults_in_the_compose_file(tmp_path):
    text = COMPOSE_FILE.read_text()
    secret_vars = [name.upper() for name in SECRET_FIELDS if name != "mongodb_uri"]
    assert secret_vars  # the set is read from Settings: a new secret is covered by this test at once
    for var in secret_vars:
        assert not re.search(r"\$\{" + var + r"\s*:?[-=?+]", text), f"{var} has a default or a message in compose"
    config = resolved(tmp_path)
    for name, service in config["services"].items():
        for var, value in env_of(service).items():
            if var in secret_vars:
                assert value in (None, ""), f"{name}: {var} is given a value"


def test_settings_reach_every_product_container_from_the_environment(tmp_path):
    """Whatever .env (or the shell) sets reaches the functions and the trigger: the compose file passes every
    variable the product reads, except the trigger's stage URLs (the network compose builds) and K_SERVICE."""
    values = {var: f"value-of-{var.lower()}" for var in PRODUCT_VARIABLES}
    services = resolved(tmp_path, env=values)["services"]
    set_by_compose = {*SET_BY_PLATFORM, *(f"{name.upper()}_URL" for name in STAGES)}  # the trigger's targets
    for name in (*FUNCTIONS, "trigger"):
        environment = env_of(services[name])
        for var in PRODUCT_VARIABLES:
            if var not in set_by_compose:
                assert environment.get(var) == values[var], f"{name}: {var}"
    empty = resolved(tmp_path)["services"]
    unset = [var for var in PRODUCT_VARIABLES
             if var not in set_by_compose | COMPOSE_DEFAULTS and env_of(empty["http_api"]).get(var)]
    assert unset == [], "a variable left unset must not be given a value by compose"


def test_env_example_documents_every_variable_and_holds_no_secret():
    text = (ROOT / ".env.example").read_text()
    documented = dict(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=(.*)$", text, re.M))
    compose_vars = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE_FILE.read_text()))
    missing = sorted((set(PRODUCT_VARIABLES) | compose_vars) - set(documented))
    assert missing == [], f".env.example does not document {missing}"
    for field_name in SECRET_FIELDS:
        assert documented.get(field_name.upper(), "").strip() == "", f"{field_name.upper()} has a value"
    for var in PRODUCT_VARIABLES:  # each variable comes with a line of explanation just above it
        assert re.search(r"^#\s*\S.*\n#?\s*" + var + "=", text, re.M), f"{var} has no comment"


# --- make local-up / local-down / logs -----------------------------------------------------------------------------
def make_dry_run(target: str, *args: str, docker_answers_compose: bool, tmp_path: Path) -> str:
    """`make -n <target>` with a fake `docker` first on PATH that does or does not know `docker compose`."""
    bin_dir = tmp_path / f"bin-{docker_answers_compose}"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "docker"
    fake.write_text("#!/bin/sh\n" + ('[ "$1" = compose ] && exit 0\n' if docker_answers_compose else "") + "exit 1\n")
    fake.chmod(0o755)
    done = subprocess.run(["make", "-s", "-n", "-C", str(ROOT), target, *args],
                          env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if "compose" in line]
    assert len(lines) == 1, done.stdout
    return lines[0]


@pytest.mark.parametrize("plugin, command", [(True, "docker compose"), (False, "docker-compose")])
def test_make_targets_drive_compose_with_the_plugin_when_there_is_one(tmp_path, plugin, command):
    up = make_dry_run("local-up", docker_answers_compose=plugin, tmp_path=tmp_path)
    assert re.search(re.escape(command) + r" .*up -d --build", up) and "--profile" not in up
    down = make_dry_run("local-down", docker_answers_compose=plugin, tmp_path=tmp_path)
    assert re.search(re.escape(command) + r" .*down\b", down)
    logs = make_dry_run("logs", docker_answers_compose=plugin, tmp_path=tmp_path)
    assert re.search(re.escape(command) + r" .*logs\b.*-f", logs)
