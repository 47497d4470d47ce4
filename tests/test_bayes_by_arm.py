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
