"""scripts/build_image.py's choice of where the image gets torch, decided by a real `pip download`."""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from pathlib import Path

import pytest

from scripts import build_image
from textgen.container_image import pinned_torch_version

VERSION = pinned_torch_version()
WHEEL_NAME = f"torch-{VERSION}+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"


def fake_wheel(folder: Path, name: str = WHEEL_NAME) -> Path:
    """A valid but empty wheel: pip reads only the name, METADATA, WHEEL and RECORD to accept it."""
    dist, version = name.split("-")[:2]
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: false\n"
        f"Tag: {'-'.join(name.removesuffix('.whl').split('-')[2:])}\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    wheel = folder / name
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@pytest.fixture
def find_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip configured by environment alone: no config files, no index, only this find-links folder."""
    folder = tmp_path / "wheelhouse"
    folder.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    folder = tmp_path / "downloads"
    folder.mkdir()
    return folder


def test_auto_ships_the_wheel_pip_finds(find_links: Path, dest: Path) -> None:
    fake_wheel(find_links)
    source, wheel = build_image.choose_torch("auto", None, VERSION, dest)
    assert (source, wheel) == ("wheel", dest / WHEEL_NAME)
    assert wheel is not None and wheel.read_bytes() == (find_links / WHEEL_NAME).read_bytes()


def test_auto_falls_back_to_the_index_and_says_why(find_links: Path, dest: Path, capsys) -> None:
    # Wheels pip must not take for the image: another torch version, and the right one for another platform.
    fake_wheel(find_links, "torch-2.0.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
    fake_wheel(find_links, f"torch-{VERSION}+cpu-cp311-cp311-macosx_11_0_arm64.whl")
    assert build_image.choose_torch("auto", None, VERSION, dest) == ("index", None)
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("==>")]
    assert len(said) == 1 and f"no CPU wheel of torch {VERSION}" in said[0] and "PyTorch CPU index" in said[0]


def test_forced_wheel_mode_fails_without_a_wheel(find_links: Path, dest: Path) -> None:
    with pytest.raises(SystemExit, match="finds no CPU wheel"):
        build_image.choose_torch("wheel", None, VERSION, dest)


def test_explicit_choices_skip_the_search(dest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build_image, "pip_find_wheel", lambda *_: pytest.fail("pip was asked"))
    given = Path("my/torch.whl")
    assert build_image.choose_torch("auto", given, VERSION, dest) == ("wheel", given)
    assert build_image.choose_torch("index", None, VERSION, dest) == ("index", None)


def test_defaults_and_help_name_no_path_of_the_build_host(capsys) -> None:
    args = build_image.parse_args([])
    assert (args.torch_source, args.torch_wheel) == ("auto", None)
    with pytest.raises(SystemExit):
        build_image.parse_args(["--help"])
    assert not re.findall(r"/work/|/opt/|/usr/local/share/ca-certificates", capsys.readouterr().out)
    with pytest.raises(SystemExit):
        build_image.parse_args(["--torch-source", "index", "--torch-wheel", WHEEL_NAME])
