"""The analysis steps on hand-computed cases: verdict gates (missing-data breach = unusable, a
failed manipulation check = not_interpretable, "opposite" said when the CI points against the
prediction), unbalanced option orders, the relative SD guard, censored logprob margins."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis import frequentist as F
from analysis import results as R
from analysis.steps import effects as E
from analysis.steps import exclusions as X
from analysis.steps import missingness as MS
from analysis.steps import verdicts as V
from prereg.schema import Prereg

PREREG = """
id: t
title: steps test
version: 1
authors: [tests]
data_status: prior_to_creation
hypotheses:
  - {id: M1, statement: "manipulation check on source items", measure: letter_logprob, item_set: source,
     estimand: eager - neutral, direction: positive, sesoi: {value: 0.2, unit: d, justification: "small effect for tests"},
     confirmatory: false, family: manipulation}
  - {id: H1, statement: "target effect with a missing-data breach", measure: letter_logprob, item_set: target,
     estimand: eager - neutral, direction: positive, sesoi: {value: 0.2, unit: d, justification: "small effect for tests"},
     confirmatory: true, family: primary}
  - {id: H2, statement: "target effect that would be supported", measure: letter_logprob, item_set: other,
     estimand: eager - neutral, direction: positive, sesoi: {value: 0.2, unit: d, justification: "small effect for tests"},
     confirmatory: true, family: primary}
  - {id: H3, statement: "points against the prediction", measure: letter_logprob, item_set: other,
     estimand: cautious - neutral, direction: negative, sesoi: {value: 0.4, unit: d, justification: "small effect for tests"},
     confirmatory: true, family: primary, requires: []}
outcomes:
  primary: [{id: o1, measure: letter_logprob, item_set: target, description: letter margin}]
