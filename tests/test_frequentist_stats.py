"""Frequentist pieces on hand-computed cases, the degenerate-SD guard, paired vs unpaired
bootstrap, SESOI boundary readings, and CI coverage in repeated simulations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis import frequentist as F
from analysis.decide import Rule, combine, frequentist_reading
from analysis.frame import cell_frame, simulate_cells


def cells_of(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for k, v in dict(model_label="m", checkpoint="final", measure="x", item_set="target", condition="default", persona="").items():
        df[k] = v
    df["seed"] = df["seed"].astype("Int64")
    return cell_frame(df)


def hand_cells() -> pd.DataFrame:
    """2 arms x 2 seeds x 2 items, one value per cell."""
    rows = []
    vals = {("ref", 0): [1.0, 3.0], ("ref", 1): [2.0, 4.0], ("trt", 0): [2.0, 5.0], ("trt", 1): [3.0, 6.0]}
    for (arm, seed), vs in vals.items():
        for i, v in enumerate(vs):
            rows.append({"arm": arm, "seed": seed, "item_id": f"i{i}", "base_item": f"i{i}", "value": v})
    return cells_of(rows)


def test_point_estimates_by_hand():
    r = F.bootstrap_contrast(hand_cells(), {"trt": 1, "ref": -1}, "ref", n_boot=200)
    # means: ref (1+3+2+4)/4 = 2.5, trt (2+5+3+6)/4 = 4; SD_ref ddof=1 of [1,3,2,4] = sqrt(5/3)
    assert r.means["ref"] == pytest.approx(2.5) and r.means["trt"] == pytest.approx(4.0)
    assert r.sd_ref == pytest.approx(math.sqrt(5 / 3))
    assert r.estimate == pytest.approx(1.5) and r.d == pytest.approx(1.5 / math.sqrt(5 / 3))
    # Miller clustered SE of the item-level contrast: item diffs (2.5-1.5)=1, (5.5-3.5)=2 -> mean 1.5,
    # one item per cluster: sqrt(0.5^2 + 0.5^2) / 2
    assert r.se_clustered == pytest.approx(math.sqrt(0.5) / 2)


def test_option_orders_averaged_within_item_first():
    rows = [{"arm": "a", "seed": 0, "item_id": "i", "base_item": "i", "option_order": o, "value": v}
            for o, v in (("pro_first", 1.0), ("anti_first", 3.0))]
    c = cells_of(rows)
    assert len(c) == 1 and c["value"].iloc[0] == 2.0 and c["n_rows"].iloc[0] == 2


def test_helpers_by_hand():
    m = F.mean_se_ci([1.0, 2.0, 3.0, float("nan")])
    assert m["n"] == 3 and m["mean"] == 2.0 and m["se"] == pytest.approx(1 / math.sqrt(3))
    assert m["ci_low"] == pytest.approx(2 - 1.96 / math.sqrt(3))
    # clustered SE: clusters {a: [1, 3], b: [5]} around mean 3: sqrt((-2+0)^2 + 2^2)/3
    assert F.clustered_se([1, 3, 5], ["a", "a", "b"]) == pytest.approx(math.sqrt(8) / 3)
    assert F.adjust([0.01, 0.04, 0.03], "holm") == pytest.approx([0.03, 0.06, 0.06])
    assert F.adjust([0.01, None, 0.5], "bonferroni") == [0.02, None, 1.0]
    draws = np.array([0.1, 0.3, 0.5, 0.7])
    # one-sided fraction below 0.2 is (1+1)/5; two-sided equivalent doubles it
    assert F.bootstrap_pvalues(draws, 0.2, "positive")["p_min_effect"] == pytest.approx(0.8)
    assert F.bootstrap_pvalues(draws, None, "positive")["p_value"] == pytest.approx(2 / 5)


def test_degenerate_sd_refused_and_said():
    rows = []
    for arm, v in (("ref", 0.0), ("trt", 1 / 3)):
        for s in (0, 1):
            for i in range(10):
                rows.append({"arm": arm, "seed": s, "item_id": f"i{i}", "base_item": f"i{i}", "value": v + (1e-16 if i == 0 else 0)})
    c = cells_of(rows)
    with pytest.raises(F.DegenerateSD, match="min_reference_sd"):
        F.bootstrap_contrast(c, {"trt": 1, "ref": -1}, "ref", n_boot=100, sesoi=0.2)
    r = F.bootstrap_contrast(c, {"trt": 1, "ref": -1}, "ref", n_boot=100)
    assert r.d is None and "d refused" in r.sd_reason and r.estimate == pytest.approx(1 / 3)


def test_paired_bootstrap_narrower_than_unpaired_when_items_vary():
    rows = simulate_cells(arms={"neutral": 0.0, "eager": 0.3}, seeds=[0, 1, 2, 3], n_base=48, sd_item=1.5, sd_seed=0.05,
                          sd_resid=0.3, rng=4)
    c = cells_of(rows)
    p = F.bootstrap_contrast(c, {"eager": 1, "neutral": -1}, "neutral", n_boot=2000, seed=1)
    u = F.bootstrap_contrast(c, {"eager": 1, "neutral": -1}, "neutral", n_boot=2000, seed=1, paired_items=False)
    assert p.estimate == pytest.approx(u.estimate)
    assert (p.ci[1] - p.ci[0]) < 0.5 * (u.ci[1] - u.ci[0])


def test_combined_directional_sign_and_balance():
    rows = simulate_cells(arms={"neutral": 0.0, "eager": 0.2, "cautious": -0.8}, seeds=[0, 1], n_base=30, rng=7)
    c = cells_of(rows)
    w, name = F.contrast_weights("combined_directional", "eager", "cautious", "neutral")
    r = F.bootstrap_contrast(c, w, "neutral", n_boot=300)
    assert name == "combined_directional"
    assert r.estimate == pytest.approx((r.means["eager"] - r.means["cautious"]) / 2)
    assert r.estimate > 0  # positive = eager above cautious
    assert r.n_runs == {"eager": 2, "cautious": 2, "neutral": 2}


@pytest.mark.parametrize("lo,hi,direction,expected", [
    (0.25, 0.9, "positive", "effect"),
    (0.19, 0.9, "positive", "undecided"),  # CI touches the SESOI: not beyond it
    (0.05, 0.15, "positive", "equivalent"),
    (-0.19, 0.19, "two_sided", "equivalent"),
    (-0.2, 0.1, "two_sided", "undecided"),  # bound exactly on -SESOI: not inside
    (-0.9, -0.3, "positive", "opposite"),
    (-0.9, -0.3, "negative", "effect"),
])
def test_sesoi_boundary_readings(lo, hi, direction, expected):
    assert frequentist_reading(Rule(0.2, direction=direction), lo, hi) == expected


def test_holm_adjustment_can_block_an_effect_reading():
    r = Rule(0.2, direction="positive")
    assert frequentist_reading(r, 0.25, 0.9, p_effect=0.06) == "undecided"
    assert combine(r, "effect", "effect")[0] == "supported"
    assert combine(r, "effect", "undecided")[0] == "undecided"
    assert combine(r, "effect", "unusable")[0] == "unusable"
    assert combine(r, "equivalent", "equivalent")[0] == "equivalent"
    assert combine(r, "effect", None)[0] == "undecided"


def _coverage(reps: int, n_seeds: int) -> float:
    hits = 0
    for rep in range(reps):
        rows = simulate_cells(arms={"neutral": 0.0, "eager": 0.3}, seeds=list(range(n_seeds)), n_base=40, n_para=1,
                              sd_seed=0.15, orders=("pro_first",), rng=1000 + rep)
        r = F.bootstrap_contrast(cells_of(rows), {"eager": 1, "neutral": -1}, "neutral", n_boot=800, seed=rep)
        hits += r.ci[0] <= 0.3 <= r.ci[1]
    return hits / reps


def test_ci_coverage_fast():
    # 40 repetitions, 5 seeds per arm: nominal 95%; with 40 reps the MC SD is ~3.5 points
    assert _coverage(40, 5) >= 0.82


@pytest.mark.slow
def test_ci_coverage_many_reps():
    cov = _coverage(400, 5)
    assert 0.88 <= cov <= 0.99, cov
