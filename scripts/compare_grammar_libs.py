#!/usr/bin/env python3
"""xgrammar vs llguidance for grammar-constrained decoding on GPT-2's tokenizer: what each costs to install and
to run. Rerunnable; every result is labelled with the library versions.

    .venv/bin/python scripts/compare_grammar_libs.py [--steps 40] [--batches 1 8 32]

Install: `pip install --dry-run --report` in this venv (torch 2.13.0 CPU) says what each library would add or
replace; those wheels are downloaded (cached under bench-results/grammar-libs/wheels) to weigh them.
Run: each library is installed with --no-deps into its own folder (leaving out triton and anything CUDA, which
CPU decoding never imports) and measured in a subprocess: tokenizer-info build, cold compile (+ the first mask,
since llguidance builds its lexer lazily), cached compile + a fresh matcher, and per-step mask fill and apply
over float32 [batch, 50257] logits while walking a valid output. llguidance is measured through
textgen.engine.grammar/masking, the service's own path; xgrammar through its own API with matching settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench-results" / "grammar-libs"
TOKENIZER_DIR = REPO.parent / "shared" / "models" / "distilgpt2-no-weights"
LIBS = {"xgrammar": "xgrammar==0.2.8", "llguidance": "llguidance==1.9.1"}
HEAVY = ("torch", "triton", "nvidia-")  # what a CPU image must not get (or get replaced)
VOCAB = 50257

SMALL_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
NESTED_SCHEMA = {
    "type": "object",
    "properties": {
        "order_id": {"type": "string", "pattern": "^ORD-[0-9]{6}$"},
        "status": {"enum": ["pending", "paid", "shipped", "cancelled"]},
        "customer": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 60},
                "email": {"type": "string", "format": "email"},
                "address": {
                    "type": "object",
                    "properties": {
                        "street": {"type": "string"},
                        "city": {"type": "string"},
                        "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                    },
                    "required": ["street", "city", "zip"],
                    "additionalProperties": False,
                },
            },
            "required": ["name", "email", "address"],
            "additionalProperties": False,
        },
        "items": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string"},
                    "quantity": {"type": "integer", "minimum": 1, "maximum": 999},
                    "price": {"type": "number"},
                    "tags": {"type": "array", "items": {"enum": ["gift", "fragile", "bulk"]}},
                },
                "required": ["sku", "quantity", "price"],
                "additionalProperties": False,
            },
        },
        "paid": {"type": "boolean"},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["order_id", "status", "customer", "items", "paid", "note"],
    "additionalProperties": False,
}
NESTED_TEXT = json.dumps(
    {
        "order_id": "ORD-004217",
        "status": "shipped",
        "customer": {
            "name": "Ada Lovelace",
            "email": "ada@example.com",
            "address": {"street": "12 St James's Square", "city": "London", "zip": "10115"},
        },
        "items": [
            {"sku": "BK-1843", "quantity": 2, "price": 19.5, "tags": ["gift"]},
            {"sku": "PN-0001", "quantity": 1, "price": 3.25, "tags": []},
        ],
        "paid": True,
        "note": None,
    }
)
REGEX = r"[a-z]{1,12}@[a-z]{1,12}\.(com|org|net)"
CHOICES = [
    *("positive", "negative", "neutral", "mixed", "unknown", "sarcastic", "angry", "happy", "sad", "fearful"),
    *("surprised", "disgusted", "bored", "excited", "confused", "hopeful", "grateful", "proud", "ashamed", "calm"),
]
# name -> (kind, spec, a valid output to walk)
CASES: dict[str, tuple[str, Any, str]] = {
    "small_schema": ("json_schema", SMALL_SCHEMA, '{"name": "Ada Lovelace", "age": 36}'),
    "nested_schema": ("json_schema", NESTED_SCHEMA, NESTED_TEXT),
    "json_object": ("json_object", None, '{"a": [1, 2.5, {"b": null}], "c": "d", "e": true}'),
    "regex": ("regex", REGEX, "ada@example.com"),
    "choice": ("choice", CHOICES, "grateful"),
}


# ---------------------------------------------------------------------------------------------- install cost


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args], check=True, capture_output=True, text=True
    )


def footprint(spec: str) -> dict[str, Any]:
    """What installing `spec` into this venv brings: the library and each dependency the venv lacks (or would
    lacks), with its wheel's download and unpacked size. Resolved in full (--ignore-installed, so an installed
    library is weighed too) with every other installed package pinned to its version: a library that needs
    another torch (or anything else) fails to resolve, and that is the answer."""
    from importlib.metadata import PackageNotFoundError, version

    frozen = pip("freeze", "--exclude-editable").stdout.splitlines()
    own = spec.split("==")[0].lower()
    held = WORK / "held.txt"
    held.write_text("\n".join(line for line in frozen if "==" in line and line.split("==")[0].lower() != own))
    report = json.loads(
        pip("install", "--dry-run", "--quiet", "--ignore-installed", "--report", "-", "-c", str(held), spec).stdout
    )
    wheels = WORK / "wheels"
    packages = []
    for item in report["install"]:
        name, resolved = item["metadata"]["name"], item["metadata"]["version"]
        try:
            present = version(name)
        except PackageNotFoundError:
            present = None
        if present == resolved and not spec.startswith(f"{name}=="):
            continue  # the venv has it already: no cost
        prefix = f"{name.replace('-', '_')}-{resolved}-".lower()
        if not (found := [w for w in wheels.glob("*.whl") if w.name.lower().startswith(prefix)]):
            pip("download", "--quiet", "--no-deps", "-d", str(wheels), f"{name}=={resolved}")
            found = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(prefix)]
        with zipfile.ZipFile(found[0]) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
        packages.append(
            {
                "name": name,
                "version": resolved,
                "present": present,
                "wheel_mb": round(found[0].stat().st_size / 2**20, 1),
                "installed_mb": round(unpacked / 2**20, 1),
                "heavy": name.lower().startswith(HEAVY),
            }
        )
    return {"spec": spec, "packages": packages}


def runtime_site(lib: str, packages: list[dict[str, Any]]) -> Path:
    """A folder with `lib` and its light new dependencies, for the measuring subprocess's sys.path."""
    site = WORK / f"site-{lib}"
    wanted = sorted(f"{p['name']}=={p['version']}" for p in packages if not p["heavy"])
    stamp = site / ".installed"
    if not stamp.is_file() or stamp.read_text() != "\n".join(wanted):
        pip("install", "--quiet", "--no-deps", "--upgrade", "--target", str(site), *wanted)
        stamp.write_text("\n".join(wanted))
    return site


