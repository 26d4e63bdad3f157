"""Serving benchmark for the text-generation server: load generator, baselines, report.

Pure helpers (statistics, records, report) import nothing heavy, so unit tests stay fast;
torch, transformers and matplotlib load only where a measurement or plot needs them.
"""
