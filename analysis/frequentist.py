"""Frequentist effect sizes: group means, d against a reference SD, a paired hierarchical bootstrap.

Unit of analysis: the item cell (`frame.cell_frame`: one value per item per run, option orders
and epochs averaged first). A *group* is an arm (contrasts over arms; runs = seeds, independent
between arms) or an eval condition within one arm (contrasts over conditions; the same seeds
appear in every condition, so runs are resampled jointly).

d = contrast / SD_ref, SD_ref = SD (ddof=1) over the reference group's item x seed cells.
combined_directional = ((pro - ref) - (anti - ref)) / 2 = (pro - anti) / 2, so positive means
the pro arm (e.g. eager) sits above the anti arm (e.g. cautious); in ref-SD units.

Bootstrap (one set of draws gives CI and every p-value): each resample draws base items with
replacement ONCE and uses that draw for every group (paired: item difficulty cancels, as in
Miller 2024's paired differences), and draws runs with replacement within each group (jointly
when runs are shared). Every group is present in every resample (balanced). SD_ref is
recomputed in every resample, so d's CI carries the SD's uncertainty. Runs are drawn n-1 out
of n (see `_run_weights`): with the 2-5 seeds of these studies the plain n-out-of-n draw
under-covers badly (measured over 100 simulations, nominal 95%: n-of-n 78% with 2 seeds, 88%
with 5; n-1 draws 84% with 2 seeds, 92% with 5, 97% with 3 at a smaller seed SD). With 2
seeds per arm the interval is still too narrow: say so next to any 2-seed result.

p-values are "two-sided equivalents" (2 x the one-sided tail fraction, capped at 1, with the
(1 + k)/(B + 1) correction), so that p < alpha exactly when the (1 - alpha) percentile CI
reported next to it lies beyond the tested bound:
- p_value (nil): CI excludes 0;
- p_min_effect: CI bound on the hypothesised side lies beyond the SESOI (two_sided: either side);

except the TOST p (`tost_p`, `tost_p_t`): the LARGER of the two one-sided p-values against -SESOI
and +SESOI, not doubled, so p_tost < alpha exactly when the (1 - 2 alpha) CI lies inside
(-SESOI, +SESOI) (Schuirmann's TOST; `analysis.decide` reads it so). It is the one TOST p of
leaklab: `ContrastResult.p_tost` and the analysis' raw p (`analysis.steps.effects.test_pvalues`)
are both computed here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

Direction = Literal["positive", "negative", "two_sided"]


class DegenerateSD(ValueError):
    """The reference SD is (numerically) zero: d would be meaningless (Likert clustered on one level)."""


# ------------------------------------------------------------------------ small pieces


def mean_se_ci(values, z: float = 1.96) -> dict:
    """mean +/- z SE, SE = std(ddof=1)/sqrt(n) over non-missing values (the judge-score convention)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return {"mean": None, "sd": None, "se": None, "ci_low": None, "ci_high": None, "n": 0}
    m = float(v.mean())
    if n < 2:
        return {"mean": m, "sd": None, "se": None, "ci_low": None, "ci_high": None, "n": 1}
    sd = float(v.std(ddof=1))
    se = sd / math.sqrt(n)
    return {"mean": m, "sd": sd, "se": se, "ci_low": m - z * se, "ci_high": m + z * se, "n": n}


def clustered_se(values, clusters) -> float | None:
    """Miller (2024) clustered SE of the mean: sqrt(sum_c (sum_{i in c} (x_i - xbar))^2) / n.

    With one observation per cluster this is the ddof=0 SE; it grows when items of a cluster
    (paraphrases of one base item) move together.
    """
    v = np.asarray(values, dtype=float)
    c = np.asarray(clusters)
    ok = np.isfinite(v)
    v, c = v[ok], c[ok]
    n = len(v)
    if n < 2:
        return None
    resid = pd.Series(v - v.mean()).groupby(c).sum().to_numpy()
    return float(math.sqrt(np.sum(resid**2)) / n)


