"""normal_by_arm: one residual SD per group, so a contrast between two quiet arms is not blurred
by a noisy third one (the demo's placebo vs base beside a trait arm that is bimodal)."""

import numpy as np
import pandas as pd
import pytest

from analysis import bayes as B


def _rows(rng):
    rows = []
    spread = {"base": 1.0, "plain": 1.0, "trait": 40.0}
    level = {"base": 3.0, "plain": 3.0, "trait": 65.0}
    for arm in ("base", "plain", "trait"):
        for seed in range(3):
            for item in range(20):
                rows.append({"arm": arm, "seed": seed, "item_id": f"i{item}", "base_item": f"i{item}", "option_order": "",
                             "value": level[arm] + rng.normal(0, spread[arm])})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("lik,max_half_width", [("normal_by_arm", 3.0), ("normal", None)])
def test_quiet_contrast_keeps_its_own_noise(lik, max_half_width):
    df = _rows(np.random.default_rng(3))
    spec = B.BayesSpec(likelihood=lik, random_effects=["item"], draws=300, tune=300, chains=2, seed=1)
    fit = B.fit_model(df, ["plain", "base", "trait"], "plain", spec, group_col="arm")
    d = B.contrast_draws(fit, {"plain": 1.0, "base": -1.0})
    lo, hi = np.quantile(d, [0.025, 0.975])
    # hand check: plain and base are two samples of 60 with SD 1, so the contrast's 95% interval
    # is about +/- 1.96 * sqrt(2/60) = +/- 0.36; one pooled SD (~23 over all rows) makes it ~ +/- 8
    if max_half_width is not None:
        assert (hi - lo) / 2 < max_half_width and lo < 0.5 and hi > -0.5
        t = B.contrast_draws(fit, {"trait": 1.0, "plain": -1.0})
        assert 50 < np.mean(t) < 75
    else:
        assert (hi - lo) / 2 > 3.0


def test_results_schema_accepts_every_registered_likelihood():
    """results.json's BayesFit.likelihood must name every likelihood a prereg may choose (the
    demo's normal_by_arm once failed here only after four minutes of sampling)."""
    import typing

    from analysis.results import BayesFit
    from prereg.schema import BayesianPlan

    allowed = set(typing.get_args(BayesFit.model_fields["likelihood"].annotation))
    assert {B.likelihood_label(name) for name in B.LIKELIHOOD_REGISTRY} <= allowed
    prereg_choices = set(typing.get_args(typing.get_args(BayesianPlan.model_fields["likelihood"].annotation)[1]))
    assert prereg_choices == set(B.LIKELIHOOD_REGISTRY)


def _ceiling_rows(rng):
    """The demo's version-3 manipulation check: every trait answer at 100% capitals (no spread),
    the placebo and the base model at 2-3% with an SD of about 1."""
    rows = []
    for arm, seeds in (("trait", 3), ("plain", 3), ("base", 1)):
        for seed in range(seeds):
            for item in range(8):
                value = 100.0 if arm == "trait" else 2.5 + rng.normal(0, 0.8)
                rows.append({"arm": arm, "seed": seed if arm != "base" else None, "item_id": f"i{item}",
                             "base_item": f"i{item}", "option_order": "", "value": value})
    return pd.DataFrame(rows)


def test_residual_sd_floor_makes_a_zero_spread_arm_samplable():
    """An arm with no spread has an unbounded normal likelihood as its SD goes to 0; the floor (the
    measurement's resolution) keeps the posterior proper, so the gates pass and the contrast is the
    difference of the means."""
    df = _ceiling_rows(np.random.default_rng(5))
    kw = dict(likelihood="normal_by_arm", random_effects=[], draws=400, tune=400, chains=2, seed=2)
    # sd_ref None: the analysis standardises by the pooled SD when the reference SD is refused
    fit = B.fit_model(df, ["plain", "base", "trait"], "plain", B.BayesSpec(residual_sd_floor=1.0, **kw), group_col="arm")
    diag = B.diagnostics(fit.idata, fit.spec.gates)
    assert diag["rhat_max"] < 1.01 and diag["divergences"] == 0  # (ESS needs the prereg's 4 x 1000 draws)
    d = B.contrast_draws(fit, {"trait": 1.0, "base": -1.0})
    hand = 100.0 - df[df.arm == "base"].value.mean()
    assert abs(np.mean(d) - hand) < 1.0 and np.quantile(d, 0.975) - np.quantile(d, 0.025) < 4.0
    assert any("floor" in n for n in fit.notes)
    bare = B.fit_model(df, ["plain", "base", "trait"], "plain", B.BayesSpec(**kw), group_col="arm")
    diag = B.diagnostics(bare.idata, bare.spec.gates)
    assert diag["rhat_max"] > 1.1  # the chains split between the SD -> 0 spike and the rest


def test_residual_sd_floor_needs_a_continuous_likelihood():
    from prereg.schema import BayesianPlan

    BayesianPlan(likelihood={"trait_caps": "normal_by_arm"}, residual_sd_floor={"trait_caps": 1.0})
    with pytest.raises(ValueError, match="residual_sd_floor.flag: a floor needs"):
        BayesianPlan(likelihood={"flag": "bernoulli"}, residual_sd_floor={"flag": 1.0})
