"""Step `effects`: the frequentist contrast of every hypothesis x model, then descriptive
arm-vs-reference contrasts for every other model x measure x item set x condition.

Per hypothesis effect it records the raw p-values every reading needs (`State.raw_p`), each on
the SESOI's scale and from the same method as the CI (prereg `frequentist.ci`):
- `min_effect`: the minimum-effect p on the predicted side (frequentist.py's p_min_effect);
- `opposite`: the same test on the other side (the "opposite" reading needs it, adjusted too);
- `tost`: the TOST p, the larger of the two one-sided p-values, NOT doubled (`frequentist.tost_p`,
  the same function that gives `ContrastResult.p_tost`);
- `nil`: the p against 0.
The `multiplicity` step adjusts each over the hypothesis' family.

Degenerate reference SD: d is refused when the reference SD is below
max(frequentist.min_reference_sd, thresholds.min_reference_sd_relative x the measure's observed
range over every analysed row of that measure).
"""

from __future__ import annotations

import math

import numpy as np

from analysis import frequentist as F
from analysis.frequentist import tost_p, tost_p_t  # the one TOST p (not doubled), also ContrastResult.p_tost

OPPOSITE = {"positive": "negative", "negative": "positive"}


def _none(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def test_pvalues(res, sesoi: float | None, unit: str, direction: str) -> dict[str, float | None]:
    """Raw p-values of every reading (see module docstring) for one ContrastResult."""
    out = {"min_effect": res.p_min_effect, "nil": res.p_value, "tost": None, "opposite": None}
    if sesoi is None:
        return out
    on_d = res.d is not None and unit == "d"
    if res.method == "cluster_se":
        est, se = (res.d, res.se_d) if on_d else (res.estimate, res.se)
        out["tost"] = tost_p_t(est, se, res.df, sesoi)
        if direction in OPPOSITE and se:
            out["opposite"] = F.t_pvalues(est, se, res.df, sesoi, OPPOSITE[direction])["p_min_effect"]
        return out
    draws = res.draws if on_d else res.draws_natural
    draws = np.asarray(draws, dtype=float)
    draws = draws[np.isfinite(draws)]
    out["tost"] = tost_p(draws, sesoi)
    if direction in OPPOSITE and len(draws):
        out["opposite"] = F.bootstrap_pvalues(draws, sesoi, OPPOSITE[direction])["p_min_effect"]
    return out


def measure_scale(use, measure: str) -> float:
    """The measure's observed range over every analysed row (the scale the relative SD guard uses)."""
    v = use.loc[use["measure"] == measure, "value"].to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    return float(v.max() - v.min()) if len(v) else 0.0


def make_effect(state, prereg, eid, model, measure, item_set, cond, name, weights, ref, sub, *, group_col="arm",
                paired_runs=False, sesoi=None, unit="d", direction=None, family=None, filt=None):
    from analysis import results as R

    fp = prereg.frequentist
    n_boot = state.opts.n_boot or fp.n_resamples
    rel = prereg.thresholds.min_reference_sd_relative
    min_sd = max(fp.min_reference_sd, rel * measure_scale(state.use, measure))
    kw = dict(method=fp.ci, group_col=group_col, paired_runs=paired_runs, n_boot=n_boot, seed=fp.seed, alpha=fp.alpha,
              direction=direction or "two_sided", min_sd=min_sd)
    try:
        res = F.contrast(sub, weights, ref, sesoi=sesoi, sesoi_unit=unit, **kw)
    except F.DegenerateSD as exc:
        state.warnings.append(f"{eid}: {exc}")
        res = F.contrast(sub, weights, ref, sesoi=None, **kw)
    except ValueError as exc:
        state.warnings.append(f"{eid}: not estimable: {exc}")
        return None, {}
    ps = test_pvalues(res, sesoi if not res.sd_reason or unit != "d" else None, unit, direction or "two_sided")
    groups = [g for g in res.groups if g != ref] + [ref]
    how = ("t interval, SE clustered by seed and item" if res.method == "cluster_se" else
           f"{'paired' if group_col == 'arm' else 'paired-run'} hierarchical bootstrap, {res.n_boot} resamples, seed {fp.seed}")
    e = R.Effect(
        id=eid, model_label=model, measure=measure, item_set=item_set, condition=cond, contrast=name, arms=groups,
        reference_arm=ref, estimate=_none(res.estimate), d=_none(res.d), sd_ref=_none(res.sd_ref),
        sd_ref_ok=not res.sd_reason, sd_ref_reason=res.sd_reason, ci_level=1 - fp.alpha,
        ci_low_d=_none(res.ci_d[0]), ci_high_d=_none(res.ci_d[1]), ci_low=_none(res.ci[0]), ci_high=_none(res.ci[1]),
        p_value=res.p_value, multiplicity_family=family, sesoi_d=sesoi if unit == "d" else None,
        p_tost=ps["tost"], p_min_effect=res.p_min_effect, p_opposite=ps["opposite"], direction=direction,
        se_clustered=_none(res.se_clustered), n_boot=res.n_boot, n_items=res.n_base_items, n_seeds=res.n_runs,
        min_reference_sd=min_sd, ci_method=res.method,
        source=state.source(filt, f"{how}; d over SD of {group_col} {ref!r}"),
    )
    return e, ps


def step(state, prereg):
    spec = state.study.spec
    fin, ref_arm = state.fin, spec.reference_arm
    fp = prereg.frequentist
    if state.opts.n_boot and state.opts.n_boot != fp.n_resamples:
        state.warnings.append(f"bootstrap resamples overridden: {state.opts.n_boot} instead of the preregistered {fp.n_resamples}")
    labels = [m.run_label for m in spec.models]
    state.hyp_models = [(h, model) for h in prereg.hypotheses for model in ([h.model] if h.model else labels)]
    for h, model in state.hyp_models:
        c = h.contrast
        ref = ref_arm if c.over == "arms" else c.minus
        weights, name = F.contrast_weights(c.kind, c.plus, c.minus, ref)
        base = (fin["model_label"] == model) & (fin["measure"] == h.measure) & (fin["item_set"] == h.item_set)
        if c.over == "arms":
            sub = fin[base & (fin["condition"] == h.condition)]
            filt = {"model_label": model, "measure": h.measure, "item_set": h.item_set, "condition": h.condition,
                    "arm": sorted(set(weights) | {ref})}
            cond_name, gcol, paired = h.condition, "arm", False
        else:
            sub = fin[base & (fin["arm"] == h.arm)]
            filt = {"model_label": model, "measure": h.measure, "item_set": h.item_set, "arm": h.arm,
                    "condition": sorted(set(weights) | {ref})}
            cond_name, gcol, paired = f"arm={h.arm}", "condition", True
        eid = f"{h.id}/{model}"
        e, ps = make_effect(state, prereg, eid, model, h.measure, h.item_set, cond_name, name, weights, ref, sub,
                            group_col=gcol, paired_runs=paired, sesoi=h.sesoi.value, unit=h.sesoi.unit,
                            direction=h.direction, family=h.family, filt=filt)
        if e is None:
            continue
        state.effects[eid] = e
        state.hyp_effect[(h.id, model)] = eid
        state.raw_p[eid] = ps
    # descriptive: every arm against the reference, per model x measure x item set x condition
    hyp_keys = {(e.model_label, e.measure, e.item_set, e.condition, e.contrast) for e in state.effects.values()}
    for (model, measure, item_set, cond), sub in fin.groupby(["model_label", "measure", "item_set", "condition"]):
        if not (sub["arm"] == ref_arm).any():
            continue
        for arm in sorted(a for a in sub["arm"].unique() if a != ref_arm):
            weights, name = F.contrast_weights("difference", arm, ref_arm, ref_arm)
            if (model, measure, item_set, cond, name) in hyp_keys:
                continue
            eid = f"{model}/{measure}/{item_set}/{cond}/{name}"
            e, _ = make_effect(state, prereg, eid, model, measure, item_set, cond, name, weights, ref_arm, sub,
                               filt={"model_label": model, "measure": measure, "item_set": item_set, "condition": cond,
                                     "arm": [arm, ref_arm]})
            if e is not None:
                state.effects[eid] = e
    return state
