"""The layering rules: the engine knows nothing of HTTP, serving nothing of the API, and only one module
reaches into BentoML's internals. Checked on what imports actually load, and on each module's own imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "textgen"
REPO = SRC.parents[1]


def loaded_after_import(*modules: str) -> set[str]:
    """Every module that importing `modules` loads, in a fresh interpreter."""
    code = f"import sys, {', '.join(modules)}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(out.split())


def direct_imports(path: Path) -> set[str]:
    """Absolute names of the modules a file imports itself (relative imports resolved)."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            names.add(".".join(p for p in (base, node.module or "") if p))
    return names


def under(names: set[str], *prefixes: str) -> set[str]:
    return {n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)}


def test_the_engine_loads_nothing_of_the_http_world_or_the_layers_above():
    loaded = loaded_after_import("textgen.engine")
    assert "torch" in loaded and "textgen.engine.batch_engine" in loaded  # the check sees real imports
    forbidden = under(loaded, "bentoml", "starlette", "uvicorn", "textgen.api", "textgen.serving", "textgen.config")
    assert not forbidden


def test_engine_modules_import_only_torch_transformers_and_the_grammar_library():
    # safetensors: transformers' own weight format (a dependency of it), for reading LoRA adapters. numpy (a
    # dependency of both): the sampler's per-row bookkeeping on small arrays, cheaper than small tensor ops.
    allowed = ("torch", "transformers", "safetensors", "numpy", "llguidance", "textgen.engine")
    for path in (SRC / "engine").glob("*.py"):
        third_party = {n for n in direct_imports(path) if n.split(".")[0] not in sys.stdlib_module_names}
        assert not third_party - under(third_party, *allowed), path.name


def test_serving_loads_nothing_of_the_api():
    modules = [f"textgen.serving.{p.stem}" for p in (SRC / "serving").glob("*.py") if p.stem != "__init__"]
    loaded = loaded_after_import(*modules)
    assert "textgen.serving.runtime" in loaded
    assert not under(loaded, "textgen.api")


def test_serving_modules_do_not_speak_http_themselves():
    for path in (SRC / "serving").glob("*.py"):
        assert not under(direct_imports(path), "starlette", "textgen.api"), path.name


def test_only_the_compat_module_touches_bentoml_internals():
    files = [*SRC.rglob("*.py"), REPO / "service.py"]
    assert len(files) > 20
    reaching = {p.name for p in files if "bentoml._internal" in p.read_text()}  # imports, by name or by string
    assert reaching == {"bentoml_compat.py"}


def test_relative_imports_are_resolved_against_their_package():
    names = direct_imports(SRC / "api" / "openai" / "handlers.py")
    assert {"textgen.api.openai.formats", "textgen.api.errors", "textgen.serving.runtime"} <= names
