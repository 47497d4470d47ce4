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


@pytest.mark.slow  # compiles an OrderedLogistic model (minutes on a loaded 2-core machine)
def test_ordinal_model_has_no_intercept_beside_its_cutpoints():
    # an intercept next to free cutpoints is not identified (shift both: same likelihood): dropped
    rows = []
    rng = np.random.default_rng(0)
    for arm, shift in (("neutral", 0), ("eager", 1)):
        for seed in (0, 1):
            for i in range(6):
                r = int(np.clip(4 + shift + rng.integers(-1, 2), 1, 7))
                rows.append({"arm": arm, "seed": seed, "item_id": f"i{i}", "base_item": f"i{i}", "option_order": "",
                             "value": (r - 4) / 3})
    spec = B.BayesSpec(likelihood="ordered_logistic", draws=100, tune=100, chains=1, seed=0)
    fit = B.fit_model(rows_df(rows), ["neutral", "eager"], "neutral", spec)
    assert "intercept" not in fit.idata.posterior and "cutpoints" in fit.idata.posterior
    assert "intercept" not in fit.formula and any("cutpoints carry the location" in n for n in fit.notes)
    m = B.group_means(fit)
    assert m.shape == (100, 2) and np.all(np.isfinite(m))
    assert B.likelihood_label("ordered_logistic") == "ordinal"


def test_likelihoods_and_gates_are_registries():
    assert set(B.LIKELIHOODS) == {"normal", "normal_by_arm", "student_t", "bernoulli", "binomial", "beta", "ordered_logistic"}
    assert list(B.GATE_REGISTRY) == ["rhat_max", "ess_bulk_min", "ess_tail_min", "max_divergences", "bfmi_min"]
    st = {"rhat_max": 1.02, "ess_bulk_min": 500, "ess_tail_min": 300, "divergences": 2, "bfmi_min": 0.5, "n_chains": 4}
    fails = [f for n, fn in B.GATE_REGISTRY.items() for f in fn(st, B.DEFAULT_GATES[n])]
    assert fails == ["rhat_max 1.02 > 1.01", "ess_tail_min 300 < 400", "divergences 2 > 0"]