# ---------------------------------------------------------------------------------------------- run cost


def timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


class XGrammarRunner:
    def __init__(self, tokenizer: Any) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        self.version = xgr.__version__ if hasattr(xgr, "__version__") else _dist_version("xgrammar")
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=VOCAB)
        self.cold = xgr.GrammarCompiler(self.info, cache_enabled=False)
        self.cached = xgr.GrammarCompiler(self.info)
        self.batch = xgr.BatchGrammarMatcher()

    def build_info(self, tokenizer: Any) -> None:
        self.xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=VOCAB)

    def compile(self, kind: str, spec: Any, cached: bool) -> Any:
        compiler = self.cached if cached else self.cold
        if kind == "json_schema":  # as the service's llguidance settings: any whitespace, at most 20 per gap
            return compiler.compile_json_schema(json.dumps(spec), any_whitespace=True, max_whitespace_cnt=20)
        if kind == "json_object":
            return compiler.compile_json_schema('{"type": "object"}', any_whitespace=True, max_whitespace_cnt=20)
        if kind == "regex":
            return compiler.compile_regex(spec)
        return compiler.compile_grammar("root ::= " + " | ".join(json.dumps(c) for c in spec))

    def matcher(self, compiled: Any) -> Any:
        return self.xgr.GrammarMatcher(compiled)

    def alloc(self, batch: int) -> Any:
        return self.xgr.allocate_token_bitmask(batch, VOCAB)

    def fill(self, matchers: list[Any], bitmask: Any) -> None:
        if len(matchers) == 1:
            matchers[0].fill_next_token_bitmask(bitmask, 0)
        else:
            self.batch.batch_fill_next_token_bitmask(matchers, bitmask)

    def apply(self, logits: Any, bitmask: Any) -> None:
        self.xgr.apply_token_bitmask_inplace(logits, bitmask)

    def accept(self, matcher: Any, token: int) -> None:
        assert matcher.accept_token(token), token


