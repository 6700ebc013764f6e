"""`make package`: every function directory is deployable on its own, with the shared package copied beside it.

The deployment check: a clean virtualenv gets one package's pinned requirements.txt (PyPI, through pip's cache),
and functions-framework serves the package from a copy outside the checkout, run as Cloud Functions runs it (cwd =
the package folder, `K_SERVICE` set). Nothing may default into that folder; configured explicitly, the packaged
`extract_source_b` reads Source B from the GCS emulator and picks up an append by the next invocation."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from local.generate_csv import HEADER
from local.run_local import FUNCTIONS
from tests.conftest import ROOT, csv_lines
from tests.e2e.conftest import free_port
from tests.e2e.object_servers import gcs_emulator  # noqa: F401 (fixture)

PACKAGE = "extract_source_b"


def make_package() -> None:
    if not shutil.which("make"):
        raise AssertionError("make is required (the README's front door)")
    subprocess.run(["make", "-s", "package"], cwd=ROOT, check=True, capture_output=True)


def test_each_packaged_function_imports_its_handler_from_its_own_copy(tmp_path):
    make_package()
    for name in FUNCTIONS:
        folder = ROOT / "build" / name
        assert sorted(p.name for p in folder.iterdir()) == ["common", "main.py", "requirements.txt"]
        probe = subprocess.run(
            [sys.executable, "-c", f"import common, main; print(common.__file__); print(callable(main.{name}))"],
            cwd=folder, capture_output=True, text=True, check=True,
        )
        origin, is_callable = probe.stdout.split()
        assert origin.startswith(str(folder)) and is_callable == "True"


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory) -> Path:
    """A virtualenv with nothing but one package's requirements.txt (pip's cache makes a re-run quick)."""
    make_package()
    where = tmp_path_factory.mktemp("clean") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, capture_output=True)
    pip = [str(where / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    installed = subprocess.run([*pip, "install", "-r", str(ROOT / "build" / PACKAGE / "requirements.txt")],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-2000:]
    checked = subprocess.run([*pip, "check"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout  # the pins are consistent with each other
    frozen = subprocess.run([*pip, "freeze"], capture_output=True, text=True, check=True).stdout.split()
    pinned = [line for line in (ROOT / "build" / PACKAGE / "requirements.txt").read_text().split()
              if not line.startswith("#") and "==" in line]
    assert sorted(map(str.lower, frozen)) == sorted(map(str.lower, pinned))  # nothing unpinned came along
    return where


def deployed_copy(tmp_path: Path, name: str) -> Path:
    """The package copied outside the checkout, as Cloud Functions unpacks it."""
    folder = tmp_path / "workspace" / name
    shutil.copytree(ROOT / "build" / name, folder)
    return folder


def serve(venv: Path, folder: Path, name: str, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """functions-framework serving `folder` on loopback; its stderr goes to `<folder>/../<name>.log`."""
    port = free_port()
    runtime = folder.parent / f".run-{port}"
    runtime.mkdir()
    base = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(folder.parent), "XDG_RUNTIME_DIR": str(runtime),
            "K_SERVICE": name, "LOG_LEVEL": "WARNING"}
    with open(log_of(folder), "ab") as log:
        process = subprocess.Popen([str(venv / "bin" / "functions-framework"), "--target", name, "--source",
                                    "main.py", "--host", "127.0.0.1", "--port", str(port)],
                                   cwd=folder, env={**base, **env}, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(url + "/", timeout=2)
            return process, url
        except requests.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise AssertionError(f"{name} did not start: {log_of(folder).read_text()[-2000:]}") from None
            time.sleep(0.2)


def log_of(folder: Path) -> Path:
    return folder.parent / f"{folder.name}.log"


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_every_package_imports_in_the_clean_virtualenv(clean_venv):
    """Every package pins the same runtime closure: its handler module imports with nothing else installed."""
    for name in FUNCTIONS:
        probe = subprocess.run([str(clean_venv / "bin" / "python"), "-c", f"import main; main.{name}"],
                               cwd=ROOT / "build" / name, capture_output=True, text=True, env={"PATH": "/usr/bin"})
        assert probe.returncode == 0, f"{name}: {probe.stderr[-1500:]}"


def test_deployed_without_a_store_it_refuses_instead_of_creating_sqlite_in_its_folder(clean_venv, tmp_path):
    folder = deployed_copy(tmp_path, PACKAGE)
    before = sorted(p.relative_to(folder) for p in folder.rglob("*") if "__pycache__" not in p.parts)
    process, url = serve(clean_venv, folder, PACKAGE, {})
    try:
        answer = requests.post(url + "/", timeout=60)
    finally:
        stop(process)
    assert answer.status_code == 500 and answer.json()["error"]["code"] == "config_error"
    logged = log_of(folder).read_text()  # the reason goes to the operator's log, not to the caller
    assert "MONGODB_URI" in logged and "SQLITE_PATH" in logged and "K_SERVICE" in logged, logged[-2000:]
    after = sorted(p.relative_to(folder) for p in folder.rglob("*") if "__pycache__" not in p.parts)
    assert after == before  # no data/, no etl.sqlite3 inside the function's folder


def test_packaged_extract_source_b_reads_the_gcs_emulator_and_picks_up_an_append(clean_venv, tmp_path,
                                                                                  gcs_emulator):
    lines = csv_lines(coins=2, days=30)
    gcs_emulator.upload("Historical_Data.csv", (HEADER + "".join(f"{line}\n" for line in lines)).encode())
    store = tmp_path / "store" / "etl.sqlite3"
    folder = deployed_copy(tmp_path, PACKAGE)
    process, url = serve(clean_venv, folder, PACKAGE, {
        "SQLITE_PATH": str(store), "SOURCE_B_PATH": gcs_emulator.location("Historical_Data.csv"),
        "STORAGE_EMULATOR_HOST": gcs_emulator.url, "CSV_CHUNK_ROWS": "25"})
    try:
        first = requests.post(url + "/", timeout=60)
        assert first.status_code == 200, first.text
        assert (first.json()["run"]["status"], first.json()["run"]["rows_in"]) == ("succeeded", 60)

        extra = csv_lines(coins=1, days=4, first_coin=2)
        gcs_emulator.upload("Historical_Data.csv",
                            (HEADER + "".join(f"{line}\n" for line in lines + extra)).encode())
        second = requests.post(url + "/", timeout=60).json()["run"]
        assert (second["status"], second["rows_in"]) == ("succeeded", 4), second
        assert second["checkpoint"]["offset"] == int(gcs_emulator.metadata("Historical_Data.csv")["size"])
    finally:
        stop(process)
    assert store.exists() and not (folder / "data").exists()
    assert "Traceback" not in log_of(folder).read_text()
