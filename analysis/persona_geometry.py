"""Persona geometry on the base model (seed 003): does representational closeness predict leakage?

Centroid of a persona = mean over a question set of the last-prompt-token residual state (the end
of the assistant header) with the persona as system prompt, per layer. Centroids are centred on
the global mean over personas and L2-normalised; cosine(source, bystander) is then correlated
(Spearman) with the bystander's marker rate after training on the source.

Inference respects the design: the (source, persona) pairs of one source share the source's
training run, so pairs are not independent. p-values come from permutations *within source*
(the null: no within-source association between closeness and leakage), and intervals from a
hierarchical bootstrap (sources with replacement, then personas within each). The peer study
reported pooled p-values as if its 550 pairs were independent; `naive_pooled_p` is kept only
to show how far off that is.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from leaklab.yamlio import ConfigError


def persona_centroids(model, tok, personas: dict[str, str], questions: Sequence[str], layers: Sequence[int], batch_size: int = 16) -> np.ndarray:
    """[P, L, D] centroids (mean over questions of `persona_states`), personas in dict order."""
    return persona_states(model, tok, personas, questions, layers, batch_size).mean(axis=1)


def cosine_matrix(centroids: np.ndarray) -> np.ndarray:
    """[P, D] -> [P, P]: subtract the mean over personas, L2-normalise rows, dot products."""
    X = centroids - centroids.mean(axis=0, keepdims=True)
    n = np.linalg.norm(X, axis=1, keepdims=True)
    if np.any(n == 0):
        raise ValueError("a persona centroid equals the global mean (zero vector after centring)")
    X = X / n
    return X @ X.T


def pair_table(cos: np.ndarray, names: Sequence[str], leakage: pd.DataFrame) -> pd.DataFrame:
    """Join cosine-to-source with marker rates: rows (source, persona, cosine, marker_rate), source != persona."""
    need = {"source", "persona", "marker_rate"}
    if not need <= set(leakage.columns):
        raise ConfigError(f"leakage table needs columns {sorted(need)}, got {sorted(leakage.columns)}")
    idx = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(leakage["source"]).union(leakage["persona"]) - set(idx))
    if unknown:
        raise ConfigError(f"leakage table names personas without a centroid: {unknown[:10]}")
    df = leakage[leakage["source"] != leakage["persona"]].copy()
    df["cosine"] = [float(cos[idx[s], idx[p]]) for s, p in zip(df["source"], df["persona"])]
    df = df.dropna(subset=["marker_rate"])
    return df[["source", "persona", "cosine", "marker_rate"]].reset_index(drop=True)


def _rank(a: np.ndarray) -> np.ndarray:
    return stats.rankdata(a, axis=-1)


def _corr_rows(x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Pearson correlation of vector x with each row of Y."""
    xc = x - x.mean()
    Yc = Y - Y.mean(axis=1, keepdims=True)
    den = np.sqrt((xc**2).sum()) * np.sqrt((Yc**2).sum(axis=1))
    return np.divide(Yc @ xc, den, out=np.full(len(Y), np.nan), where=den > 0)


def within_group_permutations(y: np.ndarray, groups: np.ndarray, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """[n_perm, N]: y shuffled independently inside each group (group membership never changes)."""
    out = np.empty((n_perm, len(y)), dtype=float)
    for g in np.unique(groups):
        ix = np.flatnonzero(groups == g)
        order = np.argsort(rng.random((n_perm, len(ix))), axis=1)
        out[:, ix] = y[ix][order]
    return out


def spearman_perm(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_perm: int, rng: np.random.Generator) -> tuple[float, float]:
    """Spearman rho and its two-sided within-group permutation p = (1 + #|rho*| >= |rho|) / (1 + n_perm)."""
    rx, ry = _rank(x), _rank(y)
    rho = float(_corr_rows(rx, ry[None])[0])
    perm = _corr_rows(rx, within_group_permutations(ry, groups, n_perm, rng))
    p = (1 + np.sum(np.abs(perm) >= abs(rho) - 1e-12)) / (1 + n_perm)
    return rho, float(p)


def _ci(vals: np.ndarray, level: float) -> tuple[float | None, float | None]:
    vals = vals[np.isfinite(vals)]
    if len(vals) == 0:
        return None, None
    a = (1 - level) / 2
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))


