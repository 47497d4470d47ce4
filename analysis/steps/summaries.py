"""Step `summaries`: per model x measure x item set x condition x arm means of the final item
cells (after exclusions), with the per-seed means the report draws as dots."""

from __future__ import annotations

import math

import pandas as pd


def step(state, prereg):
    from analysis import frequentist as F
    from analysis import results as R

    for (model, measure, item_set, cond, arm), sub in state.fin.groupby(["model_label", "measure", "item_set", "condition", "arm"]):
        st = F.arm_interval(sub, prereg.frequentist.alpha)  # seed x item clustered t (benchmarks/calibration.py)
        seeds = sub.groupby("seed", dropna=False)["value"].mean()
        seed_means = {("none" if pd.isna(k) else str(int(k))): float(v) for k, v in seeds.items() if math.isfinite(v)}
        filt = {"model_label": model, "measure": measure, "item_set": item_set, "condition": cond, "arm": arm}
        state.summaries.append(R.ArmSummary(
            model_label=model, measure=measure, item_set=item_set, condition=cond, arm=arm, mean=st["mean"], sd=st["sd"],
            se=st["se"], ci_low=st["ci_low"], ci_high=st["ci_high"], se_clustered=F.clustered_se(sub["value"], sub["base_item"]),
            n_cells=int(sub["value"].notna().sum()), n_seeds=int(sub["seed"].nunique(dropna=False)), n_items=int(sub["item_id"].nunique()),
            seed_means=seed_means, n_unbalanced=int(sub["unbalanced"].sum()) if "unbalanced" in sub else 0,
            source=state.source(filt, "item cells: option orders and epochs averaged within item"),
        ))
    return state