def check_sd(sd: float | None, n: int, min_sd: float, what: str) -> str:
    """'' when the SD is usable, else the reason d is refused (said in results.json and the report)."""
    if n < 2 or sd is None or not math.isfinite(sd):
        return f"{what}: fewer than 2 cells with a value (n={n}); no SD, d refused"
    if sd < min_sd:
        return (f"{what}: SD {sd:.3g} over {n} cells is below min_reference_sd {min_sd:g} "
                "(values sit on one level); d refused, report the natural-scale contrast")
    return ""


def adjust(pvals: list[float | None], method: str) -> list[float | None]:
    """Holm / Bonferroni adjusted p-values over one family (None stays None, not counted)."""
    idx = [i for i, p in enumerate(pvals) if p is not None and math.isfinite(p)]
    out: list[float | None] = [None] * len(pvals)
    m = len(idx)
    if method == "none":
        for i in idx:
            out[i] = pvals[i]
        return out
    if method == "bonferroni":
        for i in idx:
            out[i] = min(1.0, pvals[i] * m)
        return out
    if method == "holm":
        order = sorted(idx, key=lambda i: pvals[i])
        running = 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (m - rank) * pvals[i]))
            out[i] = running
        return out
    raise ValueError(f"unknown multiplicity method {method!r}")


def tail_p(draws: np.ndarray, bound: float, side: Literal["below", "above"]) -> float:
    """(1 + #draws on the far side of `bound`) / (B + 1): one-sided bootstrap tail fraction."""
    k = np.sum(draws <= bound) if side == "below" else np.sum(draws >= bound)
    return float((1 + k) / (len(draws) + 1))


def bootstrap_pvalues(draws: np.ndarray, sesoi: float | None, direction: Direction) -> dict:
    """Two-sided-equivalent p-values from one set of draws (see module docstring); p_tost is the
    undoubled TOST p (`tost_p`)."""
    draws = draws[np.isfinite(draws)]
    if len(draws) == 0:
        return {"p_value": None, "p_min_effect": None, "p_tost": None}
    p0 = min(1.0, 2 * min(tail_p(draws, 0.0, "below"), tail_p(draws, 0.0, "above")))
    out = {"p_value": p0, "p_min_effect": None, "p_tost": None}
    if sesoi is not None:
        s = abs(sesoi)
        lo, hi = tail_p(draws, s, "below"), tail_p(draws, -s, "above")
        if direction == "positive":
            pm = 2 * lo
        elif direction == "negative":
            pm = 2 * hi
        else:
            pm = 2 * min(lo, hi)
        out["p_min_effect"] = min(1.0, pm)
        out["p_tost"] = tost_p(draws, s)
    return out


def tost_p(draws: np.ndarray, sesoi: float) -> float | None:
    """TOST p from bootstrap draws: the LARGER of the two one-sided tail fractions against -SESOI
    and +SESOI, not doubled (p < alpha exactly when the (1 - 2 alpha) percentile CI lies inside
    +/- SESOI). None without finite draws."""
    d = np.asarray(draws, dtype=float)
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return None
    s = abs(sesoi)
    return max(tail_p(d, -s, "below"), tail_p(d, s, "above"))


def tost_p_t(est: float, se: float | None, df: float | None, sesoi: float) -> float | None:
    """TOST p of a t interval est +/- t_df se: the larger one-sided p, not doubled. None when the
    SE or df is unusable."""
    if se is None or not se > 0 or df is None or not math.isfinite(est):
        return None
    s = abs(sesoi)
    return float(max(stats.t.sf((est + s) / se, df), stats.t.cdf((est - s) / se, df)))


# ------------------------------------------------------------------------ seed x item clustered t intervals