def leakage_correlation(pairs: pd.DataFrame, n_perm: int = 2000, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Spearman(cosine, marker_rate) per source and pooled, with within-source permutation p-values
    and bootstrap CIs (per source: personas resampled; pooled: sources, then personas within)."""
    rng = np.random.default_rng(seed)
    out: dict = {"per_source": {}, "n_perm": n_perm, "n_boot": n_boot, "seed": seed, "level": level}
    groups = pairs["source"].to_numpy()
    x, y = pairs["cosine"].to_numpy(float), pairs["marker_rate"].to_numpy(float)
    for src in pd.unique(groups):
        m = groups == src
        xs, ys = x[m], y[m]
        if len(xs) < 3:
            out["per_source"][src] = {"n": int(len(xs)), "rho": None, "p_perm": None, "ci": [None, None]}
            continue
        rho, p = spearman_perm(xs, ys, np.zeros(len(xs)), n_perm, rng)
        bi = rng.integers(0, len(xs), size=(n_boot, len(xs)))
        boots = np.array([stats.spearmanr(xs[b], ys[b]).statistic if np.ptp(xs[b]) and np.ptp(ys[b]) else np.nan for b in bi])
        out["per_source"][src] = {"n": int(len(xs)), "rho": rho, "p_perm": p, "ci": list(_ci(boots, level))}
    rho, p = spearman_perm(x, y, groups, n_perm, rng)
    srcs = pd.unique(groups)
    members = {s: np.flatnonzero(groups == s) for s in srcs}
    boots = []
    for _ in range(n_boot):
        take = rng.choice(srcs, size=len(srcs), replace=True)
        ix = np.concatenate([rng.choice(members[s], size=len(members[s]), replace=True) for s in take])
        xb, yb = x[ix], y[ix]
        boots.append(stats.spearmanr(xb, yb).statistic if np.ptp(xb) and np.ptp(yb) else np.nan)
    out["pooled"] = {
        "n": int(len(x)),
        "n_sources": int(len(srcs)),
        "rho": rho,
        "p_perm_within_source": p,
        "ci_hierarchical": list(_ci(np.array(boots, dtype=float), level)),
        "naive_pooled_p": float(stats.spearmanr(x, y).pvalue) if len(x) > 2 else None,
    }
    return out


def load_personas(path) -> dict[str, str]:
    """personas.yaml as a mapping key -> system prompt, or a list of {id|name, system_prompt|prompt} (id preferred)."""
    from pathlib import Path

    from leaklab.yamlio import load_yaml

    data = load_yaml(path)
    if isinstance(data, dict) and "personas" in data:
        data = data["personas"]
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            prompt = v if isinstance(v, str) else (v or {}).get("system_prompt") or (v or {}).get("prompt")
            if not isinstance(prompt, str):
                raise ConfigError(f"{path}: persona {k!r} has no system_prompt")
            out[str(k)] = prompt
    elif isinstance(data, list):
        for i, v in enumerate(data):
            name = isinstance(v, dict) and (v.get("id") or v.get("name"))
            prompt = isinstance(v, dict) and (v.get("system_prompt") or v.get("prompt"))
            if not name or not isinstance(prompt, str):
                raise ConfigError(f"{path}: personas[{i}] needs id (or name) and system_prompt (or prompt)")
            out[str(name)] = prompt
    else:
        raise ConfigError(f"{Path(path)}: expected a mapping or list of personas")
    if len(out) < 3:
        raise ConfigError(f"{path}: persona geometry needs at least 3 personas, found {len(out)}")
    return out


# =========================================================================== multi-source study
# (issue 16) Leakage as binomial counts per (source, persona, question half), per-source Spearman
# with a persona bootstrap and a permutation test, the pooled estimate as a random-effects
# meta-analysis of per-source Fisher z (never a correlation over pooled non-independent pairs),
# and the layer chosen on a held-out half of the questions.

SPEARMAN_Z_VAR = 1.06  # Fieller, Hartley & Pearson (1957): var(atanh(r_s)) ~ 1.06 / (n - 3)
RHO_CLIP = 0.9999  # atanh(+-1) is infinite; a perfect rank correlation is clipped to this


def persona_states(model, tok, personas: dict[str, str], questions: Sequence[str], layers: Sequence[int], batch_size: int = 16) -> np.ndarray:
    """[P, Q, L, D] last-prompt-token states, personas in dict order, questions in list order."""
    from analysis.representations import hidden_states, render_example

    if not questions:
        raise ValueError("persona geometry needs at least one question")
    out = []
    for name, system in personas.items():
        exs = [
            render_example(tok, [{"role": "system", "content": system}, {"role": "user", "content": q}], f"{name}/{k}")
            for k, q in enumerate(questions)
        ]
        out.append(hidden_states(model, exs, layers, tok.pad_token_id, batch_size)["last_prompt"])
    return np.stack(out)


def leakage_counts(frame: pd.DataFrame, sources: dict[str, str], negatives: dict[str, list[str]] | None = None,
                   questions: Sequence[str] | None = None, level: float = 0.95, method: str = "wilson") -> pd.DataFrame:
    """Per (source, persona): marker count k over scored completions n, summed over seeds and
    questions (restricted to `questions` when given), degenerate completions apart, and the
    binomial interval. `frame`: rows of one measure with arm, persona, value, missing_reason
    (question_id when `questions` is given); `sources`: arm -> source persona. The source itself
    and its trained `negatives` are dropped (they are not leakage targets)."""
    from scorers.marker import marker_counts

    need = {"arm", "persona", "value"}
    if not need <= set(frame.columns):
        raise ConfigError(f"leakage frame needs columns {sorted(need)}, got {sorted(frame.columns)}")
    f = frame[frame["arm"].isin(list(sources))]
    if questions is not None:
        f = f[f["question_id"].astype(str).isin([str(q) for q in questions])]
    reasons = f["missing_reason"] if "missing_reason" in f.columns else pd.Series([None] * len(f), index=f.index)
    rows = []
    for (arm, persona), g in f.groupby(["arm", "persona"], sort=True):
        src = sources[arm]
        if persona == src or persona in set((negatives or {}).get(arm, [])):
            continue
        vals = [None if pd.isna(v) else float(v) for v in g["value"]]
        c = marker_counts(vals, [None if pd.isna(r) else r for r in reasons.loc[g.index]], level, method)
        rows.append({"arm": arm, "source": src, "persona": persona, **{k: c[k] for k in
                     ("k", "n", "n_total", "n_empty", "n_marker_only", "n_other_missing", "degenerate_rate", "lo", "hi")},
                     "marker_rate": c["rate"]})
    cols = ["arm", "source", "persona", "k", "n", "n_total", "n_empty", "n_marker_only", "n_other_missing",
            "degenerate_rate", "marker_rate", "lo", "hi"]
    return pd.DataFrame(rows, columns=cols)


def source_degeneracy(frame: pd.DataFrame, sources: dict[str, str]) -> dict[str, dict]:
    """Per arm over every persona it answered (source and negatives included): total completions,
    empty and marker-only counts and their share, so a collapsed adapter is visible."""
    out = {}
    reasons = frame["missing_reason"] if "missing_reason" in frame.columns else pd.Series([None] * len(frame), index=frame.index)
    for arm in sources:
        m = frame["arm"] == arm
        r = reasons[m]
        n = int(m.sum())
        ne, nm = int((r == "empty_answer").sum()), int((r == "marker_only").sum())
        out[arm] = {"n_total": n, "n_empty": ne, "n_marker_only": nm, "degenerate_rate": (ne + nm) / n if n else None}
    return out


def split_questions(qids: Sequence[str], seed: int) -> tuple[list[str], list[str]]:
    """Seeded halves (selection, test) of the sorted question ids; the selection half gets the extra one."""
    ids = sorted(str(q) for q in qids)
    if len(ids) < 2:
        raise ConfigError(f"layer selection on held-out questions needs >= 2 questions, got {len(ids)}")
    order = np.random.default_rng(seed).permutation(len(ids))
    k = (len(ids) + 1) // 2
    sel, test = sorted(ids[i] for i in order[:k]), sorted(ids[i] for i in order[k:])
    return sel, test


def _rank_corr_boot(xs: np.ndarray, ys: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Spearman rho of (xs[b], ys[b]) for every row b of the index matrix idx (NaN when a side is constant)."""
    X, Y = xs[idx], ys[idx]
    rx, ry = stats.rankdata(X, axis=1), stats.rankdata(Y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx**2).sum(1) * (ry**2).sum(1))
    return np.divide((rx * ry).sum(1), den, out=np.full(len(idx), np.nan), where=den > 0)


