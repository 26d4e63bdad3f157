#!/usr/bin/env python3
"""Serving benchmark: the batched server against a thread-per-request baseline and the raw model.

The entry point only: the tool is textgen_bench.benchmark (scripts/textgen_bench/benchmark/); see --help.
"""

from textgen_bench.benchmark.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
