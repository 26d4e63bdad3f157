"""What opt-in int8 (MODEL_QUANTIZATION=int8) costs in quality, against the served fp32 model.

Loads a store model twice with the server's own loader (fp32, then int8) and reports greedy-token agreement over
52 fixed prompts and perplexity on a fixed text; writes bench-results/quality-<model>.json. Use a real-weight model
(random weights make both numbers meaningless):

    scripts/import_smollm2.sh && python scripts/measure_quantization.py --model-tag smollm2-135m-instruct:latest
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))


def main() -> int:
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    import bentoml

    from textgen.serving.model_store import load_model
    from textgen_bench.quality import compare, format_quality

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-tag", default="smollm2-135m-instruct:latest")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--out-dir", type=Path, default=REPO / "bench-results")
    args = p.parse_args()
    stored = bentoml.models.get(args.model_tag)
    report = compare(
        load_model(stored, "cpu", "float32"), load_model(stored, "cpu", "float32", "int8"), args.new_tokens
    )
    print(format_quality(report))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"quality-{stored.tag.name}.json"
    out.write_text(report.model_dump_json(indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