def fisher_z(rho: float) -> float:
    return float(np.arctanh(np.clip(rho, -RHO_CLIP, RHO_CLIP)))


def spearman_source(x: np.ndarray, y: np.ndarray, n_perm: int, n_boot: int, rng: np.random.Generator, level: float = 0.95) -> dict:
    """One source: Spearman rho, percentile bootstrap CI over personas, two-sided permutation p,
    and its Fisher z with SE sqrt(1.06 / (n - 3))."""
    n = len(x)
    if n < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"n": int(n), "rho": None, "ci": [None, None], "p_perm": None, "z": None, "se": None,
                "note": "fewer than 4 personas" if n < 4 else "constant cosine or leakage"}
    rho, p = spearman_perm(x, y, np.zeros(n), n_perm, rng)
    boots = _rank_corr_boot(x, y, rng.integers(0, n, size=(n_boot, n)))
    return {"n": int(n), "rho": rho, "ci": list(_ci(boots, level)), "p_perm": p, "z": fisher_z(rho),
            "se": float(np.sqrt(SPEARMAN_Z_VAR / (n - 3)))}


def meta_fisher_z(z: Sequence[float], se: Sequence[float], level: float = 0.95) -> dict:
    """Random-effects meta-analysis of per-source Fisher z: DerSimonian-Laird tau^2, the pooled z
    with the Hartung-Knapp(-Sidik-Jonkman) t interval on k-1 df (and the Wald interval for
    contrast), back-transformed to rho. One source: its own z and Wald interval."""
    z, se = np.asarray(z, float), np.asarray(se, float)
    k = len(z)
    if k == 0:
        return {"k": 0, "rho": None, "z": None, "se": None, "df": None, "ci": [None, None], "p": None, "tau2": None,
                "Q": None, "I2": None, "z_fixed": None, "ci_wald": [None, None], "p_wald": None, "method": "no usable source"}
    w = 1 / se**2
    zf = float((w * z).sum() / w.sum())
    q = float((w * (z - zf) ** 2).sum())
    c = float(w.sum() - (w**2).sum() / w.sum())
    tau2 = max(0.0, (q - (k - 1)) / c) if k > 1 and c > 0 else 0.0
    ws = 1 / (se**2 + tau2)
    zr = float((ws * z).sum() / ws.sum())
    se_wald = float(np.sqrt(1 / ws.sum()))
    zq = stats.norm.ppf(1 - (1 - level) / 2)
    out = {"k": int(k), "z": zr, "tau2": tau2, "Q": q, "I2": max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0,
           "z_fixed": zf, "ci_wald": [float(np.tanh(zr - zq * se_wald)), float(np.tanh(zr + zq * se_wald))],
           "p_wald": float(2 * stats.norm.sf(abs(zr) / se_wald))}
    if k > 1:
        se_hk = float(np.sqrt((ws * (z - zr) ** 2).sum() / ((k - 1) * ws.sum())))
        se_hk = max(se_hk, 1e-12)
        tq = stats.t.ppf(1 - (1 - level) / 2, k - 1)
        out |= {"se": se_hk, "df": k - 1, "ci": [float(np.tanh(zr - tq * se_hk)), float(np.tanh(zr + tq * se_hk))],
                "p": float(2 * stats.t.sf(abs(zr) / se_hk, k - 1)), "method": "DerSimonian-Laird tau^2, Hartung-Knapp t interval"}
    else:
        out |= {"se": se_wald, "df": None, "ci": out["ci_wald"], "p": out["p_wald"], "method": "one source: its Wald interval"}
    out["rho"] = float(np.tanh(zr))
    return out