class LLGuidanceRunner:
    def __init__(self, tokenizer: Any) -> None:
        import llguidance

        from textgen.engine.constraints import OutputConstraint
        from textgen.engine.grammar import GrammarCompiler
        from textgen.engine.masking import TokenMasker

        self.version = llguidance.__version__
        self.constraint = OutputConstraint
        self.compiler_cls = GrammarCompiler
        self.cached = GrammarCompiler(tokenizer, VOCAB)
        self.masker = TokenMasker(VOCAB)

    def build_info(self, tokenizer: Any) -> None:
        self.compiler_cls(tokenizer, VOCAB)

    def _constraint(self, kind: str, spec: Any) -> Any:
        c = self.constraint
        return {"json_schema": c.json_schema, "regex": c.regex, "choice": c.choice}[kind](spec) if spec else c(kind)

    def compile(self, kind: str, spec: Any, cached: bool) -> Any:
        constraint = self._constraint(kind, spec)
        return self.cached.compile(constraint) if cached else self.cached._build(constraint)

    def matcher(self, compiled: Any) -> Any:
        return compiled.matcher()

    def alloc(self, batch: int) -> Any:
        import torch

        return torch.zeros((batch, (VOCAB + 31) // 32), dtype=torch.int32)

    def fill(self, matchers: list[Any], bitmask: Any) -> None:
        # The service's fill: the library's masks, then its own EOS and failure bookkeeping.
        filled, _ = self.masker.fill(matchers, eos_token_id=VOCAB - 1)
        bitmask.copy_(filled)  # (not in the service's path, which applies the buffer itself: ~1 us)

    def apply(self, logits: Any, bitmask: Any) -> None:
        from textgen.engine.masking import apply_bitmask_inplace

        apply_bitmask_inplace(logits, bitmask, range(logits.shape[0]))

    def accept(self, matcher: Any, token: int) -> None:
        matcher.accept(token)


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def measure(lib: str, steps: int, batches: list[int]) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    from textgen.engine.masking import apply_bitmask_inplace as shared_apply

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    runner: Any = (XGrammarRunner if lib == "xgrammar" else LLGuidanceRunner)(tokenizer)
    out: dict[str, Any] = {"lib": lib, "version": runner.version, "torch": torch.__version__}
    out |= {"transformers": _dist_version("transformers"), "cpus": os.cpu_count()}
    out["tokenizer_info_s"] = min(timed(lambda: runner.build_info(tokenizer))[1] for _ in range(2))

    base = torch.randn(max(batches), VOCAB)
    cases: dict[str, Any] = {}
    for name, (kind, spec, text) in CASES.items():
        tokens = tokenizer.encode(text)[:steps]
        compiled, cold = timed(lambda kind=kind, spec=spec: runner.compile(kind, spec, cached=False))
        bitmask = runner.alloc(1)
        first_mask = timed(lambda compiled=compiled, bitmask=bitmask: runner.fill([runner.matcher(compiled)], bitmask))
        runner.compile(kind, spec, cached=True)
        cached = min(
            timed(lambda kind=kind, spec=spec: runner.matcher(runner.compile(kind, spec, cached=True)))[1]
            for _ in range(5)
        )
        case: dict[str, Any] = {"cold_compile_ms": cold * 1e3, "first_mask_ms": first_mask[1] * 1e3}
        case["cached_compile_and_matcher_ms"] = cached * 1e3
        for batch in batches:
            matchers = [runner.matcher(compiled) for _ in range(batch)]
            bitmask = runner.alloc(batch)
            fills, applies, shared_applies = [], [], []
            for token in tokens:
                logits, again = base[:batch].clone(), base[:batch].clone()
                t0 = time.perf_counter()
                runner.fill(matchers, bitmask)
                t1 = time.perf_counter()
                runner.apply(logits, bitmask)
                t2 = time.perf_counter()
                # The same bitmask through the service's torch apply: fill is what differs between libraries.
                shared_apply(again, bitmask, range(batch))
                t3 = time.perf_counter()
                assert torch.isfinite(logits[:, token]).all(), f"{lib} {name}: the valid token {token} was masked"
                assert torch.equal(again, logits)
                fills.append((t1 - t0) * 1e3)
                applies.append((t2 - t1) * 1e3)
                shared_applies.append((t3 - t2) * 1e3)
                for m in matchers:
                    runner.accept(m, token)
            totals = [f + a for f, a in zip(fills, applies, strict=True)]
            case[f"batch{batch}"] = {
                "steps": len(tokens),
                "fill_ms": statistics.median(fills),
                "apply_ms": statistics.median(applies),
                "shared_apply_ms": statistics.median(shared_applies),
                "step_p90_ms": sorted(totals)[int(0.9 * (len(totals) - 1))],
                "step_max_ms": max(totals),
            }
        cases[name] = case
    out["cases"] = cases
    return out


# ---------------------------------------------------------------------------------------------- report


def runs_env(runs: dict[str, dict[str, Any]]) -> str:
    run = next(iter(runs.values()))
    return f"torch {run['torch']}, transformers {run['transformers']}, {run['cpus']} CPUs"


def report(installs: dict[str, dict[str, Any]], runs: dict[str, dict[str, Any]], batches: list[int]) -> str:
    lines = [f"## Install (into this venv: {runs_env(runs)})", ""]
    lines += ["| library | new packages (wheel MB / installed MB) | total installed MB | touches torch/CUDA |"]
    lines += ["|---|---|---|---|"]
    for inst in installs.values():
        pkgs = ", ".join(f"{p['name']} {p['version']} ({p['wheel_mb']}/{p['installed_mb']})" for p in inst["packages"])
        total = sum(p["installed_mb"] for p in inst["packages"])
        heavy = ", ".join(p["name"] for p in inst["packages"] if p["heavy"]) or "no"
        lines.append(f"| {inst['spec']} | {pkgs} | {total:.1f} | {heavy} |")
    labels = {lib: f"{lib} {run['version']}" for lib, run in runs.items()}
    lines += ["", "## Compile (ms; tokenizer info in s)", ""]
    lines += ["| library | tokenizer info s | case | cold compile | first mask | cached compile + new matcher |"]
    lines += ["|---|---|---|---|---|---|"]
    for lib, run in runs.items():
        for name, case in run["cases"].items():
            lines.append(
                f"| {labels[lib]} | {run['tokenizer_info_s']:.2f} | {name} | {case['cold_compile_ms']:.1f} | "
                f"{case['first_mask_ms']:.2f} | {case['cached_compile_and_matcher_ms']:.3f} |"
            )
    title = "## Per step: fill + apply over float32 [batch, 50257] (ms: medians over the walk; p90 / max of the sum)"
    note = (
        "apply: the library's own CPU kernel (llguidance's is torch.compile'd, so the service's torch one stands "
        "in); [in brackets] the service's torch apply on the same bitmask, for both."
    )
    lines += ["", title, "", note, ""]
    lines += ["| library | case | " + " | ".join(f"batch {b}: fill + apply [torch] (p90 / max)" for b in batches)]
    lines[-1] += " |"
    lines += ["|---|---|" + "---|" * len(batches)]
    for lib, run in runs.items():
        for name, case in run["cases"].items():
            cells = []
            for b in batches:
                s = case[f"batch{b}"]
                cells.append(
                    f"{s['fill_ms']:.2f} + {s['apply_ms']:.2f} [{s['shared_apply_ms']:.2f}] "
                    f"({s['step_p90_ms']:.2f} / {s['step_max_ms']:.2f})"
                )
            steps = case[f"batch{batches[0]}"]["steps"]
            lines.append(f"| {labels[lib]} | {name} ({steps} steps) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="tokens walked per case (at most)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--libs", nargs="+", default=list(LIBS), choices=list(LIBS))
    parser.add_argument("--worker", choices=list(LIBS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.steps, args.batches)))
        return

    WORK.mkdir(parents=True, exist_ok=True)
    installs, runs = {}, {}
    for lib in args.libs:
        installs[lib] = footprint(LIBS[lib])
        site = runtime_site(lib, installs[lib]["packages"])
        env_path = f"{site}:{REPO / 'src'}"
        cmd = [sys.executable, __file__, "--worker", lib, "--steps", str(args.steps), "--batches"]
        done = subprocess.run(
            [*cmd, *map(str, args.batches)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": env_path},
        )
        runs[lib] = json.loads(done.stdout.strip().splitlines()[-1])
    text = report(installs, runs, args.batches)
    (WORK / "results.json").write_text(json.dumps({"installs": installs, "runs": runs}, indent=1))
    (WORK / "results.md").write_text(text + "\n")
    print(text)
    print(f"\n(also in {WORK.relative_to(REPO)}/results.md and results.json)")


if __name__ == "__main__":
    main()
