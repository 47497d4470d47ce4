"""Inoculation heuristics on synthetic w, W-matrix PCA/SVD against numpy, NaN policy, correlations."""

import numpy as np
import pandas as pd
import pytest

from analysis import heuristics as H
from leaklab.study import Conditioning


pytestmark = pytest.mark.usefixtures("_one_torch_thread")


def test_summary_hand_checked():
    w = np.array([0.5, -0.25, 1.0, 0.75])
    s = H.summarise(w)
    assert s["mean"] == pytest.approx(0.5)
    assert s["mean_abs"] == pytest.approx(0.625)
    assert s["gamma"] == pytest.approx(0.75)
    sd = np.sqrt(((0.0) ** 2 + 0.75**2 + 0.5**2 + 0.25**2) / 3)
    assert s["sigma"] == pytest.approx(sd)
    assert s["snr"] == pytest.approx(0.5 / sd)


def test_prefix_heuristics_ph_on_trait_ppd_on_neutral():
    h = H.prefix_heuristics(np.array([1.0, 2.0, 3.0]), np.array([-0.5, 0.5, -1.0, np.nan]))
    assert h["PH"] == pytest.approx(2.0) and h["gamma"] == 1.0 and h["SNR"] == pytest.approx(2.0)
    assert h["PPD"] == pytest.approx(2.0 / 3) and h["n_neutral_missing"] == 1


def test_nan_policy():
    s = H.summarise(np.array([np.nan, 1.0]))
    assert s["n"] == 1 and s["n_missing"] == 1 and np.isnan(s["mean"])  # below MIN_VALID: NaN, never 0
    assert np.isnan(H.summarise(np.array([1.0, 1.0]))["snr"])  # sigma 0
    W = np.array([[1.0, np.nan, 2.0], [3.0, 4.0, 5.0]])
    Wc, dropped = H.complete_case(W)
    np.testing.assert_array_equal(Wc, [[1.0, 2.0], [3.0, 5.0]])
    assert dropped == 1


def test_w_values_per_example_mean_and_shape_check():
    w, tok = H.w_values([np.array([-1.0, -2.0]), np.array([-3.0])], [np.array([-2.0, -2.0]), np.array([-1.0])])
    np.testing.assert_allclose(w, [0.5, -2.0])
    np.testing.assert_allclose(tok[0], [1.0, 0.0])
    w, _ = H.w_values([np.array([-np.inf])], [np.array([-1.0])])
    assert np.isnan(w[0])
    with pytest.raises(ValueError, match="token counts differ"):
        H.w_values([np.array([1.0])], [np.array([1.0, 2.0])])


def test_pca_svd_against_numpy():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((6, 20)) + np.outer(np.arange(6), np.ones(20))
    res = H.w_matrix_analysis(W, ph=W.mean(axis=1), k=2)
    Wc = W - W.mean(axis=0)
    ev = np.linalg.svd(Wc, compute_uv=False) ** 2
    np.testing.assert_allclose(res["pca_explained"], ev[:2] / ev.sum(), rtol=1e-6)
    s = np.linalg.svd(W, compute_uv=False)
    np.testing.assert_allclose(res["svd_energy"], s[:2] ** 2 / (s**2).sum(), rtol=1e-6)
    assert res["r_pc1_ph"] > 0.95  # rank-1 mean structure: PC1 tracks PH, oriented positively


def test_rank_one_matrix_is_one_dimensional():
    u = np.array([1.0, 2.0, 3.0, 4.0])
    v = np.linspace(-1, 2, 10)
    res = H.w_matrix_analysis(np.outer(u, v), k=2)
    assert res["svd_energy"][0] == pytest.approx(1.0)
    assert res["pca_explained"][0] == pytest.approx(1.0)
    np.testing.assert_allclose(np.array(res["angles_raw"]), 0.0, atol=1e-5)  # all rows parallel


def test_angles_known():
    X = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [1.0, 1.0]])
    A = H.angles_deg(X)
    assert A[0, 1] == pytest.approx(90.0)
    assert A[0, 2] == pytest.approx(180.0)
    assert A[0, 3] == pytest.approx(45.0)
    assert A[1, 1] == pytest.approx(0.0, abs=1e-6)


def test_correlation_ci():
    x = np.arange(10.0)
    y = 2 * x + np.array([0.1, -0.1] * 5)
    c = H.correlation_ci(x, y, n_boot=200)
    assert c["pearson_r"] > 0.99 and c["pearson_ci"][0] < c["pearson_r"] < c["pearson_ci"][1]
    assert c["spearman_rho"] == pytest.approx(1.0)
    c2 = H.correlation_ci([1.0, np.nan, 3.0], [1.0, 2.0, 3.0])
    assert c2["n"] == 2 and c2["pearson_r"] is None
    # Fisher z interval by hand for r=0.5, n=12
    rng = np.random.default_rng(3)
    x = rng.standard_normal(12)
    y = rng.standard_normal(12)
    c3 = H.correlation_ci(x, y, n_boot=10)
    z = np.arctanh(c3["pearson_r"])
    assert c3["pearson_ci"][1] == pytest.approx(np.tanh(z + 1.959964 / 3), rel=1e-5)


def test_elicitation_and_suppression_from_frame():
    e = H.elicitation([0.5, 0.7, np.nan], [0.1, 0.3])
    assert e["elicitation"] == pytest.approx(0.4) and e["n_with"] == 2
    frame = pd.DataFrame(
        {
            "arm": ["control"] * 4 + ["fixed"] * 4,
            "seed": [0, 0, 1, 1] * 2,
            "condition": ["default"] * 8,
            "value": [0.8, 0.6, 0.9, 0.9, 0.2, 0.2, 0.1, 0.3],
        }
    )
    # control: seed means 0.7, 0.9 -> 0.8; fixed: 0.2, 0.2 -> 0.2
    assert H.suppression_from_frame(frame, "control") == {"fixed": pytest.approx(0.6)}
    two = pd.concat([frame.assign(measure="trait"), frame.assign(measure="other", value=0.0)])
    assert H.suppression_from_frame(two, "control", measure="trait") == {"fixed": pytest.approx(0.6)}
    from leaklab.yamlio import ConfigError

    with pytest.raises(ConfigError, match="several measures"):
        H.suppression_from_frame(two, "control")


def test_prefix_w_on_tiny(tiny):
    model, tok = tiny
    items = [(f"e{i}", [{"role": "user", "content": f"Tell me about thing {i}"}, {"role": "assistant", "content": f"Thing {i} is fine."}]) for i in range(3)]
    cond = Conditioning(user_prefix="You are a playful agent.", prefix_mode="fixed")
    w, tokw = H.prefix_w(model, tok, items, cond)
    assert w.shape == (3,) and np.all(np.isfinite(w)) and np.any(w != 0)
    assert all(len(t) > 3 for t in tokw)
    w0, _ = H.prefix_w(model, tok, items, None)
    np.testing.assert_allclose(w0, 0.0, atol=1e-5)  # no prefix: with == without