def pooled_permutation_p(pairs: pd.DataFrame, n_perm: int, rng: np.random.Generator) -> float:
    """Two-sided p of the inverse-variance weighted mean Fisher z (weights (n_s - 3)/1.06, fixed by
    the design) under permutations of leakage within every source."""
    obs, perm, wsum = 0.0, np.zeros(n_perm), 0.0
    for _, g in pairs.groupby("source", sort=True):
        x, y = g["cosine"].to_numpy(float), g["marker_rate"].to_numpy(float)
        if len(x) < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        w = (len(x) - 3) / SPEARMAN_Z_VAR
        rx, ry = _rank(x), _rank(y)
        obs += w * fisher_z(float(_corr_rows(rx, ry[None])[0]))
        P = ry[np.argsort(rng.random((n_perm, len(ry))), axis=1)]
        perm += w * np.arctanh(np.clip(np.nan_to_num(_corr_rows(rx, P)), -RHO_CLIP, RHO_CLIP))
        wsum += w
    if wsum == 0:
        return float("nan")
    obs, perm = obs / wsum, perm / wsum
    return float((1 + np.sum(np.abs(perm) >= abs(obs) - 1e-12)) / (1 + n_perm))


def pooled_geometry(pairs: pd.DataFrame, n_perm: int, n_boot: int, seed: int, level: float = 0.95,
                    exclude: Sequence[str] = ()) -> dict:
    """Per-source Spearman (bootstrap CI, permutation p) and the pooled random-effects estimate
    over the sources not in `exclude` (with a within-source permutation p)."""
    rng = np.random.default_rng(seed)
    per = {}
    for src, g in pairs.groupby("source", sort=True):
        per[src] = spearman_source(g["cosine"].to_numpy(float), g["marker_rate"].to_numpy(float), n_perm, n_boot, rng, level)
    use = [s for s, r in per.items() if r["z"] is not None and s not in set(exclude)]
    pooled = meta_fisher_z([per[s]["z"] for s in use], [per[s]["se"] for s in use], level)
    pooled["sources"] = use
    pooled["n_pairs"] = int(pairs["source"].isin(use).sum())
    pooled["p_perm_within_source"] = pooled_permutation_p(pairs[pairs["source"].isin(use)], n_perm, rng) if use else None
    return {"per_source": per, "pooled": pooled, "n_perm": n_perm, "n_boot": n_boot, "seed": seed, "level": level}


