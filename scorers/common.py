"""What every scorer stamps and reports the same way: the one measure-version hash and the
metrics over parsed scores (a missing score is NaN with `parsed=False`, never a zero)."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from inspect_ai.scorer import Metric, SampleScore, metric


def measure_version(*parts: Any) -> str:
    """sha256 of the canonical JSON of everything that defines a measure (prompt hash, scale, rule...)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _is_parsed(s) -> bool:
    md = s.score.metadata or {}
    v = s.score.value
    return bool(md.get("parsed", True)) and isinstance(v, (int, float)) and math.isfinite(float(v))


@metric
def parsed_mean() -> Metric:
    """Mean over parsed scores only (missing ones are not zeros)."""

    def m(scores: list[SampleScore]) -> float:
        vals = [float(s.score.value) for s in scores if _is_parsed(s)]
        return sum(vals) / len(vals) if vals else math.nan

    return m


@metric
def parsed_stderr() -> Metric:
    """Standard error std(ddof=1)/sqrt(n) over parsed scores."""

    def m(scores: list[SampleScore]) -> float:
        vals = [float(s.score.value) for s in scores if _is_parsed(s)]
        n = len(vals)
        if n < 2:
            return math.nan
        mu = sum(vals) / n
        return math.sqrt(sum((v - mu) ** 2 for v in vals) / (n - 1) / n)

    return m
