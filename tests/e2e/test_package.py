"""`make package`: every function directory is deployable on its own, with the shared package copied beside it."""

from __future__ import annotations

import shutil
import subprocess
import sys

from local.run_local import FUNCTIONS
from tests.conftest import ROOT


def test_each_packaged_function_imports_its_handler_from_its_own_copy(tmp_path):
    if not shutil.which("make"):
        raise AssertionError("make is required (the README's front door)")
    subprocess.run(["make", "-s", "package"], cwd=ROOT, check=True, capture_output=True)
    for name in FUNCTIONS:
        folder = ROOT / "build" / name
        assert sorted(p.name for p in folder.iterdir()) == ["common", "main.py", "requirements.txt"]
        probe = subprocess.run(
            [sys.executable, "-c", f"import common, main; print(common.__file__); print(callable(main.{name}))"],
            cwd=folder, capture_output=True, text=True, check=True,
        )
        origin, is_callable = probe.stdout.split()
        assert origin.startswith(str(folder)) and is_callable == "True"