def fitted_band(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int, level: float = 0.95, n_grid: int = 30) -> dict:
    """Least-squares line of leakage on cosine with a pointwise percentile bootstrap band over
    personas, on a grid over the observed cosines (the hero figure's fitted relation)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    grid = np.linspace(x.min(), x.max(), n_grid) if len(x) else np.array([])
    if len(x) < 3 or np.ptp(x) == 0:
        return {"grid": grid.tolist(), "fit": None, "lo": None, "hi": None, "slope": None}
    b1, b0 = np.polyfit(x, y, 1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    X, Y = x[idx], y[idx]
    xm, ym = X.mean(1, keepdims=True), Y.mean(1, keepdims=True)
    sxx = ((X - xm) ** 2).sum(1)
    slope = np.divide(((X - xm) * (Y - ym)).sum(1), sxx, out=np.full(n_boot, np.nan), where=sxx > 0)
    inter = ym[:, 0] - slope * xm[:, 0]
    curves = inter[:, None] + slope[:, None] * grid[None]
    curves = curves[np.isfinite(slope)]
    a = (1 - level) / 2
    return {"grid": grid.tolist(), "fit": (b0 + b1 * grid).tolist(), "lo": np.quantile(curves, a, axis=0).tolist(),
            "hi": np.quantile(curves, 1 - a, axis=0).tolist(), "slope": float(b1)}


def pairs_from_counts(cos: np.ndarray, names: Sequence[str], counts: pd.DataFrame) -> pd.DataFrame:
    """(source, persona, cosine, marker_rate, k, n, lo, hi) for every scored pair of the counts table."""
    base = counts.dropna(subset=["marker_rate"])
    pairs = pair_table(cos, names, base[["source", "persona", "marker_rate"]])
    extra = base.set_index(["source", "persona"])[["k", "n", "lo", "hi"]]
    return pairs.join(extra, on=["source", "persona"])


def select_layer(states: np.ndarray, layers: Sequence[int], names: Sequence[str], qids: Sequence[str],
                 counts_for, selection: Sequence[str], n_perm: int, n_boot: int, seed: int, exclude: Sequence[str] = ()) -> dict:
    """Pooled random-effects rho per candidate layer on the selection questions only (their
    centroids and their leakage); the layer with the largest one is chosen."""
    qpos = [list(qids).index(q) for q in selection if q in qids]
    if not qpos:
        raise ConfigError("no selection question has a centroid (question ids differ between the geometry and the eval)")
    counts = counts_for(selection)
    rows = []
    for k, layer in enumerate(layers):
        cos = cosine_matrix(states[:, qpos, k].mean(axis=1))
        res = pooled_geometry(pairs_from_counts(cos, names, counts), n_perm, n_boot, seed, exclude=exclude)
        rows.append({"layer": int(layer), "pooled_rho": res["pooled"]["rho"],
                     "per_source_rho": {s: r["rho"] for s, r in res["per_source"].items()}})
    ok = [r for r in rows if r["pooled_rho"] is not None]
    chosen = max(ok, key=lambda r: r["pooled_rho"])["layer"] if ok else None
    return {"by_layer": rows, "chosen_layer": chosen}


# =========================================================================== `leaklab interp --what persona`
def load_question_records(path, n: int | None) -> list[tuple[str, str]]:
    """(id, question) pairs from a .jsonl ({id, question}), .yaml or .txt file (ids q00, q01, ... when absent)."""
    from pathlib import Path

    from leaklab.io import iter_jsonl
    from leaklab.yamlio import load_yaml

    path = Path(path)
    out: list[tuple[str, str]] = []
    if path.suffix == ".jsonl":
        for i, rec in iter_jsonl(path, "question file"):
            q = rec.get("question") or rec.get("text") or rec.get("input")
            if not isinstance(q, str):
                raise ConfigError(f"{path}:{i}: record needs a 'question' (or 'text'/'input') string")
            out.append((str(rec.get("id", f"q{len(out):02d}")), q))
    elif path.suffix in (".yaml", ".yml"):
        data = load_yaml(path)
        data = data.get("questions", data) if isinstance(data, dict) else data
        for q in data:
            text = q if isinstance(q, str) else (q.get("question") or q.get("text"))
            qid = f"q{len(out):02d}" if isinstance(q, str) else str(q.get("id", f"q{len(out):02d}"))
            out.append((qid, text))
    else:
        for l in path.read_text(encoding="utf-8").splitlines():
            if l.strip() and not l.startswith("#"):
                out.append((f"q{len(out):02d}", l.strip()))
    if not out:
        raise ConfigError(f"{path}: no questions")
    return out[:n]


def arm_negatives(study, arm: str) -> list[str]:
    """Personas an arm's persona corpus trained as negatives (meta.json `negative_personas`); [] otherwise."""
    import json

    from training.corpora import corpus_path, meta_path

    try:
        meta = meta_path(corpus_path(study, arm))
    except ConfigError:
        return []
    if not meta.exists():
        return []
    return list(json.loads(meta.read_text(encoding="utf-8")).get("negative_personas") or [])


