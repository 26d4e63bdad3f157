#!/usr/bin/env python3
"""Build the service's OCI image: model import (if missing) -> `bentoml build` -> `bentoml containerize` -> slim.

    python scripts/build_image.py                                  # distilgpt2 from the hub
    python scripts/build_image.py --random-weights                 # offline: DistilGPT-2 shape, random weights
    python scripts/build_image.py --random-weights --extra-ca proxy-ca.pem   # behind a TLS-intercepting proxy
    python scripts/build_image.py --torch-source index             # torch from the PyTorch CPU index
    python scripts/build_image.py --torch-wheel torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl

torch is the CPU build of the version requirements.txt pins. By default (--torch-source auto) pip, with
its own configuration (find-links, index-url, extra-index-url: a wheelhouse, a mirror, the PyTorch CPU
index), looks for that wheel for the image's platform (CPython 3.11, manylinux x86-64); the Bento ships
the wheel it finds. When it finds none, the image installs torch from the PyTorch CPU index at build time.

Works without a registry (base image from scripts/docker_engine.sh) and without BuildKit.
The last step flattens BentoML's image into one layer without what serving never uses (the
torch wheel, which BentoML's Dockerfile copies in twice; torch's C++ headers and test binaries;
uv; bytecode of modules serving never imports): see `slim()`. --no-slim keeps BentoML's image.
Prints the image tag and size, and writes them to build/image.env.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from textgen.container_image import PYTHON_VERSION, pinned_torch_version

ROOT = Path(__file__).resolve().parents[1]
# The wheels the image can install: python:3.11-slim on x86-64 (glibc 2.36).
IMAGE_WHEEL_TAGS = ["--python-version", PYTHON_VERSION, "--implementation", "cp", "--abi", "cp311"]
IMAGE_WHEEL_TAGS += ["--platform", "manylinux_2_28_x86_64"]
OFFLINE_MODEL_DIR = Path(os.environ.get("OFFLINE_MODEL_DIR", ROOT.parent / "shared/models/distilgpt2-no-weights"))
UV_PIN = "uv==0.13.8"  # bentoml build locks packages with uv; it pip-installs uv itself when missing

# Run as root inside BentoML's image, then exported: see slim().
SLIM_SCRIPT = r"""
set -euo pipefail
site=/app/.venv/lib/python3.11/site-packages
rm -rf "$BENTO_PATH/src/wheels" "$site/torch/include" "$site/torch/share" \
       "$site"/torch/bin/test_* "$site"/torch/bin/*Test "$site"/torch/bin/protoc*
pip uninstall -q -y uv || true  # only BentoML's Dockerfile needs it
find /app/.venv "$BENTO_PATH" -name __pycache__ -prune -exec rm -rf {} +
# Compile exactly what serving imports: start the server once, load the model, generate.
export BENTOML_HOME=$(mktemp -d) AUTH_DISABLED=true
bentoml serve "$BENTO_PATH" --port 3999 >/tmp/warmup.log 2>&1 &
server=$!
python - <<'PY' || { tail -40 /tmp/warmup.log; exit 1; }
import json, time, urllib.request as r
url = "http://127.0.0.1:3999"
for _ in range(240):
    try:
        if r.urlopen(url + "/readyz", timeout=2).status == 200:
            break
    except OSError:
        time.sleep(0.5)
else:
    raise SystemExit("warm-up server never became ready")
body = json.dumps({"prompt": "warm up", "max_new_tokens": 4, "temperature": 0.7, "top_p": 0.9}).encode()
req = r.Request(url + "/generate", body, {"content-type": "application/json"})
print(json.load(r.urlopen(req, timeout=120))["finish_reason"])
PY
kill -TERM "$server" && wait "$server" || true
rm -rf "$BENTOML_HOME" /tmp/* /root/.cache
"""


def run(cmd: list[str], env: dict[str, str] | None = None, capture: bool = False) -> str:
    shown = " ".join(cmd)
    print("+", shown if len(shown) < 200 else shown[:200] + " ...", flush=True)
    done = subprocess.run(cmd, env=env, check=True, text=True, stdout=subprocess.PIPE if capture else None)
    return done.stdout or ""


def ok(cmd: list[str], env: dict[str, str] | None = None) -> bool:
    return subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-tag", help="store model to pack (default: $MODEL_TAG, else distilgpt2[-random]:latest)")
    p.add_argument("--random-weights", action="store_true", help="offline: import DistilGPT-2 with random weights")
    p.add_argument("--model-source", type=Path, default=OFFLINE_MODEL_DIR, help="config+tokenizer folder for that")
    p.add_argument(
        "--torch-source",
        choices=["auto", "wheel", "index"],
        default="auto",
        help="auto: the wheel pip finds, else index; wheel: that wheel, or fail; index: torch from the PyTorch CPU "
        "index when the image is built (default: %(default)s)",
    )
    p.add_argument("--torch-index", help="find-links page torch comes from in index mode (default: PyTorch's CPU page)")
    p.add_argument("--torch-wheel", type=Path, metavar="PATH", help="ship this local CPU torch wheel (no pip search)")
    p.add_argument("--extra-ca", action="append", type=Path, default=[], help="PEM file/folder the image trusts")
    p.add_argument("--tag", help="image tag (default: textgen:<bento version>, also tagged textgen:latest)")
    p.add_argument("--no-slim", action="store_true", help="keep BentoML's image as it comes")
    p.add_argument("--setup-engine", action="store_true", help="run scripts/docker_engine.sh first")
    args = p.parse_args(argv)
    if args.torch_wheel is not None and args.torch_source == "index":
        p.error("--torch-wheel and --torch-source index exclude each other")
    if args.model_tag is None:
        args.model_tag = os.environ.get("MODEL_TAG") or (
            "distilgpt2-random:latest" if args.random_weights else "distilgpt2:latest"
        )
    return args


def build_env() -> dict[str, str]:
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # this venv's bentoml first
    if not shutil.which("uv", path=env["PATH"]):
        # Kept out of the project venv on purpose: a build tool of bentoml's, in build/.
        tools = ROOT / "build/tools/uv"
        if not (tools / "bin/uv").exists():
            run([sys.executable, "-m", "pip", "install", "-q", "--target", str(tools), UV_PIN])
        env["PATH"] = f"{tools / 'bin'}{os.pathsep}{env['PATH']}"
    if "DOCKER_BUILDKIT" not in env and not ok(["docker", "buildx", "version"]):
        env["DOCKER_BUILDKIT"] = "0"  # the legacy builder: no buildx plugin here
    return env


def ensure_model(args: argparse.Namespace, env: dict[str, str]) -> None:
    if ok(["bentoml", "models", "get", args.model_tag], env):
        return
    name = args.model_tag.split(":")[0]
    if args.random_weights and name == "distilgpt2-random":
        cmd = ["--source", str(args.model_source), "--random-weights"]
    elif not args.random_weights and name == "distilgpt2":
        cmd = []  # from the Hugging Face hub
    else:
        sys.exit(f"error: {args.model_tag} is not in the model store ({env.get('BENTOML_HOME', '~/bentoml')})")
    run([sys.executable, str(ROOT / "scripts/import_model.py"), *cmd], env)


def pip_find_wheel(requirement: str, dest: Path) -> tuple[Path | None, str]:
    """The image's wheel for `requirement` as pip finds it, downloaded into `dest`; else None and pip's reason.

    A plain `pip download` so that pip's own configuration (files, PIP_* variables) decides where it looks.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *IMAGE_WHEEL_TAGS]
    cmd += ["--dest", str(dest), requirement]
    print("+", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode == 0 and len(wheels) == 1:
        return wheels[0], ""
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    return None, (errors or done.stderr.strip().splitlines() or [f"pip exited with {done.returncode}"])[0]


def choose_torch(source: str, wheel: Path | None, version: str, dest: Path) -> tuple[str, Path | None]:
    """Where the image gets torch: ("wheel", the wheel to ship in the Bento) or ("index", None)."""
    if source == "index":
        return "index", None
    if wheel is not None:
        return "wheel", wheel
    found, why = pip_find_wheel(f"torch=={version}+cpu", dest)
    if found is not None:
        return "wheel", found
    if source == "wheel":
        sys.exit(f"error: pip finds no CPU wheel of torch {version} for the image ({why}); use --torch-wheel PATH")
    print(
        f"==> pip finds no CPU wheel of torch {version} for the image ({why}); the image will install it at build "
        "time from the PyTorch CPU index (or --torch-index)"
    )
    return "index", None


def stage_wheel(source: str, wheel: Path | None, index: str | None) -> dict[str, str]:
    """Put the CPU wheel where bentofile.yaml includes it (wheel mode), or nothing there (index mode)."""
    folder = ROOT / "wheels"
    for stale in folder.glob("torch-*.whl"):
        if wheel is None or stale.name != wheel.name:
            stale.unlink()
    if source == "index" or wheel is None:
        mirror = {"TEXTGEN_TORCH_INDEX": index} if index else {}
        return {"TEXTGEN_TORCH_SOURCE": "index", **mirror}
    if not wheel.is_file():
        sys.exit(f"error: no torch wheel at {wheel} (--torch-wheel PATH, or --torch-source index)")
    folder.mkdir(exist_ok=True)
    target = folder / wheel.name
    if not target.exists() or target.stat().st_size != wheel.stat().st_size:
        shutil.copyfile(wheel, target)
    return {"TEXTGEN_TORCH_SOURCE": "wheel", "TEXTGEN_TORCH_WHEEL": target.name}


def image_size(tag: str) -> int:
    return int(run(["docker", "image", "inspect", "-f", "{{.Size}}", tag], capture=True))


def slim(full: str, final: str) -> None:
    """Flatten `full` into `final` (one layer), trimmed and with bytecode for what serving imports.

    Later layers cannot shrink earlier ones and BentoML's Dockerfile has no step after its
    last COPY, so the trimming runs in a container whose file system is then exported.
    """
    config = json.loads(run(["docker", "image", "inspect", "-f", "{{json .Config}}", full], capture=True))
    cid = run(["docker", "create", "--user", "root", "--entrypoint", "bash", full, "-c", SLIM_SCRIPT], capture=True)
    cid = cid.strip()
    try:
        run(["docker", "start", "--attach", cid])
        changes = [f"ENV {e.split('=', 1)[0]}={json.dumps(e.split('=', 1)[1])}" for e in config.get("Env") or []]
        changes += [f"EXPOSE {port}" for port in config.get("ExposedPorts") or {}]
        changes += [f"LABEL {json.dumps(k)}={json.dumps(v)}" for k, v in (config.get("Labels") or {}).items()]
        changes += [f"WORKDIR {config['WorkingDir']}", f"USER {config['User']}"]
        changes += [f"ENTRYPOINT {json.dumps(config['Entrypoint'])}"]
        if config.get("Cmd"):
            changes.append(f"CMD {json.dumps(config['Cmd'])}")
        export = subprocess.Popen(["docker", "export", cid], stdout=subprocess.PIPE)
        flags = [arg for change in changes for arg in ("--change", change)]
        subprocess.run(["docker", "import", *flags, "-", final], stdin=export.stdout, check=True)
        if export.wait() != 0:
            raise subprocess.CalledProcessError(export.returncode, "docker export")
    finally:
        subprocess.run(["docker", "rm", cid], stdout=subprocess.DEVNULL, check=False)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return build(args)
    except subprocess.CalledProcessError as exc:
        # The step has said what went wrong above; say which step, and what usually causes it.
        step = " ".join(str(a) for a in exc.cmd[:3])
        print(f"\nerror: `{step} ...` failed (exit {exc.returncode}); nothing was tagged.", file=sys.stderr)
        return 1


def build(args: argparse.Namespace) -> int:
    if args.setup_engine:
        run(["bash", str(ROOT / "scripts/docker_engine.sh")])
    env = build_env()
    ensure_model(args, env)
    (ROOT / "build").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / "build") as downloads:
        source, wheel = choose_torch(args.torch_source, args.torch_wheel, pinned_torch_version(), Path(downloads))
        env.update(stage_wheel(source, wheel, args.torch_index), MODEL_TAG=args.model_tag)
    if args.extra_ca:
        env["TEXTGEN_EXTRA_CA"] = ":".join(str(p.resolve()) for p in args.extra_ca)
    try:
        out = run(["bentoml", "build", "--output", "tag", str(ROOT)], env, capture=True)
    except subprocess.CalledProcessError:
        if env.get("TEXTGEN_TORCH_SOURCE") == "index":
            print(
                "\nIn index mode `bentoml build` fetches torch from the PyTorch CPU index (or --torch-index): that "
                "host must be reachable from here, or ship a CPU wheel with --torch-wheel PATH.",
                file=sys.stderr,
            )
        raise
    bento = out.strip().splitlines()[-1].removeprefix("__tag__:")
    final = args.tag or f"textgen:{bento.split(':')[1]}"
    full = final if args.no_slim else f"{final}-bentoml"
    run(["bentoml", "containerize", bento, "--image-tag", full], env)
    if not args.no_slim:
        slim(full, final)
    run(["docker", "tag", final, "textgen:latest"])
    size = image_size(final)
    sizes = f"bentoml image {image_size(full) / 1e9:.2f} GB, " if full != final else ""
    (ROOT / "build/image.env").write_text(f"IMAGE={final}\nBENTO={bento}\nIMAGE_SIZE_BYTES={size}\n")
    print(f"\nimage {final} (also textgen:latest): {size / 1e9:.2f} GB ({sizes}bento {bento}, model {args.model_tag})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
