"""Bayesian model: recovery of a planted contrast, HDI+ROPE verdicts, and a diagnostics gate that
fails on a deliberately non-converged fit. Combined into one test (pytensor compilation)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import bayes as B
from analysis.frame import simulate_cells


def rows_df(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df["seed"] = df["seed"].astype("Int64")
    return df


def test_rope_verdict_by_hand():
    from analysis.decide import hdi_rope_reading

    assert hdi_rope_reading(0.3, 0.9, (-0.2, 0.2)) == "effect"
    assert hdi_rope_reading(-0.9, -0.21, (-0.2, 0.2)) == "effect"
    assert hdi_rope_reading(-0.1, 0.15, (-0.2, 0.2)) == "equivalent"
    assert hdi_rope_reading(0.1, 0.5, (-0.2, 0.2)) == "undecided"


def test_recovery_and_gate(tmp_path):
    rows = rows_df(simulate_cells(arms={"neutral": 0.0, "eager": 0.8, "cautious": -0.8}, seeds=[0, 1, 2], n_base=16,
                                  sd_item=0.8, sd_seed=0.1, sd_resid=0.4, rng=11))
    spec = B.BayesSpec(likelihood="normal", draws=300, tune=300, chains=2, seed=1,
                       gates={"rhat_max": 1.05, "ess_bulk_min": 100, "ess_tail_min": 100, "max_divergences": 5})
    fit = B.fit_model(rows, ["neutral", "eager", "cautious"], "neutral", spec, sd_ref=1.0)
    diag = B.diagnostics(fit.idata, spec.gates)
    assert diag["passed"], diag["failures"]
    s = B.summarize_contrast(fit, "combined_directional", {"eager": 0.5, "cautious": -0.5}, 0.2, "d")
    # planted combined contrast 0.8 (natural scale; sd_ref 1 so d = natural)
    assert s["hdi_low"] < 0.8 < s["hdi_high"] and s["mean"] == pytest.approx(0.8, abs=0.3)
    assert s["verdict"] == "effect" and s["rope"] == [-0.2, 0.2]
    m = B.group_means(fit)
    assert m.shape[1] == 3 and np.mean(m[:, 1] - m[:, 0]) == pytest.approx(0.8, abs=0.35)
    nc = B.save_netcdf(fit, tmp_path / "post" / "fit.nc")
    assert nc.exists() and nc.stat().st_size > 0
    png = B.ppc_figure(fit, tmp_path / "ppc.png", n_draws=20)
    assert png.exists()

    # deliberately non-converged: 20 draws without tuning must fail the gate, and the contrast
    # is then marked unusable rather than reported as fine
    bad = B.BayesSpec(likelihood="normal", draws=20, tune=0, chains=2, seed=2)
    fit_bad = B.fit_model(rows, ["neutral", "eager", "cautious"], "neutral", bad, sd_ref=1.0)
    d_bad = B.diagnostics(fit_bad.idata, bad.gates)
    assert not d_bad["passed"] and d_bad["failures"]
    s_bad = B.summarize_contrast(fit_bad, "combined_directional", {"eager": 0.5, "cautious": -0.5}, 0.2, "d",
                                 usable=d_bad["passed"])
    assert s_bad["verdict"] == "unusable"


@pytest.mark.slow
def test_binary_and_ordinal_recovery():
    for kind, lik in (("binary", "bernoulli"), ("likert", "ordered_logistic")):
        rows = rows_df(simulate_cells(arms={"neutral": 0.0, "eager": 1.0}, seeds=[0, 1, 2], n_base=20, sd_item=0.5,
                                      sd_seed=0.1, sd_resid=1.0, rng=5, kind=kind))
        emp = rows.groupby("arm")["value"].mean()
        # a wide prior on the logit-scale arm effect: this test checks the link maths, not shrinkage
        # (with the demo prior N(0, 1) a latent effect of ~2 logits is pulled halfway to 0)
        spec = B.BayesSpec(likelihood=lik, draws=300, tune=300, chains=2, seed=1,
                           priors={"arm_effect": {"dist": "normal", "params": {"mu": 0.0, "sigma": 5.0}}})
        fit = B.fit_model(rows, ["neutral", "eager"], "neutral", spec, sd_ref=1.0)
        s = B.summarize_contrast(fit, "eager-neutral", {"eager": 1, "neutral": -1}, 0.2, "d")
        # natural scale: the posterior contrast tracks the observed mean difference of the score
        assert s["mean"] == pytest.approx(emp["eager"] - emp["neutral"], abs=0.15), (lik, s, emp)
        assert s["mean"] > 0
