"""Step `capability`: capability of the base model and every arm against the preregistered bound.

The capability tasks (`tasks/capability.py`: perplexity of held-out neutral text, refusal of
clearly harmful requests, fluency of free text) run on the base model and every adapter. Per
model x capability measure x item set x condition, on the final checkpoint after exclusions:

- per run (arm x seed) and per arm pooled over its seeds (the mean of the seed means, the
  missing share over all its samples), and for the base model: n, unscored samples (with their
  `missing_reason`; counted before the preregistered exclusions, which may drop unparsed rows),
  the mean value after exclusions and the value in the reported unit (perplexity = exp of the
  mean per-text log-perplexity; refusal rate; fluency 0-100);
- against the base model on the same measure, item set and condition: perplexity ratio
  (exp(mean - base mean)), drop (base mean - mean), missing-share increase;
- the criteria of prereg `capability` (`prereg.schema.CapabilityPlan`) each is past.

An arm is flagged when any of its seeds is past a bound (`flag: any_seed`, the default) or when
its pooled value is (`flag: pooled`). The `verdicts` step makes every hypothesis whose contrast
involves a flagged arm `not_interpretable` (analysis.decide, `capability=`) unless the prereg
sets `gate: false`. A study that evaluates no capability measure gets an empty record that says so.
"""

from __future__ import annotations

import math

import pandas as pd

from prereg.schema import CAPABILITY_MEASURES


def _f(x) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _run(arm: str, seed, rows: pd.DataFrame, measure: str, pooled: bool = False, seed_means=None):
    """CapabilityRun fields of `rows` (one run, or an arm's seeds pooled with `seed_means`): n and
    the unscored count over every row, the mean over the rows no exclusion removed."""
    vals = rows["value"]
    n, miss = len(rows), int(vals.isna().sum())
    reasons = rows.loc[vals.isna(), "missing_reason"].fillna("unparsed").astype(str).value_counts()
    if pooled:
        ms = [m for m in (seed_means or []) if m is not None]
        mean = sum(ms) / len(ms) if ms else None
    else:
        kept = vals[rows["excluded"] == ""]
        mean = _f(kept.mean()) if kept.notna().any() else None
    value = None if mean is None else (math.exp(mean) if measure == "perplexity" else mean)
    return {"arm": arm, "seed": seed, "pooled": pooled, "n": n, "n_missing": miss,
            "missing_share": miss / n if n else None, "missing_reasons": {str(k): int(v) for k, v in reasons.items()},
            "mean": mean, "value": value}


def compare(run: dict, base: dict | None, measure: str, bound) -> dict:
    """Add ratio / drop / missing_increase against `base` and the bound's criteria `run` is past."""
    past: list[str] = []
    if base is not None:
        if run["mean"] is not None and base["mean"] is not None:
            if measure == "perplexity":
                run["ratio"] = math.exp(run["mean"] - base["mean"])
            else:
                run["drop"] = base["mean"] - run["mean"]
        if run["missing_share"] is not None and base["missing_share"] is not None:
            run["missing_increase"] = run["missing_share"] - base["missing_share"]
    who = "pooled" if run["pooled"] else f"seed {run['seed']}"
    if bound is not None and base is not None:
        if bound.max_ratio is not None and run.get("ratio") is not None and run["ratio"] > bound.max_ratio:
            past.append(f"{measure}: {who} perplexity {run['value']:.3g} = {run['ratio']:.2f} x base > {bound.max_ratio:g}")
        if bound.max_drop is not None and run.get("drop") is not None and run["drop"] > bound.max_drop:
            past.append(f"{measure}: {who} {run['value']:.3g} vs base {base['value']:.3g}, drop {run['drop']:.3g} > {bound.max_drop:g}")
        if (bound.max_missing_increase is not None and run.get("missing_increase") is not None
                and run["missing_increase"] > bound.max_missing_increase):
            why = ", ".join(f"{k} {v}" for k, v in sorted(run["missing_reasons"].items())) or "unscored"
            past.append(f"{measure}: {who} {run['n_missing']}/{run['n']} unscored ({why}), missing share "
                        f"+{run['missing_increase']:.2f} over base > {bound.max_missing_increase:g}")
    run["past"] = past
    return run


