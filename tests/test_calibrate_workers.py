"""`prereg calibrate` runs its Bayesian fits in worker processes; the numbers must not depend on
how many (each fit gets its data and seed before it is handed out)."""

from __future__ import annotations

import pytest

from tests.toy_study import PREREG, write_toy_study


@pytest.mark.slow  # two calibrations with the Bayesian half (pymc compiles in each process)
def test_bayesian_half_is_the_same_in_one_or_two_processes(tmp_path, runs_root):
    from prereg.calibrate import calibrate

    folder = write_toy_study(tmp_path / "toy")
    text = PREREG.replace("ci: hierarchical_bootstrap", "ci: cluster_se")
    text += "power:\n  n_sims: 4\n  seed: 3\n  noise: {seed_sd: 0.3, item_sd: 0.7, residual_sd: 0.6}\n"
    (folder / "prereg.yaml").write_text(text)
    one = calibrate(folder, n_sims=2, n_sims_bayes=2, draws=100, tune=100, workers=1)
    two = calibrate(folder, n_sims=2, n_sims_bayes=2, draws=100, tune=100, workers=2)
    assert one["hypotheses"] == two["hypotheses"]
    assert all(p["n_sims_bayes"] == 2 for p in one["hypotheses"]["H1"])
