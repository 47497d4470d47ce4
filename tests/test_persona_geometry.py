"""Persona geometry: cosine matrix by hand, permutation calibration under a clustered null."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import persona_geometry as G
from leaklab.yamlio import ConfigError


pytestmark = pytest.mark.usefixtures("_one_torch_thread")


def test_cosine_matrix_hand_checked():
    C = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0], [1.0, 1.0]])  # mean (1, 1): rows 2, 3 equal it
    X = np.array([[2.0, 0.0], [0.0, 2.0], [1.5, 0.5]])  # mean (7/6, 5/6)
    cos = G.cosine_matrix(X)
    Xc = X - X.mean(0)
    Xn = Xc / np.linalg.norm(Xc, axis=1, keepdims=True)
    np.testing.assert_allclose(cos, Xn @ Xn.T)
    # by hand: centred rows (5/6, -5/6), (-7/6, 7/6), (1/3, -1/3): row 0 parallel to row 2, opposite row 1
    np.testing.assert_allclose(cos, [[1, -1, 1], [-1, 1, -1], [1, -1, 1]], atol=1e-12)
    np.testing.assert_allclose(np.diag(cos), 1.0)
    # two personas symmetric about the mean are exactly opposite
    cos2 = G.cosine_matrix(np.array([[1.0, 3.0], [3.0, 1.0]]))
    np.testing.assert_allclose(cos2, [[1, -1], [-1, 1]])
    with pytest.raises(ValueError, match="global mean"):
        G.cosine_matrix(C)  # rows 2 and 3 equal the mean


def test_within_group_permutation_keeps_groups():
    rng = np.random.default_rng(0)
    y = np.arange(10.0)
    g = np.array([0] * 4 + [1] * 6)
    P = G.within_group_permutations(y, g, 50, rng)
    for row in P:
        assert sorted(row[:4]) == [0, 1, 2, 3] and sorted(row[4:]) == [4, 5, 6, 7, 8, 9]
    assert not np.all(P == y)


def test_spearman_matches_scipy_and_detects_signal():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(40)
    y = x + 0.5 * rng.standard_normal(40)
    rho, p = G.spearman_perm(x, y, np.zeros(40), 199, rng)
    assert rho == pytest.approx(stats.spearmanr(x, y).statistic)
    assert p == pytest.approx(1 / 200)


def _null_pairs(rng, n_src=4, n_per=12):
    """Clustered null: cosine and leakage both carry a source-level shift, no within-source link."""
    rows = []
    for s in range(n_src):
        shift = rng.standard_normal() * 2
        for k in range(n_per):
            rows.append((f"s{s}", f"p{k}", shift + rng.standard_normal() * 0.3, shift + rng.standard_normal() * 0.3))
    return pd.DataFrame(rows, columns=["source", "persona", "cosine", "marker_rate"])


def test_permutation_test_is_calibrated_under_clustered_null():
    rng = np.random.default_rng(123)
    ps, naive = [], []
    for _ in range(200):
        df = _null_pairs(rng)
        _, p = G.spearman_perm(df["cosine"].to_numpy(), df["marker_rate"].to_numpy(), df["source"].to_numpy(), 99, rng)
        ps.append(p)
        naive.append(stats.spearmanr(df["cosine"], df["marker_rate"]).pvalue)
    ps = np.array(ps)
    assert 0.01 <= np.mean(ps < 0.05) <= 0.10
    assert stats.kstest(ps, "uniform").pvalue > 0.001
    # treating dependent pairs as independent rejects far too often: why the design permutes within source
    assert np.mean(np.array(naive) < 0.05) > 0.3


def test_leakage_correlation_end_to_end():
    rng = np.random.default_rng(5)
    names = [f"p{i}" for i in range(8)]
    cent = rng.standard_normal((8, 6))
    cos = G.cosine_matrix(cent)
    rows = []
    for s in ["p0", "p1", "p2"]:
        i = names.index(s)
        for j, p in enumerate(names):
            rows.append((s, p, 0.5 + 0.4 * cos[i, j] + 0.01 * rng.standard_normal()))
    leak = pd.DataFrame(rows, columns=["source", "persona", "marker_rate"])
    pairs = G.pair_table(cos, names, leak)
    assert len(pairs) == 3 * 7 and not (pairs["source"] == pairs["persona"]).any()
    res = G.leakage_correlation(pairs, n_perm=199, n_boot=200, seed=0)
    for s in ["p0", "p1", "p2"]:
        assert res["per_source"][s]["rho"] > 0.9
        lo, hi = res["per_source"][s]["ci"]
        assert lo <= res["per_source"][s]["rho"] <= hi + 1e-9
    assert res["pooled"]["rho"] > 0.8 and res["pooled"]["p_perm_within_source"] == pytest.approx(1 / 200)
    with pytest.raises(ConfigError, match="without a centroid"):
        G.pair_table(cos, names, pd.DataFrame([("zz", "p0", 0.1)], columns=["source", "persona", "marker_rate"]))


def test_persona_centroids_on_tiny(tmp_path, tiny):
    model, tok = tiny
    personas = {"a": "You are a pirate.", "b": "You are a librarian.", "c": "You are a chef."}
    C = G.persona_centroids(model, tok, personas, ["What is rain?", "Name a colour."], [0, 1])
    assert C.shape == (3, 2, model.config.hidden_size)
    assert not np.allclose(C[0], C[1])
    (tmp_path / "p.yaml").write_text("personas:\n  - {name: a, system_prompt: x}\n  - {name: b, system_prompt: y}\n  - {name: c}\n")
    with pytest.raises(ConfigError, match=r"personas\[2\]"):
        G.load_personas(tmp_path / "p.yaml")
