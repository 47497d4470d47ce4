"""The decision module: hand-computed readings, the two-part rule, the gates, and the rule that
no other module compares an interval or HDI with the SESOI / ROPE."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from analysis import decide as D
from analysis import frequentist as F

ROOT = Path(__file__).resolve().parents[1]


def test_tost_study_can_still_read_an_effect():
    # test: tost. CI [0.25, 0.9] beyond SESOI 0.2; adjusted minimum-effect p 0.01; adjusted TOST p 1.0.
    # The old analysis passed the TOST p as the effect p, so this read "undecided".
    r = D.Rule(0.2, direction="positive", test="tost")
    assert D.frequentist_reading(r, 0.25, 0.9, p_effect=0.01, p_tost=1.0) == "effect"
    assert D.frequentist_reading(r, 0.25, 0.9, p_effect=0.2, p_tost=1.0) == "undecided"


def test_tost_p_is_not_doubled_by_hand():
    # 1000 draws: 30 at -0.3 (below -SESOI), 5 at +0.3 (above +SESOI), the rest at 0.
    # one-sided p's: lower (1 + 30) / 1001 = 0.03097, upper (1 + 5) / 1001 = 0.00599.
    # TOST p = max = 0.03097 < 0.05 -> equivalent; the doubled p (0.0619) would not be.
    draws = np.array([-0.3] * 30 + [0.3] * 5 + [0.0] * 965)
    p = max(F.tail_p(draws, -0.2, "below"), F.tail_p(draws, 0.2, "above"))
    assert p == pytest.approx(31 / 1001)
    from analysis.steps.effects import tost_p

    assert tost_p(draws, 0.2) == pytest.approx(31 / 1001)
    r = D.Rule(0.2, direction="positive")
    assert D.frequentist_reading(r, -0.3, 0.0, p_effect=1.0, p_opposite=1.0, p_tost=tost_p(draws, 0.2)) == "equivalent"
    assert D.frequentist_reading(r, -0.3, 0.0, p_effect=1.0, p_opposite=1.0, p_tost=2 * 31 / 1001) == "undecided"


def test_opposite_reading_respects_multiplicity():
    # CI [-0.9, -0.3] lies beyond -SESOI against a positive prediction; the opposite test's raw p
    # is 0.03 but Holm over 2 hypotheses makes it 0.06 -> not "opposite".
    r = D.Rule(0.2, direction="positive")
    raw = [0.03, 0.5]
    adj = F.adjust(raw, "holm")
    assert adj == [pytest.approx(0.06), pytest.approx(0.5)]
    assert D.frequentist_reading(r, -0.9, -0.3, p_effect=1.0, p_opposite=adj[0]) == "undecided"
    assert D.frequentist_reading(r, -0.9, -0.3, p_effect=1.0, p_opposite=0.02) == "opposite"


def test_nil_test_readings():
    r = D.Rule(0.2, direction="negative", test="nil")
    assert D.frequentist_reading(r, -0.5, -0.01, p_nil=0.01) == "effect"
    assert D.frequentist_reading(r, 0.01, 0.5, p_nil=0.01) == "opposite"
    assert D.frequentist_reading(r, 0.01, 0.5, p_nil=0.2) == "undecided"


def test_against_prediction_by_hand():
    # the demo's H2: CI [+0.03, +0.30] against a negative prediction, adjusted nil p 0.02
    r = D.Rule(0.4, direction="negative")
    assert D.against_prediction(r, 0.03, 0.30, 0.02)
    assert not D.against_prediction(r, 0.03, 0.30, 0.09)  # adjusted p above alpha
    assert not D.against_prediction(r, -0.3, -0.03, 0.02)  # on the predicted side
    assert not D.against_prediction(D.Rule(0.4), 0.03, 0.30, 0.02)  # two-sided: nothing is "against"


def test_bayes_reading_directional():
    r = D.Rule(0.2, direction="positive")
    rope = (-0.2, 0.2)
    assert D.bayes_reading(r, 0.3, 0.9, rope) == "effect"
    assert D.bayes_reading(r, -0.9, -0.3, rope) == "opposite"
    assert D.bayes_reading(r, -0.1, 0.1, rope) == "equivalent"
    assert D.bayes_reading(r, 0.1, 0.9, rope) == "undecided"
    assert D.bayes_reading(r, 0.3, 0.9, rope, usable=False) == "unusable"
    assert D.bayes_reading(r, 0.3, 0.9, None) == "undecided"


def test_decide_gates():
    r = D.Rule(0.2, direction="positive")
    assert D.decide(r, "effect", "effect").verdict == "supported"
    v = D.decide(r, "effect", "effect", not_interpretable=["M1 (smollm2): undecided"])
    assert v.verdict == "not_interpretable" and "M1" in v.why and "supported" in v.why
    v = D.decide(r, "effect", "effect", unusable=["missing-data breach"], not_interpretable=["M1: undecided"])
    assert v.verdict == "unusable" and v.why == "missing-data breach"
    v = D.decide(r, "effect", "unusable", not_interpretable=["M1: undecided"])
    assert v.verdict == "unusable" and "diagnostics" in v.why  # a failed gate wins too
    assert D.decide(r, "opposite", "opposite").verdict == "not_supported"
    assert D.decide(r, "effect", None).verdict == "undecided"


# ------------------------------------------------------------------ one place for the rule

_INTERVAL = r"(?:\blo\b|\bhi\b|ci_lo\w*|ci_hi\w*|hdi_lo\w*|hdi_hi\w*|lower|upper|\blo_d\b|\bhi_d\b)"
_BOUND = r"(?:sesoi\w*|rope\w*|\bs\b|r0|r1)"
_CMP = re.compile(rf"{_INTERVAL}\s*[<>]=?\s*-?\s*{_BOUND}|{_BOUND}\s*[<>]=?\s*-?\s*{_INTERVAL}", re.I)


def test_only_the_decision_module_reads_intervals_against_the_sesoi():
    offenders = []
    for pkg in ("analysis", "reports", "prereg"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path == ROOT / "analysis" / "decide.py":
                continue
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if _CMP.search(line.split("#")[0]):
                    offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "interval-vs-SESOI comparisons outside analysis/decide.py:\n" + "\n".join(offenders)


def test_the_grep_catches_the_old_forms():
    for line in ("beyond_pos = lo > sesoi", "eq = (lo > -sesoi) and (hi < sesoi)", "if hi < r0 or lo > r1:",
                 "eff = hi < -sesoi"):
        assert _CMP.search(line), line


def test_confidence_is_graded_by_the_analysis():
    from types import SimpleNamespace as NS

    ok_fit = NS(usable=True, diagnostics=NS(passed=True))
    d = NS(kind="confirmatory", verdict="supported", hypothesis_id="H1", bayes_ids=["f"], effect_ids=["e"],
           frequentist_reading="effect", bayes_reading="effect")
    eff = {"e": NS(sd_ref_ok=True)}
    man = [NS(passed=True)]
    kw = dict(effects=eff, fits={"f": ok_fit}, manipulation=man, exploratory=False)
    assert D.confidence([d], n_seeds=3, **kw)["level"] == "high"
    assert D.confidence([d], n_seeds=2, **kw)["level"] == "moderate"
    c = D.confidence([NS(**{**vars(d), "bayes_reading": "undecided"})], n_seeds=3, **kw)
    assert c["level"] == "low" and "disagree for H1" in c["reasons"][0]
    c = D.confidence([d], n_seeds=3, **{**kw, "manipulation": [NS(passed=False)]})
    assert c["reasons"] == ["the manipulation check did not pass"]


def _validity_cells(fc_values, letter_values):
    import pandas as pd

    rows = []
    for i, (fc, lt) in enumerate(zip(fc_values, letter_values)):
        for measure, v in (("forced_choice", fc), ("letter_logprob", lt)):
            rows.append({"model_label": "m", "arm": "base", "seed": 0, "checkpoint": "final", "condition": "default",
                         "persona": "", "item_id": f"i{i}", "item_set": "source", "measure": measure, "value": v})
    return pd.DataFrame(rows)


def test_measure_validity_by_hand():
    # 4 informative pairs, 3 agree: 0.75 >= 0.7 passes; the item whose choice split (0) is not counted
    [v] = D.measure_validity(_validity_cells([1, 1, -1, -1, 0], [0.5, 0.2, -0.3, 0.4, 9.0]), threshold=0.7)
    assert (v["n_items"], v["agreement"], v["passed"], v["reason"]) == (4, 0.75, True, None)
    [v] = D.measure_validity(_validity_cells([1, 1, -1, -1], [0.5, -0.2, -0.3, 0.4]), threshold=0.7)
    assert (v["agreement"], v["passed"]) == (0.5, False)


def test_measure_validity_not_assessable_is_not_a_pass():
    # a forced choice that follows the option position splits every item (0 after averaging both
    # orders): nothing validates the measure, so it is not interpreted (the SmolLM2 attitude pilot)
    [v] = D.measure_validity(_validity_cells([0, 0, 0], [0.5, -0.2, 0.3]), threshold=0.7)
    assert v["n_items"] == 0 and v["agreement"] is None and v["passed"] is False
    assert v["reason"].startswith("not assessable: the forced_choice took no side on any source item")
