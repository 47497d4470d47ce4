"""`leaklab prereg calibrate STUDY`: the operating characteristics of the preregistered analysis,
by simulating the study's own analysis under the noise its prereg declares, before any data exist.

What is simulated (one simulated study per replicate, every hypothesis x model at once):
- data: the study's design (its arms or conditions, seeds, item counts; `prereg power` counts
  items the same way) with the declared variance components (`power.noise`: seed, item,
  item x arm interaction, residual), one model label after another;
- true effects, three scenarios for every hypothesis at once: `zero` (no effect), `sesoi`
  (exactly the SESOI in the hypothesised direction) and `expected` (`power.expected[H]`, in the
  SESOI's unit; 2 x SESOI when not declared, said in the notes). Group means are solved by least
  squares so that every hypothesis on the same data gets its effect; the true value each
  hypothesis is scored against is the one the solved means imply;
- the frequentist half exactly as `leaklab analyze` runs it: `analysis.frequentist.contrast_arrays`
  (what `contrast` calls) with the prereg's CI method, the raw p-value of every reading
  (`analysis.steps.effects.test_pvalues`), each adjusted over its multiplicity family of
  (hypothesis, model) pairs (`analysis.steps.multiplicity`), read by
  `analysis.decide.frequentist_reading`;
- the Bayesian half on the first `n_sims_bayes` replicates of each scenario only (a pymc fit
  per simulated data set), with the prereg's own model, priors, sampler settings and gates
  (`analysis.bayes.fit_model`, `diagnostics`, `summarize_contrast`), read by
  `analysis.decide.bayes_reading`, then the two-part rule `analysis.decide.decide`. Only fits
  a confirmatory hypothesis needs, and only continuous likelihoods (the simulation draws
  continuous scores); gates that need real logs (missing data, measure validity, censored
  margins) and the manipulation-check requirement are not simulated: the verdict reported is
  each hypothesis' own two-part verdict.

Reported per hypothesis and scenario, each with its Monte Carlo SE: coverage of the (1 - alpha)
CI, P(frequentist "effect") (a false claim at `zero` and at `sesoi`, where the nominal one-sided
level is alpha/2 before multiplicity), P(frequentist "equivalent"), and over the Bayesian
replicates P(supported), P(equivalent) and the HDI's coverage.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from prereg.schema import PreregError

SCENARIOS = ("zero", "sesoi", "expected")
CONTINUOUS = ("normal", "normal_by_arm", "student_t")
MIN_SEEDS_BOOTSTRAP = 3
MEASURED_BOOTSTRAP_COVERAGE_2_SEEDS = "85-87%"  # benchmarks/calibration.py, 40 items (README "Statistics")


def small_seed_problems(prereg, study) -> list[str]:
    """Refusals of `prereg check`: a confirmatory hypothesis read from the percentile bootstrap with
    fewer than 3 seeds per arm, unless `frequentist.accepted_coverage` states the coverage the
    authors measured and accept (the bootstrap covered 85-87% at nominal 95% with 2 seeds)."""
    fq = prereg.frequentist
    seeds = len(study.spec.seeds)
    if fq.ci != "hierarchical_bootstrap" or seeds >= MIN_SEEDS_BOOTSTRAP or fq.accepted_coverage is not None:
        return []
    hs = [h.id for h in prereg.hypotheses if h.confirmatory]
    if not hs:
        return []
    return [f"{study.prereg_yaml}: key 'frequentist.ci': confirmatory hypotheses {', '.join(hs)} are read from the "
            f"hierarchical_bootstrap CI with {seeds} seed(s) per arm, where its 95% CI covered only "
            f"{MEASURED_BOOTSTRAP_COVERAGE_2_SEEDS} (benchmarks/calibration.py); use ci: cluster_se (covers 93-97%), "
            f"add seeds, or state the coverage you measured and accept as frequentist.accepted_coverage "
            f"(the report prints it)"]


@dataclass
class _Key:
    """One simulated data table: the groups one model x measure x item set x condition (or arm) compares."""

    model: str
    measure: str
    item_set: str
    over: str
    where: str
    groups: list[str]
    ref: str  # reference group of the key (the study's reference arm, or the minus condition)
    trained: dict[str, bool]
    paired: bool
    n_items: int
    noise: object
    total_sd: float
    hyps: list = field(default_factory=list)


def _keys(prereg, study) -> tuple[list[tuple], dict[tuple, _Key]]:
    from prereg.power import design_for, n_items_for, noise_for

    spec = study.spec
    labels = [m.run_label for m in spec.models]
    hyp_models = [(h, model) for h in prereg.hypotheses for model in ([h.model] if h.model else labels)]
    keys: dict[tuple, _Key] = {}
    for h, model in hyp_models:
        c = h.contrast
        k = (model, h.measure, h.item_set, c.over, h.condition if c.over == "arms" else h.arm)
        ref, groups, trained, paired = design_for(study, h)
        if k not in keys:
            noise, total = noise_for(prereg, study, h)
            key_ref = spec.reference_arm if c.over == "arms" else c.minus
            keys[k] = _Key(model, h.measure, h.item_set, c.over, k[4], [], key_ref, {}, paired,
                           n_items_for(prereg, study, h), noise, total)
        kk = keys[k]
        for g in groups:
            if g not in kk.groups:
                kk.groups.append(g)
                kk.trained[g] = trained[g]
        kk.hyps.append(h)
    for kk in keys.values():
        if kk.ref not in kk.groups:
            kk.groups.append(kk.ref)
            kk.trained[kk.ref] = kk.over == "arms" and study.spec.arms.get(kk.ref) is not None \
                and study.spec.arms[kk.ref].corpus is not None
    return hyp_models, keys


def _weights(h, ref_arm: str):
    from analysis import frequentist as F

    c = h.contrast
    ref = ref_arm if c.over == "arms" else c.minus
    weights, name = F.contrast_weights(c.kind, c.plus, c.minus, ref)
    return weights, name, ref


def _means_for(kk: _Key, targets: dict[str, float], ref_arm: str) -> dict[str, float]:
    """Group means (natural scale) that give every hypothesis of the key its target contrast
    (least squares, minimum norm; the key's reference group at 0)."""
    free = [g for g in kk.groups if g != kk.ref]
    if not free:
        return dict.fromkeys(kk.groups, 0.0)
    A, b = [], []
    for h in kk.hyps:
        w, _, _ = _weights(h, ref_arm)
        A.append([w.get(g, 0.0) for g in free])
        b.append(targets[h.id])
    x = np.linalg.lstsq(np.array(A, dtype=float), np.array(b, dtype=float), rcond=None)[0]
    return {kk.ref: 0.0, **{g: float(v) for g, v in zip(free, x)}}


def _rows(kk: _Key, tables: dict[str, np.ndarray], condition_of_arms: str | None):
    import pandas as pd

    recs = []
    for g, t in tables.items():
        for s in range(t.shape[0]):
            seed = s if kk.trained[g] else None
            for k in range(t.shape[1]):
                arm, cond = (g, condition_of_arms) if kk.over == "arms" else (kk.where, g)
                recs.append((kk.model, arm, seed, cond, f"i{k:03d}", f"i{k:03d}", "", float(t[s, k])))
    df = pd.DataFrame(recs, columns=["model_label", "arm", "seed", "condition", "item_id", "base_item", "option_order", "value"])
    df["seed"] = df["seed"].astype("Int64")
    df["measure"], df["item_set"], df["checkpoint"], df["persona"] = kk.measure, kk.item_set, "final", ""
    return df


def _mc(k: float, n: int) -> float:
    return float(math.sqrt(max(k / n * (1 - k / n), 0.0) / n)) if n else float("nan")


def calibrate(study_dir: str | Path, *, n_sims: int | None = None, n_sims_bayes: int = 5, bayes: bool = True,
              n_boot: int | None = None, draws: int | None = None, tune: int | None = None,
              workers: int | None = None, log: Callable[[str], None] = lambda s: None) -> dict:
    """Simulate the preregistered analysis of `study_dir`; return the `power.calibration` block.
    `workers`: processes for the Bayesian half's fits (default: one per CPU; 1 = in this process);
    each compiles a model shape once and reuses it (analysis.bayes), and the numbers do not
    depend on how many there are (each fit has its data and seed before it is handed out)."""
    from analysis import decide as D
    from analysis import frequentist as F
    from analysis.steps.effects import test_pvalues
    from analysis.steps.multiplicity import TESTS
    from leaklab.study import load_study
    from prereg.power import _stable_int, simulate_tables
    from prereg.schema import load_prereg

    t0 = time.perf_counter()
    study = load_study(study_dir)
    pre = load_prereg(study.folder, study=study)
    if pre.power is None:
        raise PreregError(f"{study.prereg_yaml}: no 'power' section: declare power.noise (seed_sd, item_sd, residual_sd) "
                          "to calibrate the analysis")
    plan, fq, bp = pre.power, pre.frequentist, pre.bayesian
    n_sims = n_sims or plan.n_sims
    B_boot = n_boot or (plan.n_resamples if fq.ci == "hierarchical_bootstrap" else fq.n_resamples)
    seeds = len(study.spec.seeds)
    ref_arm = study.spec.reference_arm
    hyp_models, keys = _keys(pre, study)
    key_of = {(h.id, m): k for k, kk in keys.items() for h in kk.hyps for m in [kk.model]}
    notes = []
    expected = {h.id: float(plan.expected.get(h.id, 2 * h.sesoi.value)) for h in pre.hypotheses}
    undeclared = [h.id for h in pre.hypotheses if h.id not in plan.expected]
    if undeclared:
        notes.append(f"no power.expected for {', '.join(undeclared)}: their expected effect is taken as 2 x SESOI")
    if B_boot != fq.n_resamples and fq.ci == "hierarchical_bootstrap":
        notes.append(f"bootstrap resamples {B_boot} per simulated study (power.n_resamples or --n-boot) instead of the "
                     f"preregistered {fq.n_resamples}: the CI bounds carry a little more Monte Carlo noise")
    bayes_keys = set()
    if bayes and n_sims_bayes > 0:
        for k, kk in keys.items():
            lik = bp.likelihood.get(kk.measure)
            if not any(h.confirmatory for h in kk.hyps):
                continue
            if lik not in CONTINUOUS:
                notes.append(f"{kk.measure}: likelihood {lik} is not simulated (the simulation draws continuous scores)")
                continue
            bayes_keys.add(k)
        if draws or tune:
            notes.append(f"Bayesian sampler settings overridden (draws {draws}, tune {tune}): not the preregistered plan")
    rules = {h.id: D.rule_for(pre, h) for h in pre.hypotheses}
    fam_ids = {}
    for (h, m) in hyp_models:
        fam_ids.setdefault(h.family, []).append((h.id, m))

    counts = {(h.id, sc): dict.fromkeys(("n", "cover", "effect", "equiv", "opp", "nb", "supported", "bequiv",
                                         "beffect", "hdi_cover", "unusable"), 0)
              for h in pre.hypotheses for sc in SCENARIOS}
    true_d = {}
    jobs: list[dict] = []  # the Bayesian half's fits, run after the frequentist half (in worker processes)
    for sc in SCENARIOS:
        rng = np.random.default_rng([plan.seed, _stable_int("calibrate:" + sc)])
        means = {}
        for k, kk in keys.items():
            targets = {}
            for h in kk.hyps:
                size = {"zero": 0.0, "sesoi": h.sesoi.value, "expected": expected[h.id]}[sc]
                sign = -1.0 if h.direction == "negative" else 1.0
                targets[h.id] = sign * size * (kk.total_sd if h.sesoi.unit == "d" else 1.0)
            means[k] = _means_for(kk, targets, ref_arm)
            for h in kk.hyps:
                w, _, _ = _weights(h, ref_arm)
                nat = sum(w.get(g, 0.0) * means[k].get(g, 0.0) for g in kk.groups)
                true_d[(h.id, sc)] = (nat / kk.total_sd if h.sesoi.unit == "d" else nat, nat)
        log(f"scenario {sc}: {n_sims} simulated studies" + (f", {n_sims_bayes} with the Bayesian half" if bayes_keys else ""))
        for rep in range(n_sims):
            tables = {k: dict(zip(kk.groups, simulate_tables(rng, kk.groups, means[k], kk.trained, kk.paired, seeds,
                                                             kk.n_items, kk.noise)))
                      for k, kk in keys.items()}
            res, raw = {}, {}
            for h, m in hyp_models:
                kk_key = key_of[(h.id, m)]
                weights, _, ref = _weights(h, ref_arm)
                groups = list(dict.fromkeys([*weights, ref]))  # the order analysis.frequentist.contrast uses
                a = F.arrays_from_tables(groups, [tables[kk_key][g] for g in groups])
                try:
                    r = F.contrast_arrays(a, np.array([weights.get(g, 0.0) for g in groups]), groups.index(ref),
                                          method=fq.ci, paired_runs=keys[kk_key].paired, n_boot=B_boot, seed=fq.seed + rep,
                                          alpha=fq.alpha, sesoi=h.sesoi.value, sesoi_unit=h.sesoi.unit,
                                          direction=h.direction, min_sd=fq.min_reference_sd)
                except F.DegenerateSD:
                    r = None
                res[(h.id, m)] = r
                raw[(h.id, m)] = test_pvalues(r, h.sesoi.value, h.sesoi.unit, h.direction) if r is not None else {}
            adj = {}
            for fam, ids in fam_ids.items():
                method = pre.multiplicity.families.get(fam, "none")
                by = {t: F.adjust([raw[i].get(t) for i in ids], method) for t in TESTS}
                for j, i in enumerate(ids):
                    adj[i] = {t: by[t][j] for t in TESTS}
            freq = {}
            for h, m in hyp_models:
                cnt = counts[(h.id, sc)]
                cnt["n"] += 1
                r = res[(h.id, m)]
                if r is None:
                    freq[(h.id, m)] = "unusable"
                    cnt["unusable"] += 1
                    continue
                lo, hi = r.ci_d if h.sesoi.unit == "d" else r.ci
                p = adj[(h.id, m)]
                fr = D.frequentist_reading(rules[h.id], lo, hi, p_effect=p.get("min_effect"), p_opposite=p.get("opposite"),
                                           p_tost=p.get("tost"), p_nil=p.get("nil"))
                freq[(h.id, m)] = fr
                truth = true_d[(h.id, sc)][0]
                cnt["cover"] += lo is not None and lo <= truth <= hi
                cnt["effect"] += fr == "effect"
                cnt["equiv"] += fr == "equivalent"
                cnt["opp"] += fr == "opposite"
            if rep < n_sims_bayes and bayes_keys:
                jobs += _bayes_jobs(bp, keys, bayes_keys, tables, hyp_models, key_of, res, freq, sc, ref_arm, draws, tune)
    if jobs:
        _run_bayes_jobs(jobs, rules, counts, true_d, workers, log)
    out = {}
    for h in pre.hypotheses:
        pts = []
        for sc in SCENARIOS:
            c = counts[(h.id, sc)]
            n, nb = c["n"], c["nb"]
            pts.append({
                "scenario": sc, "effect": round(true_d[(h.id, sc)][0], 4),
                "coverage": round(c["cover"] / n, 4), "coverage_mcse": round(_mc(c["cover"], n), 4),
                "p_freq_effect": round(c["effect"] / n, 4), "p_freq_effect_mcse": round(_mc(c["effect"], n), 4),
                "p_freq_equivalent": round(c["equiv"] / n, 4),
                "p_supported": round(c["supported"] / nb, 4) if nb else None,
                "p_supported_mcse": round(_mc(c["supported"], nb), 4) if nb else None,
                "p_equivalent": round(c["bequiv"] / nb, 4) if nb else None,
                "hdi_coverage": round(c["hdi_cover"] / nb, 4) if nb else None,
                "n_sims": n, "n_sims_bayes": nb,
            })
        out[h.id] = pts
    noise0 = next(iter(keys.values())).noise if keys else plan.noise
    secs = time.perf_counter() - t0
    notes.insert(0, f"{n_sims} simulated studies per scenario, the Bayesian half on {n_sims_bayes if bayes_keys else 0} "
                    f"of them; multiplicity over each family's (hypothesis, model) pairs as the analysis applies it; "
                    f"verdicts are each hypothesis' own two-part verdict (manipulation-check requirement and data gates "
                    f"not simulated); {secs:.0f} s")
    return {
        "computed_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "ci": fq.ci,
        "alpha": fq.alpha, "n_sims": n_sims, "n_sims_bayes": n_sims_bayes if bayes_keys else 0,
        "noise": {k: float(getattr(noise0, k)) for k in ("seed_sd", "item_sd", "item_arm_sd", "residual_sd")},
        "notes": "; ".join(notes), "hypotheses": out,
    }


def _bayes_jobs(bp, keys, bayes_keys, tables, hyp_models, key_of, res, freq, sc, ref_arm, draws, tune) -> list[dict]:
    """One replicate's Bayesian half as jobs: the analysis' fit per key a confirmatory hypothesis
    needs, with everything its reading needs (the data, the prereg's sampler settings, the
    contrasts and the frequentist readings already made)."""
    from analysis import bayes as B

    out = []
    for k in sorted(bayes_keys):
        kk = keys[k]
        spec_b = B.spec_from_prereg(bp, kk.measure)
        if draws:
            spec_b.draws = draws
        if tune:
            spec_b.tune = tune
        hs = [(h, m) for h, m in hyp_models if key_of[(h.id, m)] == k]
        first = res[(hs[0][0].id, hs[0][1])]
        named = {g for h, _ in hs for g in [*_weights(h, ref_arm)[0], _weights(h, ref_arm)[2]]}
        contrasts = []
        for h, m in hs:
            r = res[(h.id, m)]
            weights, name, _ = _weights(h, ref_arm)
            contrasts.append({"hid": h.id, "model": m, "weights": weights, "name": name, "sesoi": h.sesoi.value,
                              "unit": h.sesoi.unit, "rope": None if bp.rope == "sesoi" else float(bp.rope),
                              "sd_ref": r.sd_ref if r is not None and not r.sd_reason else None,
                              "freq": freq[(h.id, m)]})
        out.append({"scenario": sc, "rows": _rows(kk, tables[k], kk.where if kk.over == "arms" else None),
                    # like the analysis' bayes step: the base model only when a hypothesis names it
                    "groups": sorted(g for g in kk.groups if g != "base" or g in named) if kk.over == "arms"
                    else sorted(kk.groups),
                    "ref": kk.ref, "gcol": "arm" if kk.over == "arms" else "condition", "spec": spec_b,
                    "sd_ref": first.sd_ref if first is not None and not first.sd_reason else None,
                    "contrasts": contrasts})
    return out


def _fit_job(job: dict) -> dict:
    """Fit one job's model (in a worker process or here) and summarise its contrasts."""
    from analysis import bayes as B

    try:
        fit = B.fit_model(job["rows"], job["groups"], job["ref"], job["spec"], group_col=job["gcol"], sd_ref=job["sd_ref"])
    except ValueError as exc:
        return {"error": str(exc)}
    diag = B.diagnostics(fit.idata, job["spec"].gates)
    summ = [B.summarize_contrast(fit, c["name"], c["weights"], c["sesoi"], c["unit"], c["rope"], diag["passed"],
                                 sd_ref=c["sd_ref"]) for c in job["contrasts"]]
    return {"passed": diag["passed"], "summaries": summ, "seconds": fit.fit_seconds}


def _run_bayes_jobs(jobs: list[dict], rules, counts, true_d, workers: int | None, log) -> None:
    """Run the Bayesian fits (in `workers` processes when more than one) and count their readings."""
    import os

    from analysis import decide as D

    n = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    log(f"Bayesian half: {len(jobs)} fits in {n} process(es), each compiling a model shape once")
    if n == 1:
        results = [_fit_job(j) for j in jobs]
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        import analysis.bayes  # noqa: F401 - imported before the fork, so the workers start warm
        import pymc  # noqa: F401

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as ex:
            results = list(ex.map(_fit_job, jobs))
    for job, out in zip(jobs, results):
        if "error" in out:
            log(f"Bayesian fit not possible: {out['error']}")
            continue
        for c, summ in zip(job["contrasts"], out["summaries"]):
            hid, sc = c["hid"], job["scenario"]
            cnt = counts[(hid, sc)]
            cnt["nb"] += 1
            rope = tuple(summ["rope"]) if summ.get("rope") else None
            br = D.bayes_reading(rules[hid], summ["hdi_low"], summ["hdi_high"], rope, out["passed"])
            v = D.decide(rules[hid], c["freq"], br).verdict
            cnt["supported"] += v == "supported"
            cnt["bequiv"] += v == "equivalent"
            cnt["beffect"] += br == "effect"
            nat = true_d[(hid, sc)][1]
            cnt["hdi_cover"] += summ["hdi_low"] <= nat <= summ["hdi_high"]


def runs_path(study_dir: str | Path) -> Path:
    from leaklab.study import load_study

    return load_study(study_dir).runs_dir / "prereg" / "calibration.json"


def write_json(study_dir: str | Path, block: dict) -> Path:
    from leaklab.runstore import atomic_write_text

    path = runs_path(study_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(block, indent=2, sort_keys=True) + "\n")
    return path