missing_data: Failed parses are excluded and counted.
stopping_rule: {kind: fixed_design, description: fixed design for tests}
multiplicity: {families: {primary: none, manipulation: none}}
frequentist: {alpha: 0.05, test: minimum_effect}
bayesian: {likelihood: {letter_logprob: normal}}
decision_rule: both frameworks beyond the SESOI, gates passed.
"""


def _effect(eid, lo, hi, adj, arms=("eager", "neutral")):
    src = R.Source(frame="analysis/frame.parquet")
    return R.Effect(id=eid, model_label="tiny", measure="letter_logprob", item_set="x", condition="default",
                    contrast="-".join(arms), arms=list(arms), reference_arm="neutral", estimate=(lo + hi) / 2,
                    d=(lo + hi) / 2, sd_ref=1.0, ci_low_d=lo, ci_high_d=hi, ci_low=lo, ci_high=hi, n_items=10,
                    p_adjusted_by_test=adj, source=src)


def _state(pre, effects, breaches=None, censored=None):
    hyp_models = [(h, "tiny") for h in pre.hypotheses]
    return SimpleNamespace(
        hyp_models=hyp_models, hyp_effect={(h.id, "tiny"): f"{h.id}/tiny" for h in pre.hypotheses}, effects=effects,
        validity=[], breaches=breaches or {}, censored=censored or [], opts=SimpleNamespace(bayes=False), fits={},
        hyp_fit={}, bayes_summary={}, guard=SimpleNamespace(exploratory=False), manipulation=[], decisions=[])


def test_verdict_gates_by_hand():
    pre = Prereg.model_validate(yaml.safe_load(PREREG))
    big = {"min_effect": 0.001, "opposite": 1.0, "tost": 1.0, "nil": 0.001}
    effects = {
        # M1: CI [0.05, 0.9] straddles the SESOI -> undecided -> not passed
        "M1/tiny": _effect("M1/tiny", 0.05, 0.9, {"min_effect": 0.3, "opposite": 1.0, "tost": 1.0, "nil": 0.01}),
        "H1/tiny": _effect("H1/tiny", 0.5, 0.9, big),
        "H2/tiny": _effect("H2/tiny", 0.5, 0.9, big),
        # H3 predicts negative; CI [+0.03, +0.30] excludes 0 on the other side (adjusted nil p 0.02)
        # but not beyond -SESOI: undecided, and said to point the opposite way
        "H3/tiny": _effect("H3/tiny", 0.03, 0.30, {"min_effect": 1.0, "opposite": 0.4, "tost": 0.3, "nil": 0.02},
                           arms=("cautious", "neutral")),
    }
    st = _state(pre, effects, breaches={("tiny", "letter_logprob", "target"): ["tiny/eager/seed0: 5/20 missing > 0.1"]})
    st = V.step(st, pre)
    dec = {d.hypothesis_id: d for d in st.decisions}
    assert st.decisions[0].hypothesis_id == "M1" and dec["M1"].verdict == "undecided"
    # a missing-data breach says "unusable" (the docs' word), not "undecided"; it wins over the check
    assert dec["H1"].verdict == "unusable" and "missing-data" in dec["H1"].reason
    # the frequentist reading alone would be "effect"; M1 did not pass -> not_interpretable, never supported
    assert dec["H2"].frequentist_reading == "effect" and dec["H2"].verdict == "not_interpretable"
    assert dec["H2"].requires == ["M1"] and dec["H2"].gates == ["M1 (tiny): undecided"]
    assert dec["H3"].verdict == "undecided" and dec["H3"].requires == []
    assert dec["H3"].against_prediction and dec["H3"].p_against == pytest.approx(0.02)
    assert st.manipulation[0].passed is False and st.manipulation[0].hypothesis_id == "M1"


def test_one_order_unparsed_cell_is_marked_and_not_averaged():
    from analysis.frame import CELL_KEYS, cell_frame

    base = {k: None for k in CELL_KEYS} | {"model_label": "m", "arm": "eager", "seed": 0, "checkpoint": "final",
                                          "measure": "forced_choice", "item_set": "target", "condition": "default"}
    rows = [
        base | {"item_id": "a", "base_item": "a", "option_order": "AB", "value": 1.0},
        base | {"item_id": "a", "base_item": "a", "option_order": "BA", "value": -1.0},  # balanced: mean 0
        base | {"item_id": "b", "base_item": "b", "option_order": "AB", "value": 1.0},
        base | {"item_id": "b", "base_item": "b", "option_order": "BA", "value": math.nan},  # BA unparsed
        base | {"item_id": "c", "base_item": "c", "option_order": "", "value": 0.5},  # no option orders
    ]
    use = pd.DataFrame(rows)
    cells = cell_frame(use)
    flags = dict(zip(cells["item_id"], X.unbalanced_cells(use)))
    assert flags == {"a": False, "b": True, "c": False}
    # cell_frame alone would average item b as +1 (the AB order's position bias, as if balanced)
    assert cells.set_index("item_id").loc["b", "value"] == 1.0


def test_word_pairs_are_balanced_per_pair_within_an_item_cell(tmp_path):
    """Token measure: item a asks two word pairs in both orders. go-wait is parsed in both (+2, 0);
    good-bad only in anti_first (-4): averaged as before the cell would be (2 + 0 - 4) / 3 = -0.667,
    carrying good-bad's position bias; balanced per pair it is go-wait's mean, +1.0. Item b (both
    pairs balanced) is the plain mean; a letter cell with one order unparsed is still set missing
    and counted."""
    from analysis.frame import CELL_KEYS

    base = {k: None for k in CELL_KEYS} | {"model_label": "m", "arm": "eager", "seed": 0, "checkpoint": "final",
                                          "item_set": "target", "condition": "default", "persona": "", "question_id": ""}
    tok = base | {"measure": "token_logprob"}
    rows = []
    for item, vals in (("a", {("go-wait", "pro_first"): 2.0, ("go-wait", "anti_first"): 0.0,
                              ("good-bad", "pro_first"): math.nan, ("good-bad", "anti_first"): -4.0}),
                       ("b", {("go-wait", "pro_first"): 1.0, ("go-wait", "anti_first"): 3.0,
                              ("good-bad", "pro_first"): -1.0, ("good-bad", "anti_first"): 1.0})):
        for (pair, order), v in vals.items():
            rows.append(tok | {"item_id": item, "base_item": item, "option_order": order, "value": v,
                               "sample_id": f"{item}:{pair}:{order}"})
    letter = base | {"measure": "letter_logprob", "item_id": "c", "base_item": "c"}
    rows += [letter | {"option_order": "pro_first", "value": 1.5, "sample_id": "c:pro_first"},
             letter | {"option_order": "anti_first", "value": math.nan, "sample_id": "c:anti_first"}]
    df = pd.DataFrame(rows)
    assert list(X.orphan_rows(df)) == [False, False, False, True] + [False] * 4 + [True, False]
    st = SimpleNamespace(df=df, out_dir=tmp_path, warnings=[], unbalanced=[])
    st = X.step(st, SimpleNamespace(exclusions=[]))
    value = dict(zip(st.cells["item_id"], st.cells["value"]))
    assert value["a"] == pytest.approx(1.0) and value["b"] == pytest.approx(1.0) and math.isnan(value["c"])
    assert [u["measure"] for u in st.unbalanced] == ["letter_logprob"]
    assert any("left out of their item cells" in w for w in st.warnings)
    assert st.use["value"].notna().sum() == 8  # the score rows (the Bayesian fits' input) keep every parsed row


def test_relative_sd_guard_refuses_a_likert_arm_one_cell_off_four():
    # reference arm: 39 cells at 0 (rating 4) and one at 1/3: SD = 0.0527; the other arm spans the
    # scale -1..+1, so the measure's range is 2 and the guard is 0.05 x 2 = 0.1 > 0.0527: refused.
    # Without it d = 0.3 / 0.0527 = 5.7 SD units from one cell.
    ref = np.array([0.0] * 39 + [1 / 3])
    sd = float(ref.std(ddof=1))
    assert sd == pytest.approx(0.05270, abs=1e-4)
    use = pd.DataFrame({"measure": "likert", "value": np.r_[ref, np.linspace(-1, 1, 40)]})
    assert E.measure_scale(use, "likert") == pytest.approx(2.0)
    guard = max(1e-6, 0.05 * E.measure_scale(use, "likert"))
    assert guard == pytest.approx(0.1)
    assert F.check_sd(sd, 40, guard, "reference arm 'neutral'")  # refused, with a reason
    assert not F.check_sd(sd, 40, 1e-6, "reference arm 'neutral'")  # the old absolute guard let it through


def test_censored_share_per_arm_and_its_gate():
    rows = []
    for arm, k in (("eager", 3), ("neutral", 1)):
        for i in range(10):
            rows.append({"model_label": "tiny", "arm": arm, "condition": "default", "measure": "letter_logprob",
                         "item_set": "target", "checkpoint": "final", "excluded": "", "value": 0.1,
                         "censored": "pro" if i < k else None})
    cen = MS.censored_by_cell(pd.DataFrame(rows))
    share = {c["arm"]: c["share"] for c in cen}
    assert share == {"eager": pytest.approx(0.3), "neutral": pytest.approx(0.1)}
    pre = Prereg.model_validate(yaml.safe_load(PREREG))
    h = pre.hypothesis("H2")
    e = _effect("H2/tiny", 0.5, 0.9, {})
    st = SimpleNamespace(censored=[c | {"item_set": "other"} for c in cen])
    gates = V._censored_over(st, pre, h, "tiny", e)
    assert len(gates) == 1 and "eager/default: 3/10" in gates[0] and "0.2" in gates[0]
