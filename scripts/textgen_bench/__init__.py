"""Measurement tooling for the text-generation server: the serving benchmark and the soak run.

    common/           what both tools share: records, machine load, starting servers, the /health poller
    benchmark/        scripts/benchmark.py: the batched server against a baseline and the raw model
    soak/             scripts/soak.py: looping clients, disconnects and injected faults for a minute
    baseline_server   the thread-per-request server the benchmark compares against

Pure helpers (statistics, records, report) import nothing heavy, so unit tests stay fast;
torch, transformers and matplotlib load only where a measurement or plot needs them.
Installed with the project (pyproject.toml finds packages under scripts/ too), so nothing edits sys.path.
"""