def capability_records(df: pd.DataFrame, plan, reference_arm: str | None = None) -> dict:
    """The results.json `capability` record (as plain dicts) from the frame's score rows.

    `df`: every score row (column `excluded` empty = kept; unscored rows count as unscored even when
    an exclusion removed them, e.g. inoculation's `parsed == False`: an exclusion of unparsed
    answers would otherwise hide the very collapse the bound is for); `plan`:
    prereg.schema.CapabilityPlan.
    Returns {"evaluated", "flag_rule", "gate", "measures": [...], "flagged": [...], "note"}, each
    measure without its `source` (the step adds it).
    """
    rows = df[(df["checkpoint"].fillna("final") == "final") & df["measure"].isin(CAPABILITY_MEASURES)]
    evaluated = sorted(set(rows["measure"]))
    bounds = plan.bounds(evaluated)
    out = {"evaluated": evaluated, "flag_rule": plan.flag, "gate": plan.gate, "measures": [], "flagged": [],
           "note": "" if evaluated else "no capability measure was evaluated (tasks/capability.py is not in the eval plan)"}
    flags: dict[tuple[str, str], list[str]] = {}
    for (model, measure, item_set, cond), sub in rows.groupby(["model_label", "measure", "item_set", "condition"], sort=True):
        bound = bounds.get(measure)
        b_rows = sub[sub["arm"] == "base"]
        base = compare(_run("base", None, b_rows, measure), None, measure, None) if len(b_rows) else None
        runs = []
        for arm in sorted(set(sub["arm"]) - {"base"}, key=lambda a: (a != reference_arm, a)):
            a_rows = sub[sub["arm"] == arm]
            seeds = []
            for seed, s_rows in a_rows.groupby("seed", dropna=False, sort=True):
                seed = None if pd.isna(seed) else int(seed)
                seeds.append(compare(_run(arm, seed, s_rows, measure), base, measure, bound))
            pooled = compare(_run(arm, None, a_rows, measure, pooled=True, seed_means=[r["mean"] for r in seeds]),
                             base, measure, bound)
            runs += seeds + [pooled]
            past = pooled["past"] if plan.flag == "pooled" else [p for r in seeds + [pooled] for p in r["past"]]
            if past:
                flags.setdefault((model, arm), []).extend(past)
        out["measures"].append({"model_label": model, "measure": measure, "item_set": item_set, "condition": cond,
                                "bound": None if bound is None else {k: v for k, v in bound.model_dump().items() if v is not None},
                                "base": base, "runs": runs})
        if bound is not None and base is None:
            out["note"] += (f" {model}/{measure}/{item_set}/{cond}: no base-model scores, so no arm could be compared "
                            "with the bound.").lstrip()
    out["flagged"] = [{"model_label": m, "arm": a, "reasons": r} for (m, a), r in sorted(flags.items())]
    return out


def contrast_arms(h, reference_arm: str) -> set[str]:
    """The arms a hypothesis' contrast involves (combined_directional reads the reference arm too)."""
    c = h.contrast
    if c.over == "conditions":
        return {h.arm} if h.arm else set()
    arms = {c.plus, c.minus}
    if c.kind == "combined_directional":
        arms.add(reference_arm)
    return arms


def step(state, prereg):
    from analysis import results as R

    rec = capability_records(state.df, prereg.capability, state.study.spec.reference_arm)
    measures = []
    for m in rec["measures"]:
        filt = {"model_label": m["model_label"], "measure": m["measure"], "item_set": m["item_set"], "condition": m["condition"]}
        measures.append(R.CapabilityMeasure(
            **{k: v for k, v in m.items() if k not in ("base", "runs")},
            base=None if m["base"] is None else R.CapabilityRun(**m["base"]),
            runs=[R.CapabilityRun(**r) for r in m["runs"]],
            source=state.source(filt, "score rows of the final checkpoint (base model: its only one); n and unscored "
                                      "count every row, excluded ones too (an unscored sample: empty or too-short "
                                      "answer, failed parse); means read the rows no exclusion removed")))
    state.capability = R.Capability(evaluated=rec["evaluated"], flag_rule=rec["flag_rule"], gate=rec["gate"],
                                    measures=measures, flagged=[R.CapabilityFlag(**f) for f in rec["flagged"]],
                                    note=rec["note"])
    for f in state.capability.flagged:
        state.warnings.append(f"capability: arm {f.arm} ({f.model_label}) fell past the preregistered bound: "
                              + "; ".join(f.reasons[:3]))
    return state
