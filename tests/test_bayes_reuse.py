"""Compiled-model reuse (analysis.bayes._cached_model): a second fit of the same graph compiles
nothing, and a reused model gives the draws a fresh compile gives (same seed, same data)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import bayes as B
from analysis.frame import simulate_cells


def _rows(rng: int) -> pd.DataFrame:
    df = pd.DataFrame(simulate_cells(arms={"neutral": 0.0, "eager": 0.6}, seeds=[0, 1], n_base=5, sd_item=0.5,
                                     sd_seed=0.2, sd_resid=0.5, rng=rng))
    df["seed"] = df["seed"].astype("Int64")
    return df


SPEC = dict(likelihood="normal", draws=100, tune=100, chains=2, seed=5)


def test_second_fit_reuses_the_compiled_model_and_draws_match_a_fresh_compile():
    B.clear_model_cache()
    spec = B.BayesSpec(**SPEC)
    first = B.fit_model(_rows(1), ["neutral", "eager"], "neutral", spec, sd_ref=1.0)  # fresh compile
    counts = dict(B.COMPILE_COUNT)
    other = B.fit_model(_rows(2), ["neutral", "eager"], "neutral", spec, sd_ref=1.0)  # same graph, new data
    assert B.COMPILE_COUNT == counts, "the second fit of the same graph compiled again"
    assert other.model is first.model
    again = B.fit_model(_rows(1), ["neutral", "eager"], "neutral", spec, sd_ref=1.0)  # reused, first data back
    assert B.COMPILE_COUNT == counts
    # the reused model samples the data it was given, not the first fit's
    assert not np.allclose(B.contrast_draws(other, {"eager": 1, "neutral": -1}),
                           B.contrast_draws(first, {"eager": 1, "neutral": -1}))
    # same seed, same data: the reused model's draws are the fresh compile's (so are the contrast quantiles)
    qs = [0.025, 0.5, 0.975]
    c_first = B.contrast_draws(first, {"eager": 1, "neutral": -1})
    c_again = B.contrast_draws(again, {"eager": 1, "neutral": -1})
    assert np.quantile(c_again, qs) == pytest.approx(np.quantile(c_first, qs), abs=1e-9)
    np.testing.assert_array_equal(first.idata.posterior["arm_effect"].values, again.idata.posterior["arm_effect"].values)


@pytest.mark.slow  # three compiles (two models and a posterior predictive)
def test_fresh_compile_matches_and_ppc_loads_its_own_data(tmp_path):
    B.clear_model_cache()
    spec = B.BayesSpec(**SPEC)
    first = B.fit_model(_rows(1), ["neutral", "eager"], "neutral", spec, sd_ref=1.0)
    other = B.fit_model(_rows(2), ["neutral", "eager"], "neutral", spec, sd_ref=1.0)
    counts = dict(B.COMPILE_COUNT)
    fresh = B.fit_model(_rows(1), ["neutral", "eager"], "neutral", spec, sd_ref=1.0, reuse=False)
    assert B.COMPILE_COUNT["model"] == counts["model"] + 1 and fresh.model is not first.model
    np.testing.assert_array_equal(first.idata.posterior["arm_effect"].values, fresh.idata.posterior["arm_effect"].values)
    # the PPC of an earlier fit loads that fit's arrays back into the shared model
    B.ppc_figure(first, tmp_path / "ppc.png", n_draws=10)
    np.testing.assert_array_equal(first.model["obs_lik_y"].get_value(), first.arrays["lik_y"])
    assert not np.array_equal(first.arrays["lik_y"], other.arrays["lik_y"])


def test_the_rows_order_does_not_move_the_draws():
    """The frame's order follows the order the logs were read in; the posterior must follow the data only."""
    spec = B.BayesSpec(**SPEC)
    rows = _rows(3)
    shuffled = rows.sample(frac=1, random_state=7)
    assert not shuffled.index.equals(rows.index)
    a = B.fit_model(rows, ["neutral", "eager"], "neutral", spec, sd_ref=1.0)
    b = B.fit_model(shuffled, ["neutral", "eager"], "neutral", spec, sd_ref=1.0)
    np.testing.assert_array_equal(a.idata.posterior["arm_effect"].values, b.idata.posterior["arm_effect"].values)