def _nanvar1(x: np.ndarray, axis: int) -> np.ndarray:
    """ddof=1 variance over `axis`, ignoring NaN; NaN where fewer than 2 values."""
    n = np.sum(np.isfinite(x), axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.nanmean(x, axis=axis, keepdims=True)
        v = np.nansum((x - m) ** 2, axis=axis) / (n - 1)
    return np.where(n > 1, v, np.nan)


def _table_terms(T: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """One run x item table T (B, R, K) (NaN = no cell): the run term var(run means)/R, the
    interaction term MS_res/(R K) and the item means (B, K); R, K the runs / items with data."""
    R = int(np.any(np.isfinite(T), axis=(0, 2)).sum())
    K = int(np.any(np.isfinite(T), axis=(0, 1)).sum())
    with np.errstate(invalid="ignore"):
        rows = np.nanmean(T, axis=2)
        cols = np.nanmean(T, axis=1)
    if R < 2:
        z = np.zeros(T.shape[0])
        return z, z, cols, R, K
    grand = np.nanmean(rows, axis=1)
    resid = T - rows[:, :, None] - cols[:, None, :] + grand[:, None, None]
    n_obs = np.sum(np.isfinite(T), axis=(1, 2))
    # MS_res of the additive two-way fit; with missing cells the df shrink with the observed share
    ms_res = np.nansum(resid ** 2, axis=(1, 2)) / ((R - 1) * (K - 1)) * (R * K / np.maximum(n_obs, 1))
    return _nanvar1(rows, 1) / R, ms_res / (R * K), cols, R, K


def clustered_t_se(tables: list[np.ndarray], c: np.ndarray, paired: bool) -> tuple[np.ndarray, np.ndarray]:
    """SE and Satterthwaite df of sum_g c_g * mean_g for cell means clustered by run (seed) and item.

    tables[g]: (B, R_g, K) cell means of group g (runs x base items, NaN = missing), B data sets
    at once. Two-way decomposition (the balanced mixed-model ANOVA, CR2 on seed means plus the
    item term; Bell & McCaffrey 2002, Cameron, Gelbach & Miller 2011):

        V = sum_g c_g^2 s2_run,g / R_g  +  s2_D / K  -  sum_g c_g^2 MS_res,g / (R_g K)

    s2_run,g: ddof=1 variance of group g's run means (seed-to-seed, the 1/(R-1) is CR2's
    leverage correction for a group mean); D_k = sum_g c_g * (item k's mean over g's runs), so
    item main effects cancel and item x group interactions stay; MS_res,g: the seed x item
    interaction mean square, counted in both other terms and removed once. Unbiased under the
    additive model seed + item + item x group + residual. Paired (the same runs in every group,
    conditions within one adapter): the same on the contrast table Z = sum_g c_g T_g. One group
    with c = 1: the SE of that group's mean over the population of items and seeds. V is floored
    at the larger of its run and item parts (both are lower bounds of the true variance). df by
    Welch-Satterthwaite over the mean squares (run: R_g - 1, item: K - 1, residual:
    (R_g - 1)(K - 1)), so with 2-3 seeds per arm the t quantile is the seed-level one.
    """
    if paired:
        Z = sum(ci * T for ci, T in zip(c, tables) if ci != 0)
        run, inter, cols, R, K = _table_terms(Z)
        runs, inters, Rs = [run], [inter], [R]
        D = cols
    else:
        runs, inters, Rs, D = [], [], [], 0.0
        for ci, T in zip(c, tables):
            if ci == 0:
                continue
            run, inter, cols, R, K = _table_terms(T)
            runs.append(ci ** 2 * run)
            inters.append(ci ** 2 * inter)
            Rs.append(R)
            D = D + ci * cols
    K = int(np.sum(np.any(np.isfinite(D), axis=0)))
    item = _nanvar1(D, 1) / max(K, 1) if K > 1 else np.zeros(D.shape[0])
    item = np.nan_to_num(item)
    run_sum = np.nan_to_num(sum(runs))
    V = run_sum + item - np.nan_to_num(sum(inters))
    V = np.maximum(V, np.maximum(run_sum, item))
    den = item ** 2 / max(K - 1, 1)
    for r, i, R in zip(runs, inters, Rs):
        if R > 1:
            den = den + np.nan_to_num(r) ** 2 / (R - 1) + np.nan_to_num(i) ** 2 / ((R - 1) * max(K - 1, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        df = np.where(den > 0, V ** 2 / den, np.inf)
    return np.sqrt(V), df


def t_pvalues(est: float, se: float, df: float, sesoi: float | None, direction: Direction) -> dict:
    """p-values from the t interval est +/- t_{df} se, as "two-sided equivalents" (2 x one-sided,
    capped at 1) so that p < alpha exactly when the (1 - alpha) CI lies beyond the tested bound;
    p_tost is the undoubled TOST p (`tost_p_t`)."""
    if se is None or not (se > 0) or not math.isfinite(est):
        return {"p_value": None, "p_min_effect": None, "p_tost": None}
    t = stats.t
    out = {"p_value": float(min(1.0, 2 * t.sf(abs(est) / se, df))), "p_min_effect": None, "p_tost": None}
    if sesoi is not None:
        s = abs(sesoi)
        above, below = t.sf((est - s) / se, df), t.cdf((est + s) / se, df)  # beyond +s / beyond -s
        pm = {"positive": 2 * above, "negative": 2 * below}.get(direction, 2 * min(above, below))
        out["p_min_effect"] = float(min(1.0, pm))
        out["p_tost"] = tost_p_t(est, se, df, s)
    return out


# ------------------------------------------------------------------------ the bootstrap


@dataclass
class GroupArrays:
    """Cell sums per group x run x base item: the sufficient statistics the bootstrap reweights."""

    groups: list[str]
    runs: list[list]  # per group, its run labels
    base_items: list[str]
    S: np.ndarray  # (G, R, N_base) sum of cell values
    Q: np.ndarray  # sum of squared cell values
    N: np.ndarray  # number of cells with a value
    run_mask: np.ndarray  # (G, R) True where a real run exists


def group_arrays(cells: pd.DataFrame, groups: list[str], group_col: str = "arm", run_col: str = "seed") -> GroupArrays:
    cells = cells[cells["value"].notna() & cells[group_col].isin(groups)]
    missing = [g for g in groups if not (cells[group_col] == g).any()]
    if missing:
        raise ValueError(f"no cells with a value for {group_col} {missing}")
    base = sorted(cells["base_item"].astype(str).unique())
    bidx = {b: i for i, b in enumerate(base)}
    runs = [sorted(cells.loc[cells[group_col] == g, run_col].astype(object).fillna(-1).unique(), key=str) for g in groups]
    R = max(len(r) for r in runs)
    G = len(groups)
    S = np.zeros((G, R, len(base)))
    Q = np.zeros_like(S)
    N = np.zeros_like(S)
    mask = np.zeros((G, R), dtype=bool)
    for gi, g in enumerate(groups):
        sub = cells[cells[group_col] == g]
        ridx = {r: i for i, r in enumerate(runs[gi])}
        mask[gi, : len(runs[gi])] = True
        ri = sub[run_col].astype(object).fillna(-1).map(ridx).to_numpy(dtype=int)
        bi = sub["base_item"].astype(str).map(bidx).to_numpy(dtype=int)
        v = sub["value"].to_numpy(dtype=float)
        np.add.at(S, (gi, ri, bi), v)
        np.add.at(Q, (gi, ri, bi), v * v)
        np.add.at(N, (gi, ri, bi), 1.0)
    return GroupArrays(list(groups), runs, base, S, Q, N, mask)


def arrays_from_tables(groups: list[str], tables: list[np.ndarray]) -> GroupArrays:
    """GroupArrays from one cell value per run x base item: tables[g] is (R_g, K) (NaN = no cell).
    Simulations (benchmarks/calibration.py, prereg calibrate / power) build their data sets with it."""
    G, K = len(groups), tables[0].shape[1]
    R = max(t.shape[0] for t in tables)
    S, Q, N = np.zeros((G, R, K)), np.zeros((G, R, K)), np.zeros((G, R, K))
    mask = np.zeros((G, R), dtype=bool)
    for g, t in enumerate(tables):
        ok = np.isfinite(t)
        S[g, : t.shape[0]] = np.where(ok, t, 0.0)
        Q[g, : t.shape[0]] = np.where(ok, t * t, 0.0)
        N[g, : t.shape[0]] = ok
        mask[g, : t.shape[0]] = True
    return GroupArrays(list(groups), [list(range(t.shape[0])) for t in tables], [str(k) for k in range(K)], S, Q, N, mask)


def _means_sd(a: GroupArrays, U: np.ndarray, W: np.ndarray, ref: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted group means (B, G) and the reference group's SD (B,) for run weights U (B, G, R)
    and base-item weights W (B, N_base) or (B, G, N_base) (unpaired)."""
    if W.ndim == 2:
        s = np.einsum("bgr,bk,grk->bg", U, W, a.S)
        n = np.einsum("bgr,bk,grk->bg", U, W, a.N)
        q = np.einsum("br,bk,rk->b", U[:, ref], W, a.Q[ref])
    else:
        s = np.einsum("bgr,bgk,grk->bg", U, W, a.S)
        n = np.einsum("bgr,bgk,grk->bg", U, W, a.N)
        q = np.einsum("br,bk,rk->b", U[:, ref], W[:, ref], a.Q[ref])
    with np.errstate(invalid="ignore", divide="ignore"):
        means = s / n
        nr = n[:, ref]
        var = (q - nr * means[:, ref] ** 2) / (nr - 1)
        sd = np.sqrt(np.clip(var, 0, None))
    sd[nr < 2] = np.nan
    return means, sd


def _run_weights(a: GroupArrays, B: int, rng: np.random.Generator, paired_runs: bool, n_minus_1: bool = True) -> np.ndarray:
    """Run (seed) resampling weights. With `n_minus_1`, n - 1 runs are drawn out of n: the
    bootstrap variance of a mean of n-1 draws equals s^2/n with s^2 the ddof=1 variance, the
    unbiased squared SE, where n draws give (n-1)/n of it (too narrow with 2-5 seeds)."""
    G, R = a.run_mask.shape
    U = np.zeros((B, G, R))

    def m(k: int) -> int:
        return k - 1 if (n_minus_1 and k > 1) else k

    if paired_runs:
        # the same run labels in every group (conditions within one arm): one draw for all
        common = a.runs[0]
        for g in range(G):
            if a.runs[g] != common:
                raise ValueError(f"paired runs need the same runs in every group, got {a.runs}")
        draw = rng.multinomial(m(len(common)), np.full(len(common), 1 / len(common)), size=B)
        U[:, :, : len(common)] = draw[:, None, :]
        return U
    for g in range(G):
        k = len(a.runs[g])
        U[:, g, :k] = rng.multinomial(m(k), np.full(k, 1 / k), size=B)
    return U


@dataclass
class ContrastResult:
    """Point estimates, CIs and p-values of one contrast (natural scale and d), all from `method`."""

    groups: list[str]
    weights: list[float]
    ref: str
    means: dict[str, float]
    estimate: float
    sd_ref: float | None
    sd_reason: str
    d: float | None
    ci: tuple[float | None, float | None]  # natural scale
    ci_d: tuple[float | None, float | None]
    p_value: float | None  # on d when d is usable, else on the natural scale
    p_min_effect: float | None
    p_tost: float | None  # TOST p, not doubled (`tost_p` / `tost_p_t`)
    se_clustered: float | None
    n_base_items: int
    n_runs: dict[str, int]
    n_boot: int  # 0 for the analytic cluster_se method
    draws: np.ndarray = field(repr=False)  # d draws (or natural-scale draws when d is refused); empty for cluster_se
    draws_natural: np.ndarray = field(repr=False)
    method: str = "hierarchical_bootstrap"
    se: float | None = None  # cluster_se: natural-scale SE (seed x item clustered)
    se_d: float | None = None
    df: float | None = None  # cluster_se: Satterthwaite degrees of freedom of the t quantile


def cell_means(a: GroupArrays) -> list[np.ndarray]:
    """Per group, its (1, R_g, K) table of cell means (mean over a base item's cells in a run; NaN = none)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        M = np.where(a.N > 0, a.S / np.where(a.N > 0, a.N, 1), np.nan)
    return [M[None, g, : len(r)] for g, r in enumerate(a.runs)]


def logsd_jackknife(q: np.ndarray, s: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Delete-one-base-item jackknife variance of log SD_ref, from per-item sums (B, K) of the
    reference group's squared values, values and counts: the d denominator's uncertainty."""
    Q, S, N = q.sum(-1, keepdims=True), s.sum(-1, keepdims=True), n.sum(-1, keepdims=True)
    nl = N - n
    with np.errstate(invalid="ignore", divide="ignore"):
        th = 0.5 * np.log((Q - q - (S - s) ** 2 / nl) / (nl - 1))
    th = np.where((n > 0) & np.isfinite(th), th, np.nan)
    k = np.sum(np.isfinite(th), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        v = (k - 1) / k * np.nansum((th - np.nanmean(th, axis=-1, keepdims=True)) ** 2, axis=-1)
    return np.where(k > 2, v, 0.0)


CI_METHODS = ("cluster_se", "hierarchical_bootstrap")
DEFAULT_CI = "cluster_se"  # chosen by measured coverage: benchmarks/calibration.py, README "Statistics"


def contrast_arrays(
    a: GroupArrays,
    w: np.ndarray,
    gi_ref: int,
    *,
    method: str = DEFAULT_CI,
    paired_items: bool = True,
    paired_runs: bool = False,
    n_minus_1: bool = True,
    n_boot: int = 10_000,
    seed: int = 0,
    alpha: float = 0.05,
    sesoi: float | None = None,
    sesoi_unit: Literal["d", "raw"] = "d",
    direction: Direction = "two_sided",
    min_sd: float = 1e-6,
    group_col: str = "arm",
) -> ContrastResult:
    """The contrast sum_g w[g] * mean_g on GroupArrays (the analysis and the calibration
    simulations share this code path). Methods:

    - "cluster_se": est +/- t_{df} SE, SE clustered by run (seed) and base item
      (`clustered_t_se`), df Satterthwaite. d = est / SD_ref with SE_d^2 = SE^2 / SD_ref^2 +
      d^2 Var_jackknife(log SD_ref) (the SD's own uncertainty, by deleting one base item at a time).
      p-values from the same t distribution (`t_pvalues`).
    - "hierarchical_bootstrap": the paired percentile bootstrap described in the module docstring.
    """
    if method not in CI_METHODS:
        raise ValueError(f"unknown CI method {method!r} (known: {', '.join(CI_METHODS)})")
    groups = a.groups
    ref = groups[gi_ref]
    G, R, K = a.S.shape
    U1 = a.run_mask[None].astype(float)
    W1 = np.ones((1, K))
    m0, sd0 = _means_sd(a, U1, W1, gi_ref)
    est = float(m0[0] @ w)
    sd_ref = float(sd0[0]) if np.isfinite(sd0[0]) else None
    n_ref = int(a.N[gi_ref].sum())
    reason = check_sd(sd_ref, n_ref, min_sd, f"reference {group_col} {ref!r}")
    if reason and sesoi_unit == "d" and sesoi is not None:
        raise DegenerateSD(reason)
    d = None if reason else est / sd_ref
    common = dict(groups=groups, weights=list(w), ref=ref, means={g: float(m0[0, i]) for i, g in enumerate(groups)},
                  estimate=est, sd_ref=sd_ref, sd_reason=reason, d=d, se_clustered=None, n_base_items=K,
                  n_runs={g: len(r) for g, r in zip(groups, a.runs)}, method=method)
    if method == "cluster_se":
        if paired_runs and any(r != a.runs[0] for r in a.runs):
            raise ValueError(f"paired runs need the same runs in every group, got {a.runs}")
        se_a, df_a = clustered_t_se(cell_means(a), w, paired_runs)
        se, df = float(se_a[0]), float(df_a[0])
        tq = float(stats.t.ppf(1 - alpha / 2, df)) if se > 0 else float("nan")
        ci = (est - tq * se, est + tq * se) if se > 0 else (None, None)
        se_d, ci_d = None, (None, None)
        if d is not None and se > 0:
            v_log = float(logsd_jackknife(a.Q[gi_ref].sum(0)[None], a.S[gi_ref].sum(0)[None], a.N[gi_ref].sum(0)[None])[0])
            se_d = math.sqrt((se / sd_ref) ** 2 + d * d * v_log)
            ci_d = (d - tq * se_d, d + tq * se_d)
        on_d = d is not None and sesoi_unit == "d"
        ps = t_pvalues(d if on_d else est, se_d if on_d else se, df, sesoi, direction)
        empty = np.empty(0)
        return ContrastResult(**common, ci=ci, ci_d=ci_d, p_value=ps["p_value"], p_min_effect=ps["p_min_effect"],
                              p_tost=ps["p_tost"], n_boot=0, draws=empty, draws_natural=empty, se=se, se_d=se_d, df=df)

    rng = np.random.default_rng(seed)
    U = _run_weights(a, n_boot, rng, paired_runs, n_minus_1)
    if paired_items:
        W = rng.multinomial(K, np.full(K, 1 / K), size=n_boot).astype(float)
    else:
        W = np.stack([rng.multinomial(K, np.full(K, 1 / K), size=n_boot) for _ in range(G)], axis=1).astype(float)
    mb, sdb = _means_sd(a, U, W, gi_ref)
    nat = mb @ w
    lo_q, hi_q = 100 * alpha / 2, 100 * (1 - alpha / 2)
    ci = tuple(float(x) for x in np.nanpercentile(nat, [lo_q, hi_q]))
    if d is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            dd = nat / sdb
        dd = dd[np.isfinite(dd)]
        ci_d = tuple(float(x) for x in np.percentile(dd, [lo_q, hi_q]))
    else:
        dd, ci_d = nat[np.isfinite(nat)], (None, None)
    test_draws = dd if (d is not None and sesoi_unit == "d") else nat[np.isfinite(nat)]
    ps = bootstrap_pvalues(test_draws, sesoi, direction)
    return ContrastResult(**common, ci=ci, ci_d=ci_d, p_value=ps["p_value"], p_min_effect=ps["p_min_effect"],
                          p_tost=ps["p_tost"], n_boot=n_boot, draws=dd, draws_natural=nat)


def contrast(
    cells: pd.DataFrame,
    weights: dict[str, float],
    ref: str,
    *,
    method: str = DEFAULT_CI,
    group_col: str = "arm",
    run_col: str = "seed",
    **kw,
) -> ContrastResult:
    """Contrast sum_g weights[g] * mean_g of item cells, its d (/ SD of group `ref`), CI and
    p-values by `method` (prereg `frequentist.ci`; see `contrast_arrays`). Also the Miller
    clustered SE by base item (descriptive). Raises DegenerateSD only if sesoi_unit == "d" and
    the reference SD is degenerate."""
    groups = list(dict.fromkeys([*weights, ref]))
    a = group_arrays(cells, groups, group_col, run_col)
    w = np.array([weights.get(g, 0.0) for g in groups])
    res = contrast_arrays(a, w, groups.index(ref), method=method, group_col=group_col, **kw)
    # Miller clustered SE of the item-level contrast (runs averaged within item), by base item
    pc = cells[cells["value"].notna() & cells[group_col].isin(groups)]
    item_means = pc.groupby([group_col, "item_id"])["value"].mean().unstack(group_col)
    item_means = item_means.dropna(subset=groups)
    contrast_i = item_means[groups].to_numpy() @ w
    base_of = pc.drop_duplicates("item_id").set_index("item_id")["base_item"]
    res.se_clustered = clustered_se(contrast_i, base_of.reindex(item_means.index).to_numpy())
    return res


def bootstrap_contrast(cells: pd.DataFrame, weights: dict[str, float], ref: str, **kw) -> ContrastResult:
    """`contrast` with the hierarchical percentile bootstrap (`paired_items=False` resamples base
    items independently per group: the peer repos' unpaired scheme, kept for comparison)."""
    kw.setdefault("method", "hierarchical_bootstrap")
    return contrast(cells, weights, ref, **kw)


def cluster_se_contrast(cells: pd.DataFrame, weights: dict[str, float], ref: str, *, group_col: str = "arm",
                        alpha: float = 0.05, min_sd: float = 1e-6, run_col: str = "seed", paired_runs: bool = False,
                        sesoi: float | None = None, sesoi_unit: Literal["d", "raw"] = "d",
                        direction: Direction = "two_sided") -> dict:
    """prereg `ci: cluster_se` as a dict: t interval with the SE clustered by run (seed) and
    base item, Satterthwaite df, and p-values from the same t distribution (see `contrast_arrays`)."""
    r = contrast(cells, weights, ref, method="cluster_se", group_col=group_col, run_col=run_col, alpha=alpha,
                 min_sd=min_sd, paired_runs=paired_runs, sesoi=sesoi, sesoi_unit=sesoi_unit, direction=direction)
    return {"estimate": r.estimate, "se": r.se, "df": r.df, "ci": r.ci, "sd_ref": r.sd_ref, "sd_reason": r.sd_reason,
            "d": r.d, "se_d": r.se_d, "ci_d": r.ci_d, "p_value": r.p_value, "p_min_effect": r.p_min_effect,
            "p_tost": r.p_tost}


def arm_interval(cells: pd.DataFrame, alpha: float = 0.05, *, run_col: str = "seed") -> dict:
    """Mean of one arm's item cells with a CI over the population of seeds AND items: SE
    clustered by run and base item (`clustered_t_se` with one group), t quantile with
    Satterthwaite df. Same keys as `mean_se_ci` plus df and method; sd is the SD over cells
    (descriptive). A single-run arm (the base model) has only the item term."""
    v = cells["value"].to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    n = len(v)
    out = {"mean": None, "sd": None, "se": None, "ci_low": None, "ci_high": None, "n": n, "df": None,
           "method": "seed x item clustered t"}
    if n == 0:
        return out
    c = cells[cells["value"].notna()].assign(_g="all")
    a = group_arrays(c, ["all"], "_g", run_col)
    out["mean"] = float(a.S.sum() / a.N.sum())
    out["sd"] = float(v.std(ddof=1)) if n > 1 else None
    se, df = clustered_t_se(cell_means(a), np.array([1.0]), paired=True)
    se, df = float(se[0]), float(df[0])
    if se > 0 and math.isfinite(se):
        tq = float(stats.t.ppf(1 - alpha / 2, df))
        out.update(se=se, df=df, ci_low=out["mean"] - tq * se, ci_high=out["mean"] + tq * se)
    return out


def contrast_weights(kind: str, plus: str, minus: str, ref: str) -> tuple[dict[str, float], str]:
    """Weights over groups and a display name for a prereg contrast.

    difference: plus - minus (d in SD units of `ref`). combined_directional: ((plus - ref) -
    (minus - ref)) / 2 = (plus - minus) / 2.
    """
    if kind == "combined_directional":
        return {plus: 0.5, minus: -0.5}, "combined_directional"
    if kind == "difference":
        return {plus: 1.0, minus: -1.0}, f"{plus}-{minus}"
    raise ValueError(f"unknown contrast kind {kind!r}")
