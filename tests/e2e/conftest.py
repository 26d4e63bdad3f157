"""The image under test, once per session: TEXTGEN_IMAGE reuses a built one, otherwise scripts/build_image.py."""

from __future__ import annotations

import pytest

from tests.e2e.docker_support import docker, textgen_image


@pytest.fixture(scope="session")
def image() -> str:
    if docker("info", check=False).returncode != 0:
        pytest.fail("no Docker engine answers: run scripts/docker_engine.sh (as root) first")
    return textgen_image()
