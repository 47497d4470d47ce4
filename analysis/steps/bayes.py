"""Step `bayes`: one hierarchical model per model x measure x item set x condition (or arm) that
a hypothesis needs, its diagnostics gates, posterior draws (.nc), a PPC figure, and the HDI
summaries of every hypothesis contrast (their HDI+ROPE verdict comes from analysis.decide)."""

from __future__ import annotations

import os
import re


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", s)


def _used_priors(fit) -> set[str]:
    """Names of the priors the fitted model actually uses (free RVs named like a prior)."""
    from analysis.bayes import DEFAULT_PRIORS

    return {v.name for v in fit.model.free_RVs} & set(DEFAULT_PRIORS)


def step(state, prereg):
    if not state.opts.bayes:
        return state
    from analysis import bayes as B
    from analysis import frequentist as F
    from analysis import results as R

    bp, ref_arm, use = prereg.bayesian, state.study.spec.reference_arm, state.use
    needed: dict[tuple, dict] = {}
    for h, model in state.hyp_models:
        if (h.id, model) not in state.hyp_effect or h.measure not in bp.likelihood:
            continue
        c = h.contrast
        key = (model, h.measure, h.item_set, c.over, h.condition if c.over == "arms" else h.arm)
        needed.setdefault(key, {"hyps": [], "groups": set()})
        needed[key]["hyps"].append(h)
        needed[key]["groups"] |= {c.plus, c.minus}
    overrides = {k: v for k, v in {"draws": state.opts.draws, "tune": state.opts.tune, "chains": state.opts.chains}.items()
                 if v is not None}
    if overrides and needed:
        state.warnings.append(f"Bayesian sampler settings overridden {overrides}: not the preregistered plan")
    for key, info in needed.items():
        model, measure, item_set, over, where = key
        spec_b = B.spec_from_prereg(bp, measure)
        for k, v in overrides.items():
            setattr(spec_b, k, v)
        if spec_b.sampler == "nutpie":  # its chains are threads: one per core (calibrate's workers keep 1)
            spec_b.cores = min(spec_b.chains, os.cpu_count() or 1)
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
            gcol, ref = "condition", info["hyps"][0].contrast.minus
            groups = sorted(info["groups"])
            fid = f"{model}/{measure}/{item_set}/arm={where}"
            filt = {"model_label": model, "measure": measure, "item_set": item_set, "arm": where, "condition": groups}
        first = state.effects[state.hyp_effect[(info["hyps"][0].id, model)]]
        state.log(f"fitting {spec_b.likelihood} model {fid} ({len(rows)} rows, {spec_b.chains}x{spec_b.draws} draws)")
        try:
            fit = B.fit_model(rows, groups, ref, spec_b, group_col=gcol, sd_ref=first.sd_ref if first.sd_ref_ok else None)
        except ValueError as exc:
            state.warnings.append(f"Bayesian fit {fid} not possible: {exc}")
            continue
        diag = B.diagnostics(fit.idata, spec_b.gates)
        if not diag["passed"]:
            state.warnings.append(f"Bayesian fit {fid} UNUSABLE: " + "; ".join(diag["failures"]))
        nc = state.out_dir / "posterior" / f"{_safe(fid)}.nc"
        B.save_netcdf(fit, nc)
        fig = state.out_dir / "figures" / f"ppc_{_safe(fid)}.png"
        try:
            B.ppc_figure(fit, fig)
            fig_rel = state.rel(fig)
        except Exception as exc:  # noqa: BLE001 - a figure failure must not hide the numbers
            state.warnings.append(f"PPC figure for {fid} failed: {exc}")
            fig_rel = None
        contrasts = []
        for h in info["hyps"]:
            c = h.contrast
            eff = state.effects[state.hyp_effect[(h.id, model)]]
            weights, name = F.contrast_weights(c.kind, c.plus, c.minus, ref_arm if c.over == "arms" else c.minus)
            rope_over = None if bp.rope == "sesoi" else float(bp.rope)
            summ = B.summarize_contrast(fit, name, weights, h.sesoi.value, h.sesoi.unit, rope_over, diag["passed"],
                                        sd_ref=eff.sd_ref if eff.sd_ref_ok else None)
            if not any(x.name == name for x in contrasts):
                contrasts.append(R.BayesContrast(**summ))
            state.bayes_summary[(h.id, model)] = summ
            state.hyp_fit[(h.id, model)] = fid
        state.fits[fid] = R.BayesFit(
            id=fid, model_label=model, measure=measure, item_set=item_set,
            condition=where if over == "arms" else f"arm={where}", likelihood=B.likelihood_label(spec_b.likelihood),
            formula=fit.formula, priors={k: spec_b.prior(k) for k in B.DEFAULT_PRIORS if k in _used_priors(fit)},
            sampler={"draws": spec_b.draws, "tune": spec_b.tune, "chains": spec_b.chains, "seed": spec_b.seed,
                     "target_accept": spec_b.target_accept, "backend": spec_b.sampler},
            fit_seconds=round(fit.fit_seconds, 2), diagnostics=R.Diagnostics(**diag), usable=diag["passed"],
            contrasts=contrasts, netcdf=state.rel(nc), ppc_figure=fig_rel,
            source=state.source(filt, "score rows (option orders separate); " + "; ".join(fit.notes)),
        )
    return state
