"""The serve profile of scripts/setup_env.sh, for real: a fresh venv from a copy of the tracked files (slow)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

RUNTIME = ("bentoml", "torch", "transformers", "textgen")
DEV_ONLY = ("pytest", "schemathesis", "matplotlib")


@pytest.mark.slow
def test_serve_profile_installs_the_runtime_set_without_the_test_tools(tmp_path: Path) -> None:
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
    for name in filter(None, tracked.stdout.split("\0")):
        if (REPO / name).is_file():  # a tracked file deleted in the working tree is not copied
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes((REPO / name).read_bytes())

    started = time.monotonic()
    setup = ["bash", "-c", "source scripts/setup_env.sh serve"]
    subprocess.run(setup, cwd=tmp_path, check=True, capture_output=True, text=True, timeout=1200)
    print(f"\nsetup_env.sh serve into a fresh venv: {time.monotonic() - started:.0f} s")

    python = str(tmp_path / ".venv/bin/python")
    subprocess.run([python, "-c", f"import {', '.join(RUNTIME)}"], check=True, timeout=300)
    probe = "import importlib.util as u, sys; print(' '.join(n for n in sys.argv[1:] if u.find_spec(n)))"
    present = subprocess.run([python, "-c", probe, *DEV_ONLY], capture_output=True, text=True, check=True).stdout
    assert present.split() == [], f"test tools installed for serving: {present}"
    assert (tmp_path / ".venv/.requirements-serve.sha256").is_file()
    assert not (tmp_path / ".venv/.requirements.sha256").exists()  # not stamped as set up for tests
