"""The serving benchmark (scripts/benchmark.py): load generator, in-process ceiling, records, report, plot."""
