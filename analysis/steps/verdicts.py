"""Step `verdicts`: every hypothesis x model read by analysis.decide, manipulation checks first.

Hypotheses are decided in `Prereg.check_order()` (every required check before the hypotheses
that require it). Per hypothesis x model:
- the frequentist reading (decide.frequentist_reading on the CI and the family-adjusted
  p-value of each reading) and the Bayesian one (decide.bayes_reading on the HDI and ROPE);
- gates that make it `unusable`: refused d (degenerate reference SD), a missing-data breach on
  its model x measure x item set, a failed measure-validity check, a censored share of logprob
  margins above `thresholds.max_censored_share` in a compared group; a failed Bayesian
  diagnostics gate (via the Bayesian reading);
- `not_interpretable` when a required manipulation check (`Prereg.required_checks`) is not
  "supported" for the same model, or when an arm the contrast involves was flagged by the
  capability bound (step `capability`, prereg `capability`; not when it sets `gate: false`);
- `against_prediction`: the CI excludes 0 against a directional prediction (adjusted nil p),
  so the report can say "the data point the other way" in plain words.
"""

from __future__ import annotations

from analysis import decide as D
from analysis.steps.capability import contrast_arms


def _censored_over(state, prereg, h, model, e) -> list[str]:
    limit = prereg.thresholds.max_censored_share
    out = []
    for c in state.censored:
        if (c["model_label"], c["measure"], c["item_set"]) != (model, h.measure, h.item_set):
            continue
        if h.contrast.over == "arms":
            hit = c["arm"] in e.arms and c["condition"] == h.condition
        else:
            hit = c["arm"] == h.arm and c["condition"] in e.arms
        if hit and c["share"] is not None and c["share"] > limit:
            out.append(f"{c['arm']}/{c['condition']}: {c['n_censored']}/{c['n']} margins censored")
    if out:
        return [f"censored logprob margins above the preregistered maximum {limit:g} ({'; '.join(out[:3])})"]
    return []


def _reading_p(fr: str, test: str, adj: dict) -> float | None:
    key = {"effect": "nil" if test == "nil" else "min_effect", "opposite": "nil" if test == "nil" else "opposite",
           "equivalent": "tost"}.get(fr, {"minimum_effect": "min_effect", "tost": "tost", "nil": "nil"}[test])
    return adj.get(key)


