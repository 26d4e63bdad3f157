"""The OCI image of the Bento, defined in code so that build options can change how it is made.

`bentoml build` reads this through service.py. Options are environment variables at build time
(scripts/build_image.py sets them from its flags):

  TEXTGEN_TORCH_SOURCE  `wheel` (default): install the CPU wheel shipped inside the Bento from
                        ./wheels/ (works offline, needs nothing but PyPI);
                        `index`: install torch==VERSION+cpu from the PyTorch CPU index.
  TEXTGEN_TORCH_INDEX   find-links page for `index` (default: PyTorch's CPU torch page; a mirror of it).
  TEXTGEN_TORCH_WHEEL   file name of that wheel in ./wheels/ (default: CPU torch for CPython 3.11 x86-64).
  TEXTGEN_EXTRA_CA      PEM files or folders of them (`:`-separated) that the image must trust, for
                        TLS-intercepting proxies: pip and uv inside the build fail without them there.
  TEXTGEN_BASE_IMAGE    base image (default python:3.11-slim).

Without these options plain `torch==X` resolves to the CUDA build (several GB) on Linux.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

from bentoml.images import Image

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BASE_IMAGE = "python:3.11-slim"
PYTHON_VERSION = "3.11"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu/torch/"
CA_DIR = "/usr/local/share/ca-certificates/textgen-extra"
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
TORCH_PIN = re.compile(r"^torch==(?P<version>[\w.]+)\s*(#.*)?$")


def _requirements() -> tuple[list[str], str]:
    """The pinned runtime requirements without torch, and the pinned torch version."""
    lines = (PROJECT_ROOT / "requirements.txt").read_text().splitlines()
    packages = [s for line in lines if (s := line.split("#")[0].strip())]
    torch = [m["version"] for p in packages if (m := TORCH_PIN.match(p))]
    if len(torch) != 1:
        raise ValueError("requirements.txt must pin torch exactly once as torch==VERSION")
    return [p for p in packages if not TORCH_PIN.match(p)], torch[0]


def pinned_torch_version() -> str:
    return _requirements()[1]


def torch_requirement(source: str, version: str) -> list[str]:
    if source == "wheel":
        wheel = os.environ.get("TEXTGEN_TORCH_WHEEL", f"torch-{version}+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
        if not wheel.startswith(f"torch-{version}+cpu-"):
            raise ValueError(f"TEXTGEN_TORCH_WHEEL={wheel} is not the CPU build of torch {version}")
        return [f"./wheels/{wheel}"]  # relative to the Bento's src/, where bentofile.yaml includes wheels/
    if source == "index":
        # A find-links page, not an index: only torch comes from there, everything else from PyPI.
        return [f"--find-links {os.environ.get('TEXTGEN_TORCH_INDEX', TORCH_CPU_INDEX)}", f"torch=={version}+cpu"]
    raise ValueError(f"TEXTGEN_TORCH_SOURCE must be 'wheel' or 'index', not {source!r}")


def extra_ca_certs(spec: str) -> list[bytes]:
    """PEM certificates from files and folders (`*.crt`, `*.pem`) listed in `spec`."""
    certs = []
    for item in filter(None, spec.split(":")):
        path = Path(item)
        files = sorted([*path.glob("*.crt"), *path.glob("*.pem")]) if path.is_dir() else [path]
        for file in files:
            data = file.read_bytes()
            if b"-----BEGIN CERTIFICATE-----" not in data:
                raise ValueError(f"{file} is not a PEM certificate")
            certs.append(data)
    if not certs:
        raise ValueError(f"TEXTGEN_EXTRA_CA={spec} names no certificate")
    return certs


def install_ca_command(certs: list[bytes]) -> str:
    # Base64 keeps each PEM on one Dockerfile line; CA certificates are public, fine in image history.
    writes = [
        f"echo {base64.b64encode(pem).decode()} | base64 -d > {CA_DIR}/extra-{i}.crt" for i, pem in enumerate(certs)
    ]
    return " && ".join([f"mkdir -p {CA_DIR}", *writes, "update-ca-certificates"])


def container_image() -> Image:
    packages, torch_version = _requirements()
    # A distro BentoML has no recipe for skips its default first step, which apt-installs
    # build-essential, git and gnupg (~300 MB): every dependency here comes as a binary wheel.
    # (Clearing image.commands does not last: BentoML re-creates the Image and re-adds it.)
    image = Image(
        base_image=os.environ.get("TEXTGEN_BASE_IMAGE", DEFAULT_BASE_IMAGE),
        distro="prebuilt-python",
        python_version=PYTHON_VERSION,
    )
    if ca := os.environ.get("TEXTGEN_EXTRA_CA"):
        image.run(install_ca_command(extra_ca_certs(ca)))
    source = os.environ.get("TEXTGEN_TORCH_SOURCE", "wheel")
    return image.python_packages(*torch_requirement(source, torch_version), *packages)


def container_envs(model_tag: str) -> list[dict[str, str]]:
    """Non-secret settings baked into the image (API keys are passed at `docker run`, never here)."""
    envs = [{"name": "MODEL_TAG", "value": model_tag}]  # the model packed into this Bento
    if os.environ.get("TEXTGEN_EXTRA_CA"):
        # pip (certifi), requests and uv (own roots) ignore the system store unless told.
        envs += [{"name": n, "value": SYSTEM_CA_BUNDLE} for n in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT")]
    return envs
