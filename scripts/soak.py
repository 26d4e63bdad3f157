#!/usr/bin/env python3
"""Soak and fault run: looping clients, disconnects and injected faults against the real server.

The entry point only: the tool is textgen_bench.soak (scripts/textgen_bench/soak/); see --help.
"""

from textgen_bench.soak.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
