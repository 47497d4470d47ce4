"""The default sampler, nutpie: one compile serves fits that differ only in their rows, and it
gives the draws a fresh compile gives; its posterior is pymc's (contrast quantiles side by side);
run effects are centred where the data pin each run; a tuning-free request fails clearly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import bayes as B
from analysis.frame import simulate_cells

pytest.importorskip("nutpie")


def _rows(rng: int, n_base: int, seeds=(0, 1), sd_resid: float = 0.5) -> pd.DataFrame:
    df = pd.DataFrame(simulate_cells(arms={"neutral": 0.0, "eager": 0.6}, seeds=list(seeds), n_base=n_base,
                                     sd_item=0.5, sd_seed=0.3, sd_resid=sd_resid, rng=rng))
    df["seed"] = df["seed"].astype("Int64")
    return df


def _spec(**kw) -> B.BayesSpec:
    return B.BayesSpec(**{**dict(likelihood="normal", random_effects=["seed"], draws=200, tune=200, chains=2,
                                 seed=5, sampler="nutpie"), **kw})


def test_nutpie_reuses_its_compile_across_row_counts_and_matches_a_fresh_compile():
    """One compile serves fits that differ in rows only and samples what a fresh compile does; the
    runs, pinned by their rows, get centred effects (checked on the same compile)."""
    B.clear_model_cache()
    spec = _spec()
    first = B.fit_model(_rows(1, n_base=6, sd_resid=0.1), ["neutral", "eager"], "neutral", spec, sd_ref=1.0)  # compiles
    counts = dict(B.COMPILE_COUNT)
    bigger = _rows(2, n_base=9, sd_resid=0.1)  # 1.5x the rows, same arms and runs: same parameters
    reused = B.fit_model(bigger, ["neutral", "eager"], "neutral", spec, sd_ref=1.0)
    assert first.formula.split("  [")[0] == reused.formula.split("  [")[0]  # one graph
    # each run pinned by 12-18 rows at residual SD 0.1: run effects centred (u_run sampled directly)
    assert "(1|run: seed within model x arm) [centred]" in reused.formula
    assert "u_run" in reused.idata.posterior and "z_run" not in reused.idata.posterior
    assert B.COMPILE_COUNT["nutpie"] == counts["nutpie"], "a fit that differs in rows only compiled again"
    fresh = B.fit_model(bigger, ["neutral", "eager"], "neutral", spec, sd_ref=1.0, reuse=False)
    assert B.COMPILE_COUNT["nutpie"] == counts["nutpie"] + 1
    # same seed, same data: the reused compile samples exactly what a fresh one does (so its data
    # really are the new rows, not the first fit's)
    np.testing.assert_array_equal(reused.idata.posterior["arm_effect"].values, fresh.idata.posterior["arm_effect"].values)
    (observed,) = reused.idata.observed_data.data_vars.values()  # pm.sample's trace has it too (the PPC reads it)
    assert observed.size == len(bigger)
    assert not any(v.endswith("__") for v in reused.idata.posterior.data_vars)


@pytest.mark.long_running
def test_nutpie_and_pymc_give_the_same_posterior():
    # three seeds per arm, each run pinned by 80 rows: both samplers mix cleanly here
    df = _rows(3, n_base=20, seeds=(0, 1, 2), sd_resid=0.3)
    qs = [0.05, 0.5, 0.95]
    out = {}
    for sampler in ("nutpie", "pymc"):
        fit = B.fit_model(df, ["neutral", "eager"], "neutral", _spec(sampler=sampler, draws=500, tune=500, chains=2,
                                                                     random_effects=["seed", "item"]), sd_ref=1.0)
        assert B.diagnostics(fit.idata, {**B.DEFAULT_GATES, "ess_bulk_min": 100, "ess_tail_min": 100})["divergences"] == 0
        out[sampler] = np.quantile(B.contrast_draws(fit, {"eager": 1, "neutral": -1}), qs)
    # both estimate the planted +0.6 and agree within Monte Carlo error of 1,000 draws
    assert out["nutpie"] == pytest.approx(out["pymc"], abs=0.08)
    assert out["nutpie"][1] == pytest.approx(0.6, abs=0.3)


def test_pymc_keeps_run_effects_non_centred():
    # decided without sampling: the formula is built before the sampler runs
    fit = B.fit_model(_rows(4, n_base=40, seeds=(0, 1, 2), sd_resid=0.1), ["neutral", "eager"], "neutral",
                      _spec(sampler="pymc", draws=20, tune=20, chains=1), sd_ref=1.0)
    assert "(1|run: seed within model x arm) [non-centred]" in fit.formula


def test_nutpie_without_tuning_fails_clearly():
    with pytest.raises(ValueError, match="tune >= 1"):
        B.fit_model(_rows(1, n_base=4), ["neutral", "eager"], "neutral", _spec(tune=0), sd_ref=1.0)


@pytest.mark.slow  # one numba compile per likelihood (~20-40 s each on 2 cores)
@pytest.mark.parametrize("lik", sorted(B.LIKELIHOOD_REGISTRY))
def test_every_likelihood_samples_with_nutpie(lik, tmp_path):
    """The default sampler serves every registered likelihood: draws, natural-scale group means
    in the score's range, the planted direction, and the posterior predictive figure."""
    kind = {"bernoulli": "binary", "binomial": "binary", "ordered_logistic": "likert"}.get(lik, "continuous")
    # a planted effect of 2 latent units: clear on every scale (1 unit left binary data at 88% posterior mass)
    df = pd.DataFrame(simulate_cells(arms={"neutral": 0.0, "eager": 2.0}, seeds=[0, 1, 2], n_base=12, sd_item=0.5,
                                     sd_seed=0.1, sd_resid=0.5, rng=7, kind=kind))
    if lik == "beta":  # rates in (0, 1)
        df["value"] = 1 / (1 + np.exp(-df["value"]))
    df["seed"] = df["seed"].astype("Int64")
    fit = B.fit_model(df, ["neutral", "eager"], "neutral", _spec(likelihood=lik, random_effects=["seed", "item"],
                                                                 draws=200, tune=200), sd_ref=1.0)
    means = B.group_means(fit)
    assert means.shape == (400, 2) and np.all(np.isfinite(means))
    assert df["value"].min() - 1e-9 <= means.mean() <= df["value"].max() + 1e-9
    assert np.mean(B.contrast_draws(fit, {"eager": 1, "neutral": -1}) > 0) > 0.9
    assert B.ppc_figure(fit, tmp_path / f"ppc_{lik}.png", n_draws=20).exists()
