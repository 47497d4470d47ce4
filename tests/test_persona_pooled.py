"""Issue 16: per-source Spearman with bootstrap/permutation, the pooled random-effects
estimate over sources, leakage counts, and the layer chosen on held-out questions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import persona_geometry as G


def test_meta_fisher_z_hand_computed():
    # three sources, rho 0.5, 0.7, 0.3 with n = 23, 23, 13: z = atanh(rho), se = sqrt(1.06/(n-3))
    rho, n = np.array([0.5, 0.7, 0.3]), np.array([23, 23, 13])
    z, se = np.arctanh(rho), np.sqrt(1.06 / (n - 3))
    w = 1 / se**2  # 18.868, 18.868, 9.434
    zf = (w * z).sum() / w.sum()
    q = (w * (z - zf) ** 2).sum()
    c = w.sum() - (w**2).sum() / w.sum()
    tau2 = max(0.0, (q - 2) / c)
    ws = 1 / (se**2 + tau2)
    zr = (ws * z).sum() / ws.sum()
    se_hk = math.sqrt((ws * (z - zr) ** 2).sum() / (2 * ws.sum()))
    t = stats.t.ppf(0.975, 2)
    m = G.meta_fisher_z(z, se)
    assert m["k"] == 3 and m["df"] == 2
    assert m["z_fixed"] == pytest.approx(zf) and m["Q"] == pytest.approx(q) and m["tau2"] == pytest.approx(tau2)
    assert m["z"] == pytest.approx(zr) and m["rho"] == pytest.approx(math.tanh(zr))
    assert m["ci"] == pytest.approx([math.tanh(zr - t * se_hk), math.tanh(zr + t * se_hk)])
    assert m["p"] == pytest.approx(2 * stats.t.sf(abs(zr) / se_hk, 2))
    # identical estimates: no heterogeneity, pooled = common value
    m = G.meta_fisher_z([0.4, 0.4], [0.2, 0.3])
    assert m["tau2"] == 0.0 and m["z"] == pytest.approx(0.4) and m["Q"] == pytest.approx(0.0)
    # one source: its own z and Wald interval
    m = G.meta_fisher_z([0.5], [0.25])
    assert m["rho"] == pytest.approx(math.tanh(0.5))
    assert m["ci"] == pytest.approx([math.tanh(0.5 - 1.959964 * 0.25), math.tanh(0.5 + 1.959964 * 0.25)], abs=1e-6)


def _pairs(rng, slopes, n_per=20, noise=0.3, shift_sd=2.0):
    """Per source: its own level shift in both cosine and leakage (clustered), within-source slope."""
    rows = []
    for s, b in enumerate(slopes):
        shift = rng.standard_normal() * shift_sd
        x = rng.standard_normal(n_per)
        y = b * x + noise * rng.standard_normal(n_per)
        rows += [(f"s{s}", f"p{k}", shift + x[k], shift + y[k]) for k in range(n_per)]
    return pd.DataFrame(rows, columns=["source", "persona", "cosine", "marker_rate"])


def test_planted_relation_recovered_per_source_and_pooled():
    rng = np.random.default_rng(3)
    pairs = _pairs(rng, [1.0, 1.0, 1.0, 1.0])
    res = G.pooled_geometry(pairs, n_perm=499, n_boot=500, seed=0)
    for s, r in res["per_source"].items():
        g = pairs[pairs["source"] == s]
        assert r["rho"] == pytest.approx(stats.spearmanr(g["cosine"], g["marker_rate"]).statistic)
        assert r["ci"][0] < r["rho"] < r["ci"][1] and r["ci"][0] > 0.5
        assert r["p_perm"] == pytest.approx(1 / 500)  # no permutation reaches a planted rho ~0.95
        assert r["se"] == pytest.approx(math.sqrt(1.06 / 17))
    p = res["pooled"]
    assert p["k"] == 4 and p["n_pairs"] == 80 and p["ci"][0] > 0.7 and p["p_perm_within_source"] == pytest.approx(1 / 500)
    # the pooled rho sits among the per-source ones (a plain correlation over the clustered pairs would not)
    rhos = [r["rho"] for r in res["per_source"].values()]
    assert min(rhos) <= p["rho"] <= max(rhos)
    # an excluded (e.g. collapsed) source does not enter the pooled estimate
    res2 = G.pooled_geometry(pairs, n_perm=99, n_boot=100, seed=0, exclude=["s0"])
    assert res2["pooled"]["sources"] == ["s1", "s2", "s3"] and res2["pooled"]["n_pairs"] == 60


def test_pooled_permutation_p_is_calibrated_under_clustered_null():
    rng = np.random.default_rng(11)
    ps, naive = [], []
    for _ in range(150):
        pairs = _pairs(rng, [0.0, 0.0, 0.0], n_per=12)
        ps.append(G.pooled_permutation_p(pairs, 99, rng))
        naive.append(stats.spearmanr(pairs["cosine"], pairs["marker_rate"]).pvalue)
    ps = np.array(ps)
    assert 0.01 <= np.mean(ps < 0.05) <= 0.11
    assert stats.kstest(ps, "uniform").pvalue > 0.001
    assert np.mean(np.array(naive) < 0.05) > 0.3  # pooled pairs as independent: far too many rejections


def test_meta_analysis_interval_covers_zero_under_null_most_of_the_time():
    rng = np.random.default_rng(5)
    cover = []
    for _ in range(200):
        pairs = _pairs(rng, [0.0] * 5, n_per=20)
        rhos = [stats.spearmanr(g["cosine"], g["marker_rate"]).statistic for _, g in pairs.groupby("source")]
        m = G.meta_fisher_z([G.fisher_z(r) for r in rhos], [math.sqrt(1.06 / 17)] * len(rhos))
        cover.append(m["ci"][0] <= 0 <= m["ci"][1])
    assert np.mean(cover) >= 0.9


def test_degenerate_source_is_reported_not_correlated():
    r = G.spearman_source(np.arange(6.0), np.zeros(6), 99, 100, np.random.default_rng(0))
    assert r["rho"] is None and "constant" in r["note"]


def test_split_questions_is_seeded_and_disjoint():
    q = [f"pq{i:02d}" for i in range(10)]
    a, b = G.split_questions(q, 0)
    assert len(a) == 5 and len(b) == 5 and not set(a) & set(b) and sorted(a + b) == q
    assert G.split_questions(list(reversed(q)), 0) == (a, b)  # order of the input does not matter
    assert G.split_questions(q, 1) != (a, b)


def _frame(rates, questions, seeds=(0, 1), degenerate=None):
    """Frame rows: arm -> {persona: marker probability}, one completion per question x seed (deterministic)."""
    rows = []
    for arm, by in rates.items():
        for persona, p in by.items():
            for seed in seeds:
                for j, q in enumerate(questions):
                    hit = ((j + seed * 7) % 10) < round(p * 10)
                    rows.append({"arm": arm, "seed": seed, "persona": persona, "question_id": q,
                                 "value": 1.0 if hit else 0.0, "missing_reason": None})
    if degenerate:
        for arm, persona, reason, k in degenerate:
            for _ in range(k):
                rows.append({"arm": arm, "seed": 0, "persona": persona, "question_id": questions[0], "value": math.nan, "missing_reason": reason})
    return pd.DataFrame(rows)


def test_leakage_counts_drop_source_and_negatives_and_count_degenerate():
    qs = [f"pq{i:02d}" for i in range(10)]
    f = _frame({"pirate": {"pirate": 0.9, "sailor": 0.0, "chef": 0.3, "nurse": 0.1}}, qs,
               degenerate=[("pirate", "chef", "marker_only", 2), ("pirate", "nurse", "empty_answer", 1)])
    c = G.leakage_counts(f, {"pirate": "pirate"}, {"pirate": ["sailor"]}).set_index("persona")
    assert list(c.index) == ["chef", "nurse"]
    assert (c.loc["chef", "k"], c.loc["chef", "n"], c.loc["chef", "n_marker_only"]) == (6, 20, 2)
    assert (c.loc["nurse", "k"], c.loc["nurse", "n"], c.loc["nurse", "n_empty"]) == (2, 20, 1)
    from scorers.marker import binomial_interval

    assert (c.loc["chef", "lo"], c.loc["chef", "hi"]) == pytest.approx(binomial_interval(6, 20))
    half = G.leakage_counts(f, {"pirate": "pirate"}, {"pirate": ["sailor"]}, questions=qs[:5]).set_index("persona")
    assert half.loc["chef", "n"] == 10
    d = G.source_degeneracy(f, {"pirate": "pirate"})["pirate"]
    assert d["n_marker_only"] == 2 and d["n_empty"] == 1 and d["n_total"] == 4 * 20 + 3


def test_select_layer_finds_the_planted_layer():
    rng = np.random.default_rng(0)
    names = [f"p{i}" for i in range(12)]
    qids = [f"q{i}" for i in range(8)]
    P, Q, L, D = len(names), len(qids), 3, 6
    S = rng.standard_normal((P, Q, L, D)) * 0.05
    # layer 1 carries a 1-d persona coordinate t; leakage of source p0 and p1 rises with closeness in t
    t = np.linspace(-1, 1, P)
    S[:, :, 1, 0] += t[:, None]
    S[:, :, 1, 1] += 0.3
    cos1 = G.cosine_matrix(S[:, :, 1].mean(1))
    rates = {}
    for src in ("p0", "p11"):
        i = names.index(src)
        order = np.argsort(np.argsort(cos1[i]))  # rank of closeness
        rates[src] = {n: (0.1 + 0.8 * order[j] / (P - 1)) for j, n in enumerate(names)}
    f = _frame(rates, qids)
    srcs = {"p0": "p0", "p11": "p11"}

    def counts_for(qs):
        return G.leakage_counts(f, srcs, {}, questions=qs)

    sel, test = G.split_questions(qids, 0)
    out = G.select_layer(S, [4, 8, 12], names, qids, counts_for, sel, 99, 100, 0)
    assert out["chosen_layer"] == 8
    rho = {r["layer"]: r["pooled_rho"] for r in out["by_layer"]}
    assert rho[8] > 0.5 and rho[8] > rho[4] and rho[8] > rho[12]


def test_fitted_band_contains_the_line():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, 40)
    y = 0.2 + 0.3 * x + 0.05 * rng.standard_normal(40)
    b = G.fitted_band(x, y, 300, 0)
    assert b["slope"] == pytest.approx(np.polyfit(x, y, 1)[0])
    assert all(lo <= f <= hi for lo, f, hi in zip(b["lo"], b["fit"], b["hi"]))
    assert 0.2 < b["slope"] < 0.4
