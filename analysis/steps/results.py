"""Step `results`: results.json, everything later stages (the report) may show, after exclusions."""

from __future__ import annotations

from prereg.schema import CAPABILITY_MEASURES


def thresholds(prereg) -> dict:
    """Every locked threshold that can turn a verdict (echoed in the report's methods)."""
    fp, t = prereg.frequentist, prereg.thresholds
    out = {"alpha": fp.alpha, "test": fp.test, "ci": fp.ci, "min_reference_sd": fp.min_reference_sd,
           "min_reference_sd_relative": t.min_reference_sd_relative, "validity_min_agreement": t.validity_min_agreement,
           "max_censored_share": t.max_censored_share, "hdi_prob": prereg.bayesian.hdi_prob, "rope": prereg.bayesian.rope,
           "gates": prereg.bayesian.gates.model_dump(),
           "max_missing_rate": {o.id: o.max_missing_rate for o in prereg.outcomes.all()}}
    cap = prereg.capability
    out["capability"] = {"flag": cap.flag, "gate": cap.gate, **{
        m: {k: v for k, v in b.model_dump().items() if v is not None} for m, b in cap.bounds(CAPABILITY_MEASURES).items()}}
    if prereg.em is not None:
        out["em"] = {"coherence": f"{prereg.em.coherence.operator} {prereg.em.coherence.value:g}",
                     "alignment": f"{prereg.em.alignment.operator} {prereg.em.alignment.value:g}",
                     "incoherent": prereg.em.incoherent, "refusals": prereg.em.refusals}
    return out


def step(state, prereg):
    from datetime import datetime, timezone

    from analysis import decide as D
    from analysis import results as R
    from prereg.locking import leaklab_version

    fp, bp = prereg.frequentist, prereg.bayesian
    thr = thresholds(prereg)
    rule_text = D.describe_rule(fp.test, fp.alpha, fp.ci, bp.hdi_prob, bp.rope, prereg.decision_rule,
                                {k: v for k, v in thr.items() if k in ("min_reference_sd", "min_reference_sd_relative",
                                                                       "validity_min_agreement", "max_censored_share")})
    state.results = R.Results(
        study=state.study.spec.name, stamp="EXPLORATORY" if state.guard.exploratory else "CONFIRMATORY",
        exploratory=state.guard.exploratory, lock_digest=state.guard.digest,
        created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"), leaklab_version=leaklab_version(),
        reference_arm=state.study.spec.reference_arm, arms=sorted(set(state.df["arm"].dropna())), frame=state.frame_info,
        settings={"checkpoint": "final", "n_boot": state.opts.n_boot or fp.n_resamples, "bootstrap_seed": fp.seed,
                  "alpha": fp.alpha, "test": fp.test, "ci": fp.ci, "min_reference_sd": fp.min_reference_sd,
                  "validity_threshold": prereg.thresholds.validity_min_agreement,
                  "run_resampling": "n-1 out of n runs per arm (small-sample correction)", "bayes": state.opts.bayes,
                  "cells": "option orders and epochs averaged within item before SDs and means; a cell with one "
                           "option order unparsed is set missing (not averaged as if balanced)",
                  "thresholds": thr, "decision_rule": rule_text,
                  "steps": [s["step"] for s in state.steps] + ["results"]},
        manipulation_checks=state.manipulation, measure_validity=state.validity, arm_summaries=state.summaries,
        effects=list(state.effects.values()), bayes=list(state.fits.values()), decisions=state.decisions,
        warnings=state.warnings,
        capability=state.capability,
        confidence=D.confidence(state.decisions, effects=state.effects, fits=state.fits, manipulation=state.manipulation,
                                n_seeds=len(state.study.spec.seeds), exploratory=state.guard.exploratory),
    )
    R.dump_results(state.results, state.out_dir / "results.json")
    return state
