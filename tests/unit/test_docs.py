"""The reference stays honest: every setting and every error type is documented, links and paths resolve, and no
path of our build machines leaks into what a user reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from textgen.api import errors
from textgen.config import Settings

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def text(name: str) -> str:
    return (REPO / name).read_text()


@pytest.mark.parametrize("setting", sorted(Settings.model_fields))
def test_every_setting_is_in_the_configuration_reference(setting: str):
    assert f"`{setting.upper()}`" in text("docs/configuration.md")


def test_every_error_type_of_the_catalogue_is_in_the_api_reference():
    kinds = [k for k in vars(errors).values() if isinstance(k, errors.ErrorKind)]
    fallbacks = [errors.kind_for_status(418), errors.kind_for_status(599)]  # client_error, server_error
    assert len(kinds) > 15
    documented = text("docs/api.md")
    missing = sorted({k.type for k in [*kinds, *fallbacks]} - set(re.findall(r"`([a-z_]+)`", documented)))
    assert not missing


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_and_repository_paths_resolve(doc: Path):
    body = doc.read_text()
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", body):  # relative links, anchors stripped
        assert (doc.parent / target).exists(), target
    for path in re.findall(r"(?<![\w/.-])((?:scripts|src|tests|docs)/[\w/.-]*\w)", body):
        if "*" not in path and "<" not in path:
            assert (REPO / path).exists() or (REPO / "scripts" / path).exists(), path


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_path_of_our_build_machines(doc: Path):
    assert not re.findall(r"/work/|/opt/wheels|/usr/local/share/ca-certificates", doc.read_text())
