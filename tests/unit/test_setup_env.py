"""scripts/setup_env.sh's choice of what to install, run for real against a venv whose python only logs."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

DEFINING_FILES = ("requirements.txt", "requirements-dev.txt", "pyproject.toml", "requirements-import.txt")
FAKE_PYTHON = '#!/bin/sh\necho "$*" >> "$(dirname "$0")/../../pip.log"\n'


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A checkout with the files setup_env.sh reads, and a .venv whose python records what it is asked to do."""
    (tmp_path / "scripts").mkdir()
    for name in ("scripts/setup_env.sh", *DEFINING_FILES):
        shutil.copyfile(REPO / name, tmp_path / name)
    python = tmp_path / ".venv/bin/python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return tmp_path


def setup(root: Path, *args: str) -> list[str]:
    """Source setup_env.sh ARGS in `root`; returns what it installed: requirement files, `-e` for the project."""
    log = root / "pip.log"
    before = len(log.read_text().splitlines()) if log.exists() else 0
    done = subprocess.run(
        ["bash", "-c", 'source scripts/setup_env.sh "$@" && echo "PATH=$PATH"', "bash", *args],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert f"PATH={root}/.venv/bin:" in done.stdout
    calls = log.read_text().splitlines()[before:] if log.exists() else []
    return [summary(call, root) for call in calls]


def summary(call: str, root: Path) -> str:
    if " -r " in call:
        return call.split(" -r ")[-1].removeprefix(f"{root}/")
    return "-e" if call.endswith(f"--no-deps -e {root}") else call  # the project, without its dependencies


def test_serve_installs_the_runtime_set_only_and_once(root: Path) -> None:
    assert setup(root, "serve") == ["requirements.txt", "-e"]
    assert setup(root, "serve") == []


def test_a_venv_set_up_for_serving_gets_the_dev_set_for_tests(root: Path) -> None:
    setup(root, "serve")
    assert setup(root, "dev") == ["requirements-dev.txt", "-e"]
    assert setup(root, "dev") == []
    assert setup(root, "serve") == []  # the dev set includes the runtime set


def test_a_venv_set_up_for_tests_serves_as_it_is(root: Path) -> None:
    assert setup(root) == ["requirements-dev.txt", "-e"]  # no profile: dev, as before profiles
    assert setup(root, "serve") == []


def test_changed_requirements_install_again_per_profile(root: Path) -> None:
    setup(root, "dev")
    with (root / "requirements.txt").open("a") as f:
        f.write("tqdm==4.67.1\n")
    assert setup(root, "serve") == ["requirements.txt", "-e"]
    assert setup(root, "dev") == ["requirements-dev.txt", "-e"]


def test_a_venv_stamped_before_profiles_is_not_installed_again(root: Path) -> None:
    digest = hashlib.sha256(b"".join((root / name).read_bytes() for name in DEFINING_FILES)).hexdigest()
    (root / ".venv/.requirements.sha256").write_text(digest + "\n")
    assert setup(root, "dev") == []
    assert setup(root, "serve") == []


def test_an_unknown_profile_is_refused(root: Path) -> None:
    done = subprocess.run(["bash", "scripts/setup_env.sh", "prod"], cwd=root, capture_output=True, text=True)
    assert done.returncode == 2
    assert "unknown profile 'prod' (serve or dev)" in done.stderr
    assert not (root / "pip.log").exists()