def step(state, prereg):
    from analysis import results as R

    fp, bp = prereg.frequentist, prereg.bayesian
    order = {hid: i for i, hid in enumerate(prereg.check_order())}
    pairs = sorted(state.hyp_models, key=lambda hm: order[hm[0].id])
    valid_of = {(v.model_label, v.measure): v for v in state.validity}
    cap = getattr(state, "capability", None)  # step `capability` (absent from hand-built states)
    flag_of = {(f.model_label, f.arm): f for f in (cap.flagged if cap is not None and cap.gate else [])}
    decided: dict[tuple[str, str], R.Decision] = {}
    for h, model in pairs:
        kind = "confirmatory" if h.confirmatory else "exploratory"
        rule = D.rule_for(prereg, h)
        unit = h.sesoi.unit
        requires = prereg.required_checks(h)
        own = (f"{h.id}: {h.direction} effect, SESOI {h.sesoi.value:g} {unit}, family '{h.family}' "
               f"({prereg.multiplicity.families.get(h.family, 'none')})")
        eid = state.hyp_effect.get((h.id, model))
        if eid is None:
            decided[(h.id, model)] = R.Decision(
                hypothesis_id=h.id, model_label=model, kind=kind, statement=h.statement.strip(), rule=own,
                verdict="unusable", reason="no data to estimate this contrast", requires=requires,
                gates=["no data"], exploratory_stamp=state.guard.exploratory)
            continue
        e = state.effects[eid]
        lo, hi = (e.ci_low_d, e.ci_high_d) if unit == "d" else (e.ci_low, e.ci_high)
        est = e.d if unit == "d" else e.estimate
        adj = dict(e.p_adjusted_by_test or {})
        unusable: list[str] = []
        if unit == "d" and not e.sd_ref_ok:
            fr = "unusable"
            unusable.append(e.sd_ref_reason or "degenerate reference SD: d refused")
        else:
            fr = D.frequentist_reading(rule, lo, hi, p_effect=adj.get("min_effect"), p_opposite=adj.get("opposite"),
                                       p_tost=adj.get("tost"), p_nil=adj.get("nil"))
        if (model, h.measure, h.item_set) in state.breaches:
            unusable.append("data quality: missing-data rate above the preregistered maximum ("
                            + "; ".join(state.breaches[(model, h.measure, h.item_set)][:3]) + ")")
        v = valid_of.get((model, h.measure))
        if v is not None and v.passed is False:
            unusable.append(f"measure failed the validity check ({v.reason})" if v.agreement is None else
                            f"measure failed the validity check (sign agreement {v.agreement:.2f} < {v.threshold:g} "
                            "with the forced choice on source items); reported, not interpreted")
        unusable += _censored_over(state, prereg, h, model, e)
        br, summ, fit_rec = None, None, None
        if state.opts.bayes:
            summ = state.bayes_summary.get((h.id, model))
            fit_rec = state.fits.get(state.hyp_fit.get((h.id, model), ""))
            if summ is not None and fit_rec is not None:
                rope = tuple(summ["rope"]) if summ.get("rope") else None
                br = D.bayes_reading(rule, summ["hdi_low"], summ["hdi_high"], rope, fit_rec.usable)
            else:
                br = "unusable"
        failed_checks = []
        for r in requires:
            rh = prereg.hypothesis(r)
            for m in ([rh.model] if rh.model else [model]):
                d = decided.get((r, m))
                if d is None or d.verdict != "supported":
                    failed_checks.append(f"{r} ({m}): {'not run' if d is None else d.verdict}")
        broken = [flag_of[(model, a)] for a in sorted(contrast_arms(h, state.study.spec.reference_arm))
                  if (model, a) in flag_of] if flag_of else []
        verdict = D.decide(rule, fr, br, unusable=unusable, not_interpretable=failed_checks,
                           capability=[D.capability_gate(f.arm, model, f.reasons) for f in broken])
        for f in broken:
            f.gated.append(h.id)
        p_read = _reading_p(fr, fp.test, adj)
        b_unit = (lambda k: summ.get(k + "_d")) if (summ and unit == "d") else (lambda k: summ.get(k) if summ else None)
        reason = D.reason_text(fr, br, verdict.why, unit, est, lo, hi, p_read, b_unit("mean"), b_unit("hdi_low"),
                               b_unit("hdi_high"), h.sesoi.value,
                               fit_rec.diagnostics.failures if fit_rec is not None and not fit_rec.usable else None)
        against = D.against_prediction(rule, lo, hi, adj.get("nil"))
        numbers = {"estimate": est, "ci_low": lo, "ci_high": hi, "p_adjusted": e.p_adjusted, "p_reading": p_read,
                   "p_adjusted_by_test": adj, "p_min_effect": e.p_min_effect, "p_opposite": e.p_opposite,
                   "p_tost": e.p_tost, "p_value": e.p_value, "sesoi": h.sesoi.value, "sesoi_unit": unit, "alpha": fp.alpha}
        if summ:
            numbers.update({"bayes_mean": b_unit("mean"), "bayes_hdi_low": b_unit("hdi_low"), "bayes_hdi_high": b_unit("hdi_high"),
                            "bayes_p_in_rope": summ.get("p_in_rope"), "bayes_verdict": summ["verdict"]})
        decided[(h.id, model)] = R.Decision(
            hypothesis_id=h.id, model_label=model, kind=kind, statement=h.statement.strip(), rule=own,
            verdict=verdict.verdict, reason=reason, effect_ids=[eid], bayes_ids=[fit_rec.id] if fit_rec else [],
            numbers=numbers, exploratory_stamp=state.guard.exploratory, frequentist_reading=fr, bayes_reading=br,
            requires=requires, gates=verdict.gates, against_prediction=against,
            p_against=adj.get("nil") if against else None)
    # the manipulation checks are shown first; targets were read in their light (requires)
    for h, model in state.hyp_models:
        if not h.is_manipulation_check or (h.id, model) not in state.hyp_effect:
            continue
        d = decided[(h.id, model)]
        state.manipulation.append(R.ManipulationCheck(
            model_label=model, measure=h.measure, item_set=h.item_set, effects=[state.hyp_effect[(h.id, model)]],
            passed=d.verdict == "supported", summary=f"{h.id}: {d.verdict}. {d.reason}", hypothesis_id=h.id))
    if not state.manipulation:
        for e in state.effects.values():
            if e.item_set == "source":
                state.manipulation.append(R.ManipulationCheck(
                    model_label=e.model_label, measure=e.measure, item_set=e.item_set, effects=[e.id], passed=None,
                    summary="no preregistered manipulation hypothesis: descriptive source-item effect only"))
    rank = {"confirmatory": 1, "exploratory": 2}
    decisions = [decided[(h.id, m)] for h, m in state.hyp_models]
    decisions.sort(key=lambda d: 0 if prereg.hypothesis(d.hypothesis_id).is_manipulation_check else rank[d.kind])
    state.decisions = decisions
    return state
