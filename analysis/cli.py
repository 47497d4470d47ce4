"""`leaklab analyze STUDY`: logs -> frame -> frequentist + Bayesian -> preregistered decisions.

Goes through `prereg.guard` first (a study without a verifying lock is refused unless
--exploratory, which stamps every output EXPLORATORY), then accepts only logs bound to the
current lock (`prereg.require_bound`). Writes `runs/<study>/analysis/`:
`frame.parquet` (every score row, with an `excluded` column naming the exclusion that removed
it), `results.json` (analysis.results.Results), `posterior/*.nc`, `figures/ppc_*.png`.

Only the final checkpoint enters hypotheses; every number's Source names the frame filters.
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import typer

FRAME_REL = "analysis/frame.parquet"


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", s)


def _none(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def _is_manipulation(h) -> bool:
    """A manipulation check: a hypothesis on the trained domain (item set `source`) or one the
    prereg files under the family `manipulation` (e.g. "the control arm learned the trait")."""
    return h.item_set == "source" or h.family == "manipulation"


def analyze_study(
    study_dir: str | Path,
    *,
    exploratory: bool = False,
    bayes: bool = True,
    n_boot: int | None = None,
    draws: int | None = None,
    tune: int | None = None,
    chains: int | None = None,
    log: Callable[[str], None] = lambda s: None,
):
    """Run the whole analysis of one study; return the Results written to results.json."""
    import numpy as np
    import pandas as pd

    import prereg
    from analysis import bayes as B
    from analysis import decide as D
    from analysis import frequentist as F
    from analysis import results as R
    from analysis.frame import cell_frame, read_frame, select, write_frame
    from prereg.locking import leaklab_version
    from leaklab.runstore import analysis_dir, logs_dir
    from leaklab.study import load_study
    from leaklab.yamlio import ConfigError

    guard = prereg.guard(study_dir, exploratory=exploratory)
    study = load_study(study_dir)
    pre = prereg.load_prereg(study.folder, study)
    spec = study.spec
    runs = study.runs_dir
    ldir = logs_dir(runs)
    log_files = sorted(ldir.rglob("*.eval")) if ldir.exists() else []
    if not log_files:
        raise ConfigError(f"{ldir}: no Inspect logs (*.eval) to analyse; run `leaklab eval {study_dir}` first")
    prereg.require_bound(study.folder, [str(p) for p in log_files], guard)
    out_dir = analysis_dir(runs)
    warnings: list[str] = []
    if guard.exploratory:
        warnings.append("EXPLORATORY: " + (guard.stamp if not guard.problems else "no verifying lock: " + "; ".join(guard.problems[:3])))

    # ---------------------------------------------------------------- frame + exclusions
    log(f"reading {len(log_files)} logs from {ldir}")
    df, rep = read_frame(ldir, study=spec.name)
    if df.empty:
        raise ConfigError(f"{ldir}: the logs hold no leaklab scores (no Score with 'measure' metadata)")
    df["excluded"] = ""
    for x in pre.exclusions:
        m = x.parsed.mask(df).to_numpy()
        if x.applies_to:
            m &= df["measure"].isin(x.applies_to).to_numpy()
        df.loc[m & (df["excluded"] == "").to_numpy(), "excluded"] = x.id
    sha = write_frame(df, out_dir / "frame.parquet")
    use = df[df["excluded"] == ""]
    cells = cell_frame(use)
    fin = cells[cells["checkpoint"] == "final"]
    ref_arm = spec.reference_arm
    base_filter = {"checkpoint": "final", "excluded": ""}

    def source(filters: dict, note: str = "") -> R.Source:
        """Source of a number: the exact frame filters used, with row / missing / excluded counts."""
        full = {**base_filter, **filters}
        sel = select(df, {k: v for k, v in full.items() if k != "excluded"})
        kept = sel[sel["excluded"] == full["excluded"]]
        return R.Source(frame=FRAME_REL, filters=full, n_rows=len(kept), n_missing=int(kept["value"].isna().sum()),
                        n_excluded=len(sel) - len(kept), note=note)

    # missing data per run x measure x item set (excluded rows count as missing)
    miss = (df.assign(_m=df["value"].isna() | (df["excluded"] != ""))
              .groupby(["model_label", "arm", "seed", "measure", "item_set"], dropna=False)["_m"].agg(["size", "sum"]).reset_index())
    missing_by_cell = [{"model_label": r.model_label, "arm": r.arm, "seed": None if pd.isna(r.seed) else int(r.seed),
                        "measure": r.measure, "item_set": r.item_set, "n": int(r.size), "n_missing": int(r.sum)}
                       for r in miss.itertuples()]
    breaches: dict[tuple[str, str], list[str]] = {}
    for o in pre.outcomes.all():
        for c in missing_by_cell:
            if c["measure"] == o.measure and c["item_set"] == o.item_set and c["n"] and c["n_missing"] / c["n"] > o.max_missing_rate:
                breaches.setdefault((o.measure, o.item_set), []).append(
                    f"{c['model_label']}/{c['arm']}/seed{c['seed']}: {c['n_missing']}/{c['n']} missing > {o.max_missing_rate:g}")
    for (m, s), lst in breaches.items():
        warnings.append(f"missing-data breach on {m}/{s}: " + "; ".join(lst[:4]))
    if rep.skipped:
        warnings.append(f"{len(rep.skipped)} log(s) not read: " + "; ".join(rep.skipped[:5]))
    if rep.n_scores_without_measure:
        warnings.append(f"{rep.n_scores_without_measure} scores without 'measure' metadata were ignored")

    versions = {m: str(v) for m, v in df.groupby("measure")["measure_version"].first().items()}
    frame_info = R.FrameInfo(path=FRAME_REL, sha256=sha, n_rows=len(df), n_missing=int(df["value"].isna().sum()),
                             n_logs=len(rep.logs), logs=[R.LogInfo(**{**li, "path": _rel(li["path"], runs)}) for li in rep.logs],
                             measure_versions=versions, missing_by_cell=missing_by_cell)

    # ---------------------------------------------------------------- arm summaries
    summaries = []
    for (model, measure, item_set, cond, arm), sub in fin.groupby(["model_label", "measure", "item_set", "condition", "arm"]):
        st = F.mean_se_ci(sub["value"])
        filt = {"model_label": model, "measure": measure, "item_set": item_set, "condition": cond, "arm": arm}
        summaries.append(R.ArmSummary(
            model_label=model, measure=measure, item_set=item_set, condition=cond, arm=arm, mean=st["mean"], sd=st["sd"],
            se=st["se"], ci_low=st["ci_low"], ci_high=st["ci_high"], se_clustered=F.clustered_se(sub["value"], sub["base_item"]),
            n_cells=int(sub["value"].notna().sum()), n_seeds=int(sub["seed"].nunique(dropna=False)), n_items=int(sub["item_id"].nunique()),
            source=source(filt, "item cells: option orders and epochs averaged within item"),
        ))

    # ---------------------------------------------------------------- frequentist effects
    fp = pre.frequentist
    B_boot = n_boot or fp.n_resamples
    if B_boot != fp.n_resamples:
        warnings.append(f"bootstrap resamples overridden: {B_boot} instead of the preregistered {fp.n_resamples}")
    labels = [m.run_label for m in spec.models]
    effects: dict[str, R.Effect] = {}
    hyp_effect: dict[tuple[str, str], str] = {}  # (hypothesis id, model) -> effect id
    test_p: dict[str, float | None] = {}

    def make_effect(eid, model, measure, item_set, cond, name, weights, ref, sub, *, group_col="arm", paired_runs=False,
                    sesoi=None, unit="d", direction=None, family=None, filt=None):
        try:
            res = F.bootstrap_contrast(sub, weights, ref, group_col=group_col, paired_runs=paired_runs, n_boot=B_boot,
                                       seed=fp.seed, alpha=fp.alpha, sesoi=sesoi, sesoi_unit=unit,
                                       direction=direction or "two_sided", min_sd=fp.min_reference_sd)
        except F.DegenerateSD as exc:
            warnings.append(f"{eid}: {exc}")
            res = F.bootstrap_contrast(sub, weights, ref, group_col=group_col, paired_runs=paired_runs, n_boot=B_boot,
                                       seed=fp.seed, alpha=fp.alpha, sesoi=None, direction=direction or "two_sided",
                                       min_sd=fp.min_reference_sd)
        except ValueError as exc:
            warnings.append(f"{eid}: not estimable: {exc}")
            return None
        if fp.ci == "cluster_se":
            cs = F.cluster_se_contrast(sub, weights, ref, group_col=group_col, alpha=fp.alpha, min_sd=fp.min_reference_sd)
            res.ci, res.ci_d = cs["ci"], cs["ci_d"]
        groups = [g for g in res.groups if g != ref] + [ref]
        return R.Effect(
            id=eid, model_label=model, measure=measure, item_set=item_set, condition=cond, contrast=name, arms=groups,
            reference_arm=ref, estimate=_none(res.estimate), d=_none(res.d), sd_ref=_none(res.sd_ref),
            sd_ref_ok=not res.sd_reason, sd_ref_reason=res.sd_reason, ci_level=1 - fp.alpha,
            ci_low_d=_none(res.ci_d[0]), ci_high_d=_none(res.ci_d[1]), ci_low=_none(res.ci[0]), ci_high=_none(res.ci[1]),
            p_value=res.p_value, multiplicity_family=family, sesoi_d=sesoi if unit == "d" else None,
            p_tost=res.p_tost, p_min_effect=res.p_min_effect, direction=direction, se_clustered=_none(res.se_clustered),
            n_boot=res.n_boot, n_items=res.n_base_items, n_seeds=res.n_runs,
            source=source(filt, f"{'paired' if group_col == 'arm' else 'paired-run'} hierarchical bootstrap, "
                                       f"{res.n_boot} resamples, seed {fp.seed}; d over SD of {group_col} {ref!r}"),
        )

    hyp_models: list[tuple[Any, str]] = []
    for h in pre.hypotheses:
        for model in ([h.model] if h.model else labels):
            hyp_models.append((h, model))
    for h, model in hyp_models:
        c = h.contrast
        ref = ref_arm if c.over == "arms" else c.minus
        weights, name = F.contrast_weights(c.kind, c.plus, c.minus, ref)
        if c.over == "arms":
            sub = fin[(fin["model_label"] == model) & (fin["measure"] == h.measure) & (fin["item_set"] == h.item_set)
                      & (fin["condition"] == h.condition)]
            filt = {"model_label": model, "measure": h.measure, "item_set": h.item_set, "condition": h.condition,
                    "arm": sorted(set(weights) | {ref})}
            cond_name, gcol, paired = h.condition, "arm", False
        else:
            sub = fin[(fin["model_label"] == model) & (fin["measure"] == h.measure) & (fin["item_set"] == h.item_set)
                      & (fin["arm"] == h.arm)]
            filt = {"model_label": model, "measure": h.measure, "item_set": h.item_set, "arm": h.arm,
                    "condition": sorted(set(weights) | {ref})}
            cond_name, gcol, paired = f"arm={h.arm}", "condition", True
        eid = f"{h.id}/{model}"
        e = make_effect(eid, model, h.measure, h.item_set, cond_name, name, weights, ref, sub, group_col=gcol,
                        paired_runs=paired, sesoi=h.sesoi.value, unit=h.sesoi.unit, direction=h.direction,
                        family=h.family, filt=filt)
        if e is None:
            continue
        effects[eid] = e
        hyp_effect[(h.id, model)] = eid
        test_p[eid] = {"minimum_effect": e.p_min_effect, "tost": e.p_tost, "nil": e.p_value}[fp.test]
    # descriptive: every arm against the reference, per model x measure x item set x condition
    hyp_keys = {(e.model_label, e.measure, e.item_set, e.condition, e.contrast) for e in effects.values()}
    for (model, measure, item_set, cond), sub in fin.groupby(["model_label", "measure", "item_set", "condition"]):
        if not (sub["arm"] == ref_arm).any():
            continue
        for arm in sorted(a for a in sub["arm"].unique() if a != ref_arm):
            weights, name = F.contrast_weights("difference", arm, ref_arm, ref_arm)
            if (model, measure, item_set, cond, name) in hyp_keys:
                continue
            eid = f"{model}/{measure}/{item_set}/{cond}/{name}"
            e = make_effect(eid, model, measure, item_set, cond, name, weights, ref_arm, sub,
                            filt={"model_label": model, "measure": measure, "item_set": item_set, "condition": cond,
                                  "arm": [arm, ref_arm]})
            if e is not None:
                effects[eid] = e
    # multiplicity over each preregistered family
    for fam, method in pre.multiplicity.families.items():
        ids = [eid for (hid, _m), eid in hyp_effect.items() if pre.hypothesis(hid).family == fam]
        adj = F.adjust([test_p[i] for i in ids], method)
        for i, a in zip(ids, adj):
            effects[i] = effects[i].model_copy(update={"p_adjusted": a, "multiplicity_family": f"{fam} ({method}, {len(ids)} tests, on p_{fp.test})"})

    # ---------------------------------------------------------------- measure validity
    validity = []
    for v in D.measure_validity(fin):
        filt = v.pop("filters")
        validity.append(R.MeasureValidity(**v, source=source(filt, "sign agreement per (run, item) with the run's own forced choice")))
    valid_of = {(v.model_label, v.measure): v for v in validity}

    # ---------------------------------------------------------------- Bayesian
    bp = pre.bayesian
    fits: dict[str, R.BayesFit] = {}
    hyp_fit: dict[tuple[str, str], str] = {}
    bayes_reading: dict[tuple[str, str], tuple[str, dict | None, R.BayesFit | None]] = {}
    if bayes:
        groups_needed: dict[tuple, dict] = {}
        for h, model in hyp_models:
            if (h.id, model) not in hyp_effect or h.measure not in bp.likelihood:
                continue
            c = h.contrast
            key = (model, h.measure, h.item_set, c.over, h.condition if c.over == "arms" else h.arm)
            groups_needed.setdefault(key, {"hyps": [], "groups": set()})
            groups_needed[key]["hyps"].append(h)
            groups_needed[key]["groups"] |= {c.plus, c.minus}
        for key, info in groups_needed.items():
            model, measure, item_set, over, where = key
            spec_b = B.spec_from_prereg(bp, measure)
            overrides = {k: v for k, v in {"draws": draws, "tune": tune, "chains": chains}.items() if v is not None}
            for k, v in overrides.items():
                setattr(spec_b, k, v)
            if overrides:
                warnings.append(f"Bayesian sampler settings overridden {overrides}: not the preregistered plan")
            rows = use[(use["model_label"] == model) & (use["measure"] == measure) & (use["item_set"] == item_set)
                       & (use["checkpoint"] == "final")]
            if over == "arms":
                rows = rows[rows["condition"] == where]
                gcol, ref = "arm", ref_arm
                groups = sorted({a for a in rows["arm"].unique() if a != "base"} | info["groups"])
                fid = f"{model}/{measure}/{item_set}/{where}"
                filt = {"model_label": model, "measure": measure, "item_set": item_set, "condition": where, "arm": groups}
            else:
                rows = rows[rows["arm"] == where]
                gcol = "condition"
                ref = info["hyps"][0].contrast.minus
                groups = sorted(info["groups"])
                fid = f"{model}/{measure}/{item_set}/arm={where}"
                filt = {"model_label": model, "measure": measure, "item_set": item_set, "arm": where, "condition": groups}
            first_eff = effects[hyp_effect[(info["hyps"][0].id, model)]]
            log(f"fitting {spec_b.likelihood} model {fid} ({len(rows)} rows, {spec_b.chains}x{spec_b.draws} draws)")
            try:
                fit = B.fit_model(rows, groups, ref, spec_b, group_col=gcol, sd_ref=first_eff.sd_ref if first_eff.sd_ref_ok else None)
            except ValueError as exc:
                warnings.append(f"Bayesian fit {fid} not possible: {exc}")
                continue
            diag = B.diagnostics(fit.idata, spec_b.gates)
            if not diag["passed"]:
                warnings.append(f"Bayesian fit {fid} UNUSABLE: " + "; ".join(diag["failures"]))
            nc = out_dir / "posterior" / f"{_safe(fid)}.nc"
            B.save_netcdf(fit, nc)
            fig = out_dir / "figures" / f"ppc_{_safe(fid)}.png"
            try:
                B.ppc_figure(fit, fig)
                fig_rel = _rel(fig, runs)
            except Exception as exc:  # noqa: BLE001 - a figure failure must not hide the numbers
                warnings.append(f"PPC figure for {fid} failed: {exc}")
                fig_rel = None
            contrasts = []
            for h in info["hyps"]:
                c = h.contrast
                eff = effects[hyp_effect[(h.id, model)]]
                weights, name = F.contrast_weights(c.kind, c.plus, c.minus, ref_arm if c.over == "arms" else c.minus)
                rope_over = None if bp.rope == "sesoi" else float(bp.rope)
                summ = B.summarize_contrast(fit, name, weights, h.sesoi.value, h.sesoi.unit, rope_over, diag["passed"],
                                            sd_ref=eff.sd_ref if eff.sd_ref_ok else None)
                if not any(x.name == name for x in contrasts):
                    contrasts.append(R.BayesContrast(**summ))
                bayes_reading[(h.id, model)] = (summ["verdict"], summ, None)
                hyp_fit[(h.id, model)] = fid
            fits[fid] = R.BayesFit(
                id=fid, model_label=model, measure=measure, item_set=item_set,
                condition=where if over == "arms" else f"arm={where}", likelihood=_lik_name(spec_b.likelihood),
                formula=fit.formula, priors={k: spec_b.prior(k) for k in B.DEFAULT_PRIORS if k in _used_priors(fit)},
                sampler={"draws": spec_b.draws, "tune": spec_b.tune, "chains": spec_b.chains, "seed": spec_b.seed,
                         "target_accept": spec_b.target_accept, "backend": spec_b.sampler},
                fit_seconds=round(fit.fit_seconds, 2), diagnostics=R.Diagnostics(**diag), usable=diag["passed"],
                contrasts=contrasts, netcdf=_rel(nc, runs), ppc_figure=fig_rel,
                source=source(filt, "score rows (option orders separate); " + "; ".join(fit.notes)),
            )

    # ---------------------------------------------------------------- decisions
    decisions = []
    manip_status: dict[str, list[bool | None]] = {}
    for h, model in hyp_models:
        eid = hyp_effect.get((h.id, model))
        kind = "confirmatory" if h.confirmatory else "exploratory"
        unit = h.sesoi.unit
        rule = (f"{fp.test} test on {unit}: the {1 - fp.alpha:.0%} {fp.ci} CI vs +/-{h.sesoi.value:g} ({h.direction}), "
                f"{pre.multiplicity.families.get(h.family, 'none')} within family '{h.family}'; Bayesian {bp.hdi_prob:.0%} HDI "
                f"vs ROPE {'+/-SESOI' if bp.rope == 'sesoi' else bp.rope} with gates. Prereg: {pre.decision_rule.strip()}")
        if eid is None:
            decisions.append(R.Decision(hypothesis_id=h.id, model_label=model, kind=kind, statement=h.statement.strip(),
                                        rule=rule, verdict="unusable", reason="no data to estimate this contrast",
                                        exploratory_stamp=guard.exploratory))
            continue
        e = effects[eid]
        lo, hi = (e.ci_low_d, e.ci_high_d) if unit == "d" else (e.ci_low, e.ci_high)
        est = e.d if unit == "d" else e.estimate
        rule_h = D.rule_for(pre, h)
        if unit == "d" and not e.sd_ref_ok:
            fr = "unusable"
        else:
            fr = D.frequentist_reading(rule_h, lo, hi, p_effect=e.p_adjusted if fp.test != "tost" else None,
                                       p_tost=e.p_adjusted if fp.test == "tost" else e.p_tost,
                                       p_nil=e.p_adjusted if fp.test == "nil" else None)
        br = None
        summ = None
        fit_rec = fits.get(hyp_fit.get((h.id, model), ""))
        if bayes and h.measure in bp.likelihood and fit_rec is not None:
            summ = bayes_reading[(h.id, model)][1]
            rope = tuple(summ["rope"]) if summ.get("rope") else None
            br = D.bayes_reading(rule_h, summ["hdi_low"], summ["hdi_high"], rope, fit_rec.usable)
        elif bayes:
            br = "unusable"
        verdict, why = D.combine(rule_h, fr, br)
        notes = []
        if (h.measure, h.item_set) in breaches:
            verdict, why = "undecided", "data quality: missing-data rate above the preregistered maximum"
            notes.append("; ".join(breaches[(h.measure, h.item_set)][:3]))
        v = valid_of.get((model, h.measure))
        if v is not None and v.passed is False:
            verdict = "unusable"
            why = f"measure failed the validity check (sign agreement {v.agreement:.2f} < {v.threshold:g} with the forced choice on source items); reported, not interpreted"
        if unit == "d" and not e.sd_ref_ok:
            why = e.sd_ref_reason
        b_unit = (lambda k: summ.get(k + "_d")) if (summ and unit == "d") else (lambda k: summ.get(k) if summ else None)
        reason = D.reason_text(fr, br, why, unit, est, lo, hi, e.p_adjusted, b_unit("mean"), b_unit("hdi_low"),
                               b_unit("hdi_high"), h.sesoi.value, fit_rec.diagnostics.failures if fit_rec and not fit_rec.usable else None)
        if notes:
            reason += "; " + "; ".join(notes)
        numbers = {"estimate": est, "ci_low": lo, "ci_high": hi, "p_adjusted": e.p_adjusted, "p_min_effect": e.p_min_effect,
                   "p_tost": e.p_tost, "p_value": e.p_value, "sesoi": h.sesoi.value, "sesoi_unit": unit, "alpha": fp.alpha}
        if summ:
            numbers.update({"bayes_mean": b_unit("mean"), "bayes_hdi_low": b_unit("hdi_low"), "bayes_hdi_high": b_unit("hdi_high"),
                            "bayes_p_in_rope": summ.get("p_in_rope"), "bayes_verdict": summ["verdict"]})
        if _is_manipulation(h):
            manip_status.setdefault(model, []).append(verdict == "supported")
        decisions.append(R.Decision(
            hypothesis_id=h.id, model_label=model, kind=kind, statement=h.statement.strip(), rule=rule, verdict=verdict,
            reason=reason, effect_ids=[eid], bayes_ids=[fit_rec.id] if fit_rec else [], numbers=numbers,
            exploratory_stamp=guard.exploratory, frequentist_reading=fr, bayes_reading=br,
        ))
    # the manipulation check is computed and shown first; targets are read in its light
    manip = []
    for h, model in hyp_models:
        if not _is_manipulation(h) or (h.id, model) not in hyp_effect:
            continue
        d = next(x for x in decisions if x.hypothesis_id == h.id and x.model_label == model)
        manip.append(R.ManipulationCheck(model_label=model, measure=h.measure, item_set=h.item_set,
                                         effects=[hyp_effect[(h.id, model)]], passed=d.verdict == "supported",
                                         summary=f"{h.id}: {d.verdict}. {d.reason}"))
    if not manip:
        for e in effects.values():
            if e.item_set == "source":
                manip.append(R.ManipulationCheck(model_label=e.model_label, measure=e.measure, item_set=e.item_set,
                                                 effects=[e.id], passed=None,
                                                 summary="no preregistered manipulation hypothesis: descriptive source-item effect only"))
    for i, d in enumerate(decisions):
        h = pre.hypothesis(d.hypothesis_id)
        st = manip_status.get(d.model_label)
        if not _is_manipulation(h) and st is not None and not all(st):
            decisions[i] = d.model_copy(update={"reason": d.reason + "; the manipulation check did not pass for this model: "
                                                "not interpreted as an effect of the manipulation"})
    order = {"manip": 0, "confirmatory": 1, "exploratory": 2}
    decisions.sort(key=lambda d: (0 if _is_manipulation(pre.hypothesis(d.hypothesis_id)) else order[d.kind]))

    results = R.Results(
        study=spec.name, stamp="EXPLORATORY" if guard.exploratory else "CONFIRMATORY", exploratory=guard.exploratory,
        lock_digest=guard.digest, created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        leaklab_version=leaklab_version(), reference_arm=ref_arm, arms=sorted(set(df["arm"].dropna())), frame=frame_info,
        settings={"checkpoint": "final", "n_boot": B_boot, "bootstrap_seed": fp.seed, "alpha": fp.alpha, "test": fp.test,
                  "ci": fp.ci, "min_reference_sd": fp.min_reference_sd, "validity_threshold": D.VALIDITY_THRESHOLD,
                  "run_resampling": "n-1 out of n runs per arm (small-sample correction)", "bayes": bayes,
                  "cells": "option orders and epochs averaged within item before SDs and means"},
        manipulation_checks=manip, measure_validity=validity, arm_summaries=summaries, effects=list(effects.values()),
        bayes=list(fits.values()), decisions=decisions, warnings=warnings,
    )
    R.dump_results(results, out_dir / "results.json")
    return results


def _lik_name(lik: str) -> str:
    return "ordinal" if lik == "ordered_logistic" else lik


def _used_priors(fit) -> set[str]:
    """Names of the priors the fitted model actually uses (free RVs named like a prior)."""
    from analysis.bayes import DEFAULT_PRIORS

    return {v.name for v in fit.model.free_RVs} & set(DEFAULT_PRIORS)


def _rel(path: str | Path, runs: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(runs).resolve()))
    except ValueError:
        return str(path)


def register(app: typer.Typer) -> None:
    @app.command("analyze")
    def analyze(
        study: Path = typer.Argument(..., help="studies/<name> folder"),
        exploratory: bool = typer.Option(False, "--exploratory", help="run without a verifying lock; every output stamped EXPLORATORY"),
        no_bayes: bool = typer.Option(False, "--no-bayes", help="skip the Bayesian models (decisions then stay undecided)"),
        n_boot: int = typer.Option(None, "--n-boot", help="override the prereg's bootstrap resamples (recorded)"),
        draws: int = typer.Option(None, "--draws", help="override the prereg's sampler draws (recorded as a deviation warning)"),
        tune: int = typer.Option(None, "--tune"),
        chains: int = typer.Option(None, "--chains"),
    ):
        """Analyse STUDY's logs: frame, effects, posteriors, preregistered decisions -> runs/<study>/analysis/."""
        from rich.console import Console
        from rich.table import Table

        con = Console()
        t0 = time.perf_counter()
        res = analyze_study(study, exploratory=exploratory, bayes=not no_bayes, n_boot=n_boot, draws=draws, tune=tune,
                            chains=chains, log=lambda s: con.print(f"[dim]{s}[/dim]"))
        con.print(f"[bold]{res.stamp}[/bold] study {res.study}, lock {res.lock_digest or '-'}; "
                  f"{res.frame.n_rows} score rows ({res.frame.n_missing} missing) from {res.frame.n_logs} logs")
        if res.manipulation_checks:
            t = Table("manipulation check (source items)", "model", "measure", "passed", "summary")
            for m in res.manipulation_checks:
                t.add_row(", ".join(m.effects), m.model_label, m.measure, str(m.passed), m.summary[:120])
            con.print(t)
        if res.measure_validity:
            t = Table("measure", "model", "agreement with forced choice", "n", "passed")
            for v in res.measure_validity:
                t.add_row(v.measure, v.model_label, "NA" if v.agreement is None else f"{v.agreement:.2f}", str(v.n_items), str(v.passed))
            con.print(t)
        t = Table("hypothesis", "kind", "model", "verdict", "reason")
        for d in res.decisions:
            t.add_row(d.hypothesis_id, d.kind, d.model_label or "", d.verdict, d.reason[:160])
        con.print(t)
        for w in res.warnings:
            con.print(f"[yellow]warning:[/yellow] {w}")
        con.print(f"wrote {Path(res.frame.path).parent} under runs/{res.study} in {time.perf_counter() - t0:.1f}s")
