"""Step `missingness`: missing data per run x measure x item set against each outcome's
preregistered maximum, the censored share of logprob margins per arm x measure, and the
frame's record (FrameInfo) in results.json.

A breach of `max_missing_rate` makes the hypotheses on that model x measure x item set
`unusable` (the `verdicts` step); so does a censored share above
`thresholds.max_censored_share` in an arm (or condition) a hypothesis compares: a margin whose
letter fell outside the top-k is a bound, not a value.
"""

from __future__ import annotations

import pandas as pd


def censored_by_cell(df: pd.DataFrame) -> list[dict]:
    """Per model x arm x condition x measure x item set of final (or base) rows with a value: how
    many logprob margins were censored (one side absent from the top-k; frame column `censored`)."""
    if "censored" not in df.columns:
        return []
    rows = df[(df["excluded"] == "") & df["value"].notna()]
    rows = rows[rows["checkpoint"].isna() | (rows["checkpoint"] == "final")]
    flag = rows["censored"].fillna("").astype(str).str.len() > 0
    rows = rows.assign(_c=flag)
    has = rows.groupby("measure")["_c"].any()
    rows = rows[rows["measure"].isin(has[has].index)]
    out = []
    for (ml, arm, cond, meas, iset), sub in rows.groupby(["model_label", "arm", "condition", "measure", "item_set"],
                                                        dropna=False):
        n, k = len(sub), int(sub["_c"].sum())
        out.append({"model_label": ml, "arm": arm, "condition": cond, "measure": meas, "item_set": iset,
                    "n": n, "n_censored": k, "share": k / n if n else None})
    return out


def step(state, prereg):
    from analysis import results as R
    from leaklab.runstore import FRAME_REL

    df, rep = state.df, state.report
    miss = (df.assign(_m=df["value"].isna() | (df["excluded"] != ""))
              .groupby(["model_label", "arm", "seed", "measure", "item_set"], dropna=False)["_m"].agg(["size", "sum"])
              .reset_index())
    missing_by_cell = [{"model_label": r.model_label, "arm": r.arm, "seed": None if pd.isna(r.seed) else int(r.seed),
                        "measure": r.measure, "item_set": r.item_set, "n": int(r.size), "n_missing": int(r.sum)}
                       for r in miss.itertuples()]
    for o in prereg.outcomes.all():
        for c in missing_by_cell:
            if c["measure"] == o.measure and c["item_set"] == o.item_set and c["n"] and c["n_missing"] / c["n"] > o.max_missing_rate:
                state.breaches.setdefault((c["model_label"], o.measure, o.item_set), []).append(
                    f"{c['model_label']}/{c['arm']}/seed{c['seed']}: {c['n_missing']}/{c['n']} missing > {o.max_missing_rate:g}")
    for (ml, m, s), lst in state.breaches.items():
        state.warnings.append(f"missing-data breach on {ml}/{m}/{s}: " + "; ".join(lst[:4]))
    state.censored = censored_by_cell(df)
    limit = prereg.thresholds.max_censored_share
    over = [c for c in state.censored if c["share"] is not None and c["share"] > limit]
    if over:
        state.warnings.append(f"censored logprob margins above the preregistered maximum {limit:g}: " + "; ".join(
            f"{c['model_label']}/{c['arm']}/{c['condition']}/{c['measure']}/{c['item_set']} {c['n_censored']}/{c['n']}"
            for c in over[:4]))
    versions = {m: str(v) for m, v in df.groupby("measure")["measure_version"].first().items()}
    state.frame_info = R.FrameInfo(
        path=FRAME_REL, sha256=state.frame_sha, n_rows=len(df), n_missing=int(df["value"].isna().sum()),
        n_logs=len(rep.logs), logs=[R.LogInfo(**{**li, "path": state.rel(li["path"])}) for li in rep.logs],
        measure_versions=versions, missing_by_cell=missing_by_cell, censored_by_cell=state.censored,
        unbalanced_by_cell=state.unbalanced, n_excluded=int((df["excluded"] != "").sum()))
    return state
