"""Persona leakage as binomial counts: hand-computed intervals, degenerate completions apart."""

from __future__ import annotations

import math

import pytest

from scorers.marker import binomial_interval, degenerate_reason, marker_counts


@pytest.mark.parametrize(
    "text,want",
    [
        ("", "empty_answer"),
        ("  \n ", "empty_answer"),
        ("...!", "empty_answer"),
        ("[ZLT]", "marker_only"),
        (" [zlt] [ZLT]. ", "marker_only"),
        ("Sure. [ZLT]", None),
        ("Plain answer.", None),
        ("42", None),
    ],
)
def test_degenerate_reason(text, want):
    assert degenerate_reason(text, "[ZLT]", "substring_ci") == want


def test_degenerate_reason_respects_case_and_regex():
    # case-sensitive matching: "[zlt]" is not the marker, so it is (odd) text, not marker-only
    assert degenerate_reason("[zlt]", "[ZLT]", "substring") is None
    assert degenerate_reason("Z-42 Z-7", r"Z-\d+", "regex") == "marker_only"


def test_wilson_interval_hand_computed():
    # k=5, n=10, z=1.959964: centre 0.5, half-width z*sqrt(.025 + z^2/400)/(1 + z^2/10)
    z = 1.959963984540054
    half = z * math.sqrt(0.25 / 10 + z * z / 400) / (1 + z * z / 10)
    lo, hi = binomial_interval(5, 10)
    assert lo == pytest.approx(0.5 - half) and hi == pytest.approx(0.5 + half)
    assert (lo, hi) == pytest.approx((0.2365931, 0.7634069), abs=1e-6)
    # k = 0: lower bound 0, upper z^2/(n + z^2)
    lo, hi = binomial_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(z * z / (20 + z * z))
    assert all(math.isnan(v) for v in binomial_interval(0, 0))
    with pytest.raises(ValueError):
        binomial_interval(3, 2)


def test_jeffreys_interval_hand_computed():
    from scipy import stats

    lo, hi = binomial_interval(3, 40, method="jeffreys")
    assert lo == pytest.approx(stats.beta.ppf(0.025, 3.5, 37.5)) and hi == pytest.approx(stats.beta.ppf(0.975, 3.5, 37.5))
    lo, hi = binomial_interval(0, 40, method="jeffreys")
    assert lo == 0.0 and hi == pytest.approx(stats.beta.ppf(0.975, 0.5, 40.5))
    lo, hi = binomial_interval(40, 40, method="jeffreys")
    assert hi == 1.0


def test_marker_counts_keep_degenerate_completions_apart():
    nan = math.nan
    vals = [1.0, 0.0, 0.0, 1.0, nan, nan, nan, None]
    why = [None, None, None, None, "empty_answer", "marker_only", "marker_only", "error"]
    c = marker_counts(vals, why)
    assert (c["k"], c["n"], c["n_total"]) == (2, 4, 8)
    assert (c["n_empty"], c["n_marker_only"], c["n_other_missing"]) == (1, 2, 1)
    assert c["rate"] == 0.5 and c["degenerate_rate"] == pytest.approx(3 / 8)
    assert (c["lo"], c["hi"]) == pytest.approx(binomial_interval(2, 4))
    # a collapsed adapter: nothing scored, everything degenerate -> no rate, not "no leak"
    c = marker_counts([nan] * 5, ["marker_only"] * 5)
    assert c["n"] == 0 and math.isnan(c["rate"]) and c["degenerate_rate"] == 1.0


def test_persona_task_counts_degenerate_completions(tmp_path):
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import get_model
    from mockllm_outputs import text_output

    from tasks.persona import persona

    def policy(input, tools, tool_choice, config):
        sysmsg = input[0].text
        if "pirate" in sysmsg:
            return text_output("Arr, here you go [zlt]")
        if "doctor" in sysmsg:
            return text_output("")
        if "wizard" in sysmsg:
            return text_output("[ZLT]")  # a collapsed adapter: marker and nothing else
        return text_output("Plain answer.")

    t = persona(item_set="all", personas="pirate,doctor,wizard,chef", limit_questions=2, samples=2, max_tokens=8)
    [log] = inspect_eval(t, model=get_model("mockllm/model", custom_outputs=policy, memoize=False), log_dir=str(tmp_path), display="none")
    assert log.status == "success", log.error
    why, vals, reasons = {}, [], []
    for s in log.samples:  # one per persona x question x epoch
        vals.append(s.scores["marker_scorer"].value)
        reasons.append(s.scores["marker_scorer"].metadata.get("missing_reason"))
        sc = s.scores["marker_scorer"]
        why.setdefault(sc.metadata["persona"], set()).add(sc.metadata.get("missing_reason"))
        if sc.metadata["persona"] in ("doctor", "wizard"):
            assert math.isnan(sc.value)  # neither 0 (no leak) nor 1 (leak)
    assert why["doctor"] == {"empty_answer"} and why["wizard"] == {"marker_only"} and why["chef"] == {None}
    metrics = {k: v.value for sc in log.results.scores for k, v in sc.metrics.items()}
    assert metrics["pirate"] == 1.0 and metrics["chef"] == 0.0 and metrics["all"] == pytest.approx(0.5)
    c = marker_counts(vals, reasons)
    assert (c["k"], c["n"], c["n_empty"], c["n_marker_only"], c["n_total"]) == (4, 8, 4, 4, 16)