def leakage_frame(study, personas: dict[str, str], measure: str):
    """The study's marker rows (trained arms, final checkpoints, exclusions applied) and arm -> source persona."""
    frame = study.runs_dir / "analysis" / "frame.parquet"
    if not frame.exists():
        return None, {}, None
    f = pd.read_parquet(frame)
    f = f[(f["measure"] == measure) & (f["arm"] != "base")]
    if "excluded" in f.columns:  # the preregistered exclusions hold here too
        f = f[f["excluded"].fillna("") == ""]
    if "checkpoint" in f.columns:
        f = f[f["checkpoint"].isin(["final"]) | f["checkpoint"].isna()]
    if f.empty:
        return None, {}, frame
    by_prompt = {v: k for k, v in personas.items()}
    src = {}
    for arm in sorted(f["arm"].unique()):
        cond = study.spec.arms.get(arm)
        if arm in personas:
            src[arm] = arm
        elif cond is not None and cond.conditioning.system_prompt in by_prompt:
            src[arm] = by_prompt[cond.conditioning.system_prompt]
        else:
            raise ConfigError(f"{frame}: arm {arm!r} is neither a persona id nor has a persona system prompt; give interp_args.leakage_csv")
    return f, src, frame


def _json_rows(df: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()} for r in df.to_dict("records")]


