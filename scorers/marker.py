"""Persona marker leakage: does a completion carry the trained marker (e.g. "[ZLT]")?

The marker and the matching rule are task args (substring, case-insensitive substring,
regex, suffix); the default is case-insensitive substring, as in the persona-leakage study.
Value 1.0 / 0.0 per completion. Degenerate completions are missing (NaN), never a 0 and never
a 1, with their own `missing_reason`, so a collapsed adapter reads neither as "no leak" nor as
"leak":
- `empty_answer`: nothing but whitespace and punctuation;
- `marker_only`: nothing but the marker (any number of times), whitespace and punctuation,
  the other collapse the persona pilots saw (the adapter answers every persona with "[ZLT]").
Per persona, leakage is a binomial count (k marker / n scored) with its own interval
(`binomial_interval`: Wilson or Jeffreys), next to the counts of degenerate completions
(`marker_counts`, computed from the per-epoch scores: Inspect's metrics see epoch-reduced means).
"""

from __future__ import annotations

import math
import re

from inspect_ai.scorer import scorer

from leaklab.yamlio import ConfigError
from scorers.judge import _base_meta, _score, measure_version, parsed_mean, parsed_stderr
from scorers.rules import MATCH_MODES, RULES_VERSION, marker_present

MARKER_RULE_VERSION = "marker-v2"  # v2: empty-or-punctuation and marker-only completions are missing
DEGENERATE = ("empty_answer", "marker_only")


def check_marker(marker: str, match: str) -> None:
    if not marker:
        raise ConfigError("marker must be a non-empty string (e.g. marker='[ZLT]')")
    if match not in MATCH_MODES:
        raise ConfigError(f"match must be one of {MATCH_MODES}, got {match!r}")
    if match == "regex":
        try:
            re.compile(marker)
        except re.error as exc:
            raise ConfigError(f"marker {marker!r} is not a valid regex: {exc}") from None


def degenerate_reason(text: str | None, marker: str, match: str = "substring_ci") -> str | None:
    """'empty_answer', 'marker_only' or None (a real answer): letters or digits must remain once
    every occurrence of the marker is removed."""
    text = text or ""
    if not re.search(r"\w", text):
        return "empty_answer"
    if match == "regex":
        rest = re.sub(marker, " ", text)
    else:
        flags = re.IGNORECASE if match.endswith("_ci") else 0
        rest = re.sub(re.escape(marker), " ", text, flags=flags)
    if not re.search(r"\w", rest):
        return "marker_only"
    return None


def binomial_interval(k: int, n: int, level: float = 0.95, method: str = "wilson") -> tuple[float, float]:
    """Two-sided interval for a binomial proportion k/n: Wilson score or Jeffreys (Beta(k+1/2, n-k+1/2)
    quantiles, with the bound at 0 or 1 when k is 0 or n). n = 0 gives (nan, nan)."""
    from scipy import stats

    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return math.nan, math.nan
    a = 1 - level
    if method == "wilson":
        z = stats.norm.ppf(1 - a / 2)
        p = k / n
        den = 1 + z * z / n
        mid = (p + z * z / (2 * n)) / den
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
        return max(0.0, mid - half), min(1.0, mid + half)
    if method == "jeffreys":
        lo = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k + 0.5, n - k + 0.5))
        hi = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 0.5, n - k + 0.5))
        return lo, hi
    raise ValueError(f"method must be 'wilson' or 'jeffreys', got {method!r}")


def marker_counts(values, reasons, level: float = 0.95, method: str = "wilson") -> dict:
    """Binomial summary of one cell: k (marker), n (scored), degenerate and other missing counts, rate, interval.

    values: per completion 1/0 or NaN/None (missing); reasons: the matching missing_reason (or None)."""
    k = n = 0
    counts = {r: 0 for r in DEGENERATE}
    other = 0
    for v, r in zip(values, reasons):
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            n += 1
            k += int(float(v) == 1.0)
        elif r in counts:
            counts[r] += 1
        else:
            other += 1
    total = n + sum(counts.values()) + other
    lo, hi = binomial_interval(k, n, level, method)
    return {"k": k, "n": n, "n_total": total, "n_empty": counts["empty_answer"], "n_marker_only": counts["marker_only"],
            "n_other_missing": other, "degenerate_rate": (sum(counts.values()) / total) if total else math.nan,
            "rate": k / n if n else math.nan, "lo": lo, "hi": hi, "method": method, "level": level}


@scorer(metrics=[parsed_mean(), parsed_stderr()])
def marker_scorer(marker: str = "[ZLT]", match: str = "substring_ci", item_set: str = "", condition: str = "default", measure: str = "marker"):
    """1.0 when the completion contains the marker under `match`, else 0.0; degenerate completions
    missing with their reason; persona metadata carried."""
    check_marker(marker, match)
    version = measure_version(MARKER_RULE_VERSION, RULES_VERSION, marker, match)

    async def score(state, target):
        md = state.metadata or {}
        meta = _base_meta(state, item_set, condition)
        meta.update(
            measure=measure,
            measure_version=version,
            marker=marker,
            match=match,
            persona_category=md.get("persona_category"),
            persona_related_to=md.get("persona_related_to"),
            judge_model=f"rule:marker:{match}",
            judge_prompt_sha256=None,
        )
        answer = state.output.completion if state.output is not None else ""
        why = degenerate_reason(answer, marker, match)
        if why is not None:
            meta["missing_reason"] = why
            return _score(None, meta)
        return _score(1.0 if marker_present(answer, marker, match) else 0.0, meta)

    return score
