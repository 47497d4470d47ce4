"""One TOST p (the larger one-sided p, not doubled): ContrastResult.p_tost and the analysis' raw
p (analysis.steps.effects.test_pvalues) are the same number, checked against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from analysis import frequentist as F
from analysis.steps import effects as E


def test_bootstrap_tost_by_hand():
    # 10 draws, SESOI 0.2: 2 at or below -0.2, 3 at or above +0.2
    # lower p = (1 + 2) / 11, upper p = (1 + 3) / 11 -> TOST p = 4/11 (the doubled one was 8/11)
    draws = np.array([-0.3, -0.2, -0.1, 0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.4])
    assert F.tost_p(draws, 0.2) == pytest.approx(4 / 11)
    assert F.tost_p(draws, -0.2) == pytest.approx(4 / 11)  # the SESOI's sign does not matter
    assert F.bootstrap_pvalues(draws, 0.2, "positive")["p_tost"] == pytest.approx(4 / 11)
    assert F.tost_p(np.array([np.nan]), 0.2) is None


def test_t_tost_by_hand():
    # est 0.05, SE 0.1, df 10, SESOI 0.2: t statistics (0.05 + 0.2) / 0.1 = 2.5 and (0.05 - 0.2) / 0.1 = -1.5
    # P(T10 > 2.5) = 0.0157, P(T10 < -1.5) = 0.0823 (t table) -> TOST p = 0.0823, not 0.1646
    p = F.tost_p_t(0.05, 0.1, 10, 0.2)
    assert p == pytest.approx(0.0823, abs=2e-4)
    assert F.t_pvalues(0.05, 0.1, 10, 0.2, "positive")["p_tost"] == pytest.approx(p)
    assert F.tost_p_t(0.05, 0.0, 10, 0.2) is None and F.tost_p_t(0.05, 0.1, None, 0.2) is None


def _arrays(rng):
    groups = ["eager", "cautious", "neutral"]
    tables = [m + rng.normal(0, 0.3, (3, 1)) + rng.normal(0, 0.6, (3, 20)) for m in (0.05, -0.05, 0.0)]
    return groups, F.arrays_from_tables(groups, tables)


@pytest.mark.parametrize("method", ["cluster_se", "hierarchical_bootstrap"])
def test_contrast_result_and_analysis_share_the_tost_p(method):
    groups, a = _arrays(np.random.default_rng(4))
    w = np.array([0.5, -0.5, 0.0])
    for sesoi in (0.1, 0.5, 1.5):
        r = F.contrast_arrays(a, w, 2, method=method, n_boot=400, seed=1, sesoi=sesoi, sesoi_unit="d",
                              direction="positive")
        raw = E.test_pvalues(r, sesoi, "d", "positive")
        assert r.p_tost is not None and raw["tost"] == pytest.approx(r.p_tost)
        if method == "cluster_se":
            # undoubled: p_tost < alpha exactly when the (1 - 2 alpha) t interval lies inside +/- SESOI
            q = stats.t.ppf(0.95, r.df)
            inside = -sesoi < r.d - q * r.se_d and r.d + q * r.se_d < sesoi
            assert (r.p_tost < 0.05) == inside
            assert r.p_tost == pytest.approx(max(stats.t.sf((r.d + sesoi) / r.se_d, r.df),
                                                 stats.t.cdf((r.d - sesoi) / r.se_d, r.df)))