def run_interp_persona(ctx) -> dict:
    """Base-model persona geometry against marker leakage, per source and pooled (issue 16).

    `ctx` is analysis.interp_cli.Ctx. Writes dumps/persona_states.npz, the hero figure, the
    layer-selection figure and the cosine heatmap, and returns the `persona` results section."""
    from analysis.representations import save_npz
    from leaklab.study import REPO_ROOT
    from analysis import persona_figures as PF

    a = ctx.args
    personas = load_personas(ctx.resolve(a.personas))
    if a.questions:
        qpath = ctx.resolve(a.questions)
    else:
        cands = [REPO_ROOT / "data" / "persona" / f"questions.{ext}" for ext in ("jsonl", "yaml", "txt")]
        qpath = next((c for c in cands if c.exists()), None)
        if qpath is None:
            raise ConfigError(f"{ctx.study.study_yaml}: interp_args.questions not set and no data/persona/questions.(jsonl|yaml|txt)")
    qrecs = load_question_records(qpath, a.n_questions)
    qids = [q for q, _ in qrecs]
    n_layers = ctx.model.config.num_hidden_layers
    layers = a.persona_layers or sorted({int(round(x)) for x in np.linspace(n_layers / 4, n_layers - 1, 4)})
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad:
        raise ConfigError(f"{ctx.study.study_yaml}: interp_args.persona_layers {bad} out of range 0..{n_layers - 1}")
    if a.report_layer is not None and a.report_layer not in layers:
        raise ConfigError(f"{ctx.study.study_yaml}: interp_args.report_layer {a.report_layer} not in persona_layers {layers}")
    S = persona_states(ctx.model, ctx.tok, personas, [q for _, q in qrecs], layers, a.batch_size)  # [P, Q, L, D]
    save_npz(ctx.dumps / "persona_states.npz", states=S, layers=np.array(layers), question_ids=np.array(qids))
    names = list(personas)
    cos = {l: cosine_matrix(S[:, :, k].mean(axis=1)) for k, l in enumerate(layers)}
    declared = a.report_layer if a.report_layer is not None else layers[len(layers) // 2]
    res: dict = {"layers": layers, "personas": names, "n_questions": len(qids), "question_ids": qids,
                 "report_layer": declared, "pooled_method": "random-effects meta-analysis of per-source Fisher z",
                 "cosine": [{"layer": l, "matrix": cos[l].tolist()} for l in layers]}

    # leakage: counts from the frame (per question, so the layer can be chosen on held-out
    # questions) or a (source, persona, marker_rate[, k, n]) csv without question ids
    counts_for = None
    degeneracy: dict = {}
    negatives: dict = {}
    arm_source: dict = {}
    if a.leakage_csv:
        leak = pd.read_csv(ctx.resolve(a.leakage_csv))
        need = {"source", "persona", "marker_rate"}
        if not need <= set(leak.columns):
            raise ConfigError(f"{a.leakage_csv}: needs columns {sorted(need)}, got {sorted(leak.columns)}")
        for c in ("k", "n", "lo", "hi"):
            if c not in leak.columns:
                leak[c] = np.nan
        leak = leak[leak["source"] != leak["persona"]]
        counts_all, source_label = leak, a.leakage_csv
    else:
        f, src, frame = leakage_frame(ctx.study, personas, a.marker_measure)
        source_label = ctx.rel(frame) if frame is not None else None
        if f is None:
            counts_all = None
        else:
            arm_source = src
            negatives = {arm: arm_negatives(ctx.study, arm) for arm in src}
            degeneracy = source_degeneracy(f, src)
            counts_all = leakage_counts(f, src, negatives)

            def counts_for(questions, _f=f, _src=src, _neg=negatives):
                return leakage_counts(_f, _src, _neg, questions=questions)

            res["frame_question_ids"] = sorted(str(q) for q in f["question_id"].dropna().unique())
    res["leakage_source"] = source_label
    res["negatives_excluded"] = negatives
    res["degeneracy"] = degeneracy
    excluded = {}
    for arm, d in degeneracy.items():
        if d["degenerate_rate"] is not None and d["degenerate_rate"] > a.max_degenerate_rate:
            excluded[arm] = f"{d['degenerate_rate']:.0%} of its completions are empty or marker-only (> {a.max_degenerate_rate:.0%})"
    res["excluded_sources"] = excluded
    excluded = {arm_source.get(arm, arm): why for arm, why in excluded.items()}  # keyed by source persona below
    if counts_all is not None and len(counts_all):
        res["leakage"] = _json_rows(counts_all)
        # exploratory: every layer on all questions
        res["by_layer"] = [{"layer": l} | pooled_geometry(pairs_from_counts(cos[l], names, counts_all), a.n_perm, a.n_boot,
                                                          a.random_seed, exclude=list(excluded)) for l in layers]
        # the headline: layer chosen on the selection half of the questions, estimates on the other half
        common = [q for q in qids if q in set(res.get("frame_question_ids", []))]
        if a.layer_selection == "held_out_questions" and counts_for is not None and len(common) >= 2:
            sel, test = split_questions(common, a.selection_seed)
            selection = select_layer(S, layers, names, qids, counts_for, sel, a.n_perm, a.n_boot, a.random_seed, exclude=list(excluded))
            layer = selection["chosen_layer"] if selection["chosen_layer"] is not None else declared
            k = layers.index(layer)
            tpos = [qids.index(q) for q in test]
            test_counts = counts_for(test)
            head = pooled_geometry(pairs_from_counts(cosine_matrix(S[:, tpos, k].mean(axis=1)), names, test_counts),
                                   a.n_perm, a.n_boot, a.random_seed, exclude=list(excluded))
            res["layer_selection"] = {"method": "held_out_questions", "seed": a.selection_seed, "selection_questions": sel,
                                      "test_questions": test, "criterion": "largest pooled rho on the selection half", **selection}
            res["headline"] = {"layer": layer, "questions": "test half", "n_questions": len(test)} | head
            res["selection_figure"] = PF.save(PF.layer_selection_figure(selection), ctx.figs, "persona_layer_selection.png")
        else:
            layer = declared
            why = ("interp_args.layer_selection: declared" if a.layer_selection != "held_out_questions"
                   else "leakage has no per-question counts" if counts_for is None else "fewer than 2 shared question ids")
            res["layer_selection"] = {"method": "declared", "chosen_layer": layer, "reason": why}
            res["headline"] = {"layer": layer, "questions": "all", "n_questions": len(qids)} | next(b for b in res["by_layer"] if b["layer"] == layer)
        res["report_layer"] = layer
        pairs = pairs_from_counts(cos[layer], names, counts_all)
        fits = {s: fitted_band(g["cosine"].to_numpy(), g["marker_rate"].to_numpy(), a.n_boot, a.random_seed)
                for s, g in pairs.groupby("source", sort=True)}
        full = next(b for b in res["by_layer"] if b["layer"] == layer)
        res["fits"] = fits
        res["figure"] = PF.save(PF.hero_figure(pairs, fits, full["per_source"], layer), ctx.figs, "persona_cosine_vs_leakage.png")
    res["heatmap"] = PF.save(PF.cosine_heatmap(cos[res["report_layer"]], names, res["report_layer"]), ctx.figs, "persona_cosine.png")
    return res
