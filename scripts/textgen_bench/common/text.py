"""Small text helpers of both reports (Markdown, so tables paste into the docs)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .records import TargetCheck


def fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:{spec}}{suffix}"


def table_row(cells: Sequence[str]) -> str:
    """One Markdown table row."""
    return "| " + " | ".join(cells) + " |"


def format_targets(targets: Sequence[TargetCheck]) -> str:
    return "\n".join(f"- {t.verdict} {t.name}: {t.detail}" for t in targets)
