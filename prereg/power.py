"""Power by simulation from the preregistered design.

For each hypothesis we simulate the study's own design (its arms, seeds, item count) with
the declared variance components (prereg `power.noise`, in SESOI units: seed-to-seed shift of
a trained arm, item effect shared by all arms, item x arm interaction, residual), put a true
contrast of size `multiple x SESOI` in the hypothesised direction, and run the analysis' own
frequentist contrast on every simulated data set (`analysis.frequentist.contrast_arrays`, the
function `leaklab analyze` calls, with the prereg's `frequentist.ci` method), read by the
decision module (`analysis.decide.frequentist_reading`).

Multiplicity is counted as the analysis counts it: the family is every (hypothesis, model) pair
in the hypothesis' preregistered family. For Holm / Bonferroni families with m > 1 members the
CI is read at alpha / m (Holm's strictest step; exact for Bonferroni).

Scope, said with every result: this is the FREQUENTIST HALF of the two-part rule only. The
two-part rule's power ("supported" needs the Bayesian half too) is at most `p_upper`, the same
reading at the unadjusted alpha (an upper bound whatever the correction); `p_effect` at alpha/m
is the frequentist half at Holm's strictest step. `leaklab prereg calibrate` simulates the whole
rule (Holm over the family, both halves, the Bayesian half on fewer replicates).

Why a curve and not one number: at a true effect exactly equal to the SESOI a minimum-effect
test succeeds only about alpha/2 of the time by construction, so we report the probability of
each outcome at several multiples of the SESOI, and for `tost` at a true effect of 0.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from prereg.schema import Hypothesis, Prereg, PreregError


@dataclass
class PowerPoint:
    multiple: float  # true effect as a multiple of the SESOI (0 = no effect)
    effect: float  # true effect in the SESOI's unit
    p_effect: float  # P(rule declares an effect in the hypothesised direction)
    p_nonzero: float  # P(CI excludes 0 in the hypothesised direction)
    p_equivalent: float  # P(CI inside [-SESOI, +SESOI])
    mcse: float  # Monte Carlo SE of p_effect
    p_upper: float | None = None  # P(effect reading) at the unadjusted alpha: bounds the two-part rule's power


@dataclass
class HypothesisPower:
    hypothesis: str
    test: str
    alpha: float
    n_items: int
    n_seeds: int
    n_sims: int
    curve: list[PowerPoint]
    scope: str = ""
    ci: str = ""

    def power_at(self, multiple: float) -> float:
        for p in self.curve:
            if abs(p.multiple - multiple) < 1e-12:
                return p.p_effect if self.test != "tost" else p.p_equivalent
        raise KeyError(multiple)


def count_items(study, measure: str, item_set: str) -> int | None:
    """Independent items of the item file the (measure, item_set) eval entry reads: distinct
    `base_item` values when the file has them (paraphrases of one scenario are not independent,
    so the cluster is the unit: conservative), else non-empty lines. An entry's
    `limit_base_items` caps the count: the study evaluates only that subset."""
    for e in study.spec.eval:
        if e.measure_task == measure and e.item_set == item_set:
            rel = e.args.get("items")
            if isinstance(rel, str):
                path = study.resolve(rel)
                if path.is_file():
                    rows = [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
                    bases = {r.get("base_item") for r in rows if isinstance(r, dict)}
                    n = len(bases) if rows and None not in bases else len(rows)
                    limit = e.args.get("limit_base_items")
                    return min(n, int(limit)) if limit else n
    return None


@dataclass
class NoiseEstimate:
    seed_sd: float
    item_sd: float
    residual_sd: float
    n_seeds: int
    n_items: int


def estimate_noise(frame, arm: str, measure: str, item_set: str, where: str = "pilot") -> NoiseEstimate:
    """Variance components of one arm from a pilot tidy frame (analysis.frame columns: arm,
    seed, base_item or item_id, measure, item_set, value), by the method of moments for a
    balanced two-way (seed x item) layout without replication: rows are first averaged to one
    value per seed x item (option orders, paraphrases, epochs), items missing in any seed are
    dropped. MS_seed = I var(seed means), MS_item = S var(item means), MS_res from the additive
    residuals; var_seed = (MS_seed - MS_res) / I and var_item = (MS_item - MS_res) / S, floored
    at 0. Needs >= 2 seeds and >= 2 items."""
    import pandas as pd

    need = {"arm", "seed", "measure", "item_set", "value"}
    missing = need - set(frame.columns)
    if missing:
        raise PreregError(f"{where}: pilot frame lacks columns {sorted(missing)}")
    item_col = "base_item" if "base_item" in frame.columns and frame["base_item"].notna().any() else "item_id"
    if item_col not in frame.columns:
        raise PreregError(f"{where}: pilot frame has neither base_item nor item_id")
    sub = frame[(frame["arm"] == arm) & (frame["measure"] == measure) & (frame["item_set"] == item_set)]
    sub = sub[pd.to_numeric(sub["value"], errors="coerce").notna()]
    if sub.empty:
        raise PreregError(f"{where}: no pilot rows for arm {arm!r}, measure {measure!r}, item set {item_set!r}")
    M = sub.pivot_table(index="seed", columns=item_col, values="value", aggfunc="mean").dropna(axis=1)
    S, I = M.shape
    if S < 2 or I < 2:
        raise PreregError(f"{where}: pilot for arm {arm!r}/{measure}/{item_set} has {S} seed(s) x {I} complete "
                          "item(s); need >= 2 of each to separate seed, item and residual variance")
    Y = M.to_numpy(dtype=float)
    grand = Y.mean()
    rows, cols = Y.mean(axis=1), Y.mean(axis=0)
    resid = Y - rows[:, None] - cols[None, :] + grand
    ms_res = float((resid ** 2).sum() / ((S - 1) * (I - 1)))
    ms_seed = float(I * rows.var(ddof=1))
    ms_item = float(S * cols.var(ddof=1))
    return NoiseEstimate(
        seed_sd=float(np.sqrt(max(0.0, (ms_seed - ms_res) / I))),
        item_sd=float(np.sqrt(max(0.0, (ms_item - ms_res) / S))),
        residual_sd=float(np.sqrt(ms_res)),
        n_seeds=S, n_items=I,
    )


def _read_frame(path: Path):
    import pandas as pd

    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix in (".csv", ".tsv"):
        return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    raise PreregError(f"{path}: pilot frame must be .parquet, .csv or .tsv")


def _arm_means(h: Hypothesis, ref: str, effect: float) -> dict[str, float]:
    c = h.contrast
    sign = -1.0 if h.direction == "negative" else 1.0
    if c.kind == "combined_directional":
        # ((pro - ref) - (anti - ref)) / 2 = effect with pro at +effect and anti at -effect
        return {c.plus: sign * effect, c.minus: -sign * effect, ref: 0.0}
    return {c.plus: sign * effect, c.minus: 0.0}


def family_size(prereg: Prereg, study, h: Hypothesis) -> int:
    """Members of h's multiplicity family as the analysis counts them: (hypothesis, model) pairs."""
    n_models = len(study.spec.models)
    return sum(1 if x.model else n_models for x in prereg.hypotheses if x.family == h.family)


def design_for(study, h: Hypothesis) -> tuple[str, list[str], dict[str, bool], bool]:
    """(reference group of d, groups, which groups are trained (have seeds), paired runs)."""
    c = h.contrast
    if c.over == "arms":
        ref = study.spec.reference_arm  # d over the reference arm's SD, as the analysis divides
        groups = sorted({c.plus, c.minus, ref})
        trained = {g: (g != "base" and study.spec.arms.get(g) is not None and study.spec.arms[g].corpus is not None)
                   for g in groups}
        return ref, groups, trained, False
    arm = study.spec.arms.get(h.arm)
    return c.minus, [c.plus, c.minus], {g: bool(arm is not None and arm.corpus is not None) for g in (c.plus, c.minus)}, True


def noise_for(prereg: Prereg, study, h: Hypothesis):
    """The declared noise, or the one estimated from the pilot frame (power.pilot)."""
    plan = prereg.power
    noise = plan.noise
    if noise.source == "pilot":
        if not plan.pilot:
            raise PreregError(f"{study.prereg_yaml}: power.noise.source is 'pilot' but power.pilot is not set")
        pilot_path = study.resolve(plan.pilot)
        if not pilot_path.is_file():
            raise PreregError(f"{study.prereg_yaml}: power.pilot {plan.pilot!r} does not exist ({pilot_path})")
        noise_arm = h.arm if h.contrast.over == "conditions" else study.spec.reference_arm
        est = estimate_noise(_read_frame(pilot_path), noise_arm, h.measure, h.item_set, where=str(pilot_path))
        noise = type(noise)(seed_sd=est.seed_sd, item_sd=est.item_sd, residual_sd=est.residual_sd,
                            item_arm_sd=noise.item_arm_sd, source="pilot")
    total = float(np.sqrt(noise.seed_sd ** 2 + noise.item_sd ** 2 + noise.item_arm_sd ** 2 + noise.residual_sd ** 2))
    if total <= 0:
        raise PreregError(f"{study.prereg_yaml}: power.noise: all variance components are 0")
    return noise, total


def n_items_for(prereg: Prereg, study, h: Hypothesis) -> int:
    n_items = prereg.power.n_items.get(h.item_set) or count_items(study, h.measure, h.item_set)
    if not n_items:
        raise PreregError(f"{study.prereg_yaml}: power: cannot count the items of {h.measure}/{h.item_set}; "
                          f"declare power.n_items.{h.item_set}")
    if n_items < 2:
        raise PreregError(f"{study.prereg_yaml}: power: item set {h.item_set!r} has {n_items} item(s); need >= 2")
    return n_items


def simulate_tables(rng, groups: list[str], mu: dict[str, float], trained: dict[str, bool], paired: bool,
                    seeds: int, n_items: int, noise) -> list[np.ndarray]:
    """One simulated data set: per group a (runs, items) table of cell values. Items are shared by
    the groups (item effect) with an item x group interaction; trained groups have `seeds` runs
    with their own seed shift (paired: conditions of one adapter share the runs and the shift)."""
    item = rng.normal(0, noise.item_sd, size=n_items)
    shared = rng.normal(0, noise.seed_sd, size=seeds)
    out = []
    for g in groups:
        S = seeds if trained[g] else 1
        u = shared[:S] if paired else rng.normal(0, noise.seed_sd if trained[g] else 0.0, size=S)
        ixa = rng.normal(0, noise.item_arm_sd, size=n_items) if noise.item_arm_sd else 0.0
        out.append(mu.get(g, 0.0) + u[:, None] + (item + ixa)[None, :] + rng.normal(0, noise.residual_sd, size=(S, n_items)))
    return out


def simulate_hypothesis(prereg: Prereg, study, h: Hypothesis, multiples=None,
                        n_sims: int | None = None) -> HypothesisPower:
    plan = prereg.power
    if plan is None:
        raise PreregError(f"{study.prereg_yaml}: no 'power' section (declare noise: seed_sd, item_sd, residual_sd)")
    multiples = list(multiples if multiples is not None else plan.effect_multiples)
    fq = prereg.frequentist
    n_sims = n_sims or plan.n_sims
    n_items = n_items_for(prereg, study, h)
    seeds = len(study.spec.seeds)
    ref, groups, trained, paired = design_for(study, h)
    noise, total_sd = noise_for(prereg, study, h)
    # a SESOI in d is relative to the reference SD; a raw SESOI is in the noise's own unit
    scale = total_sd if h.sesoi.unit == "d" else 1.0
    m = family_size(prereg, study, h)
    method = prereg.multiplicity.families.get(h.family, "none")
    alpha = fq.alpha / m if (method in ("holm", "bonferroni") and m > 1) else fq.alpha
    sesoi = h.sesoi.value
    rng = np.random.default_rng([plan.seed, _stable_int(h.id)])
    from analysis import decide as D
    from analysis import frequentist as F

    rule = replace(D.rule_for(prereg, h), test="tost" if fq.test == "tost" else "minimum_effect", alpha=alpha)
    nil_rule = replace(rule, test="nil")
    upper_rule = replace(rule, alpha=fq.alpha)
    c = h.contrast
    weights, _ = F.contrast_weights(c.kind, c.plus, c.minus, ref)
    w = np.array([weights.get(g, 0.0) for g in groups])
    kw = dict(method=fq.ci, paired_runs=paired, n_boot=plan.n_resamples, sesoi=sesoi, sesoi_unit=h.sesoi.unit,
              direction=h.direction, min_sd=fq.min_reference_sd)
    curve = []
    for mult in multiples:
        hits = nonzero = equiv = upper = 0
        mu = _arm_means(h, ref, mult * sesoi * scale)
        for k in range(n_sims):
            a = F.arrays_from_tables(groups, simulate_tables(rng, groups, mu, trained, paired, seeds, n_items, noise))
            levels = [(rule, alpha)] + ([(upper_rule, fq.alpha)] if alpha != fq.alpha else [])
            for rl, al in levels:
                try:
                    r = F.contrast_arrays(a, w, groups.index(ref), alpha=al, seed=k, **kw)
                except F.DegenerateSD:
                    continue
                lo, hi = r.ci_d if h.sesoi.unit == "d" else r.ci
                if lo is None:
                    continue
                reading = D.frequentist_reading(rl, float(lo), float(hi))
                nz = D.frequentist_reading(replace(nil_rule, alpha=al), float(lo), float(hi)) == "effect"
                eff = nz if fq.test == "nil" else reading == "effect"
                if rl is upper_rule:
                    upper += bool(eff)
                    continue
                hits += bool(eff)
                nonzero += bool(nz)
                equiv += reading == "equivalent"
                if alpha == fq.alpha:
                    upper += bool(eff)
        p = hits / n_sims
        curve.append(PowerPoint(mult, mult * sesoi, p, nonzero / n_sims, equiv / n_sims, float(np.sqrt(p * (1 - p) / n_sims)),
                                upper / n_sims))
    scope = (f"frequentist half only ({fq.ci} CI at alpha/{m} = {alpha:.3g}, m = {m} (hypothesis, model) tests in family "
             f"'{h.family}' ({method})); p_upper (unadjusted alpha) bounds the two-part rule's power from above"
             if m > 1 and method != "none" else
             "frequentist half only: an upper bound on the two-part rule's power (the Bayesian half must agree)")
    return HypothesisPower(h.id, fq.test, alpha, n_items, seeds, n_sims, curve, scope=scope, ci=fq.ci)


def _stable_int(s: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(s.encode("utf-8")).digest()[:4], "big")


def run_power(study_dir: str | Path, hypotheses: list[str] | None = None, n_sims: int | None = None,
              multiples=None) -> list[HypothesisPower]:
    from leaklab.study import load_study
    from prereg.schema import load_prereg

    study = load_study(study_dir)
    pr = load_prereg(study.folder, study=study)
    hs = [h for h in pr.hypotheses if hypotheses is None or h.id in hypotheses]
    if hypotheses:
        missing = set(hypotheses) - {h.id for h in hs}
        if missing:
            raise PreregError(f"{study.prereg_yaml}: no hypotheses {sorted(missing)}")
    return [simulate_hypothesis(pr, study, h, multiples, n_sims) for h in hs]


def results_block(results: list[HypothesisPower]) -> dict:
    """The `power.results` mapping written into prereg.yaml (plain data, PowerResult schema)."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = {}
    for r in results:
        out[r.hypothesis] = {
            "test": r.test, "alpha": round(r.alpha, 6), "n_items": r.n_items, "n_seeds": r.n_seeds,
            "n_sims": r.n_sims, "computed_at": now, "scope": r.scope, "ci": r.ci,
            "curve": [{"multiple": p.multiple, "p_effect": round(p.p_effect, 4), "p_nonzero": round(p.p_nonzero, 4),
                       "p_equivalent": round(p.p_equivalent, 4), "mcse": round(p.mcse, 4),
                       **({"p_upper": round(p.p_upper, 4)} if p.p_upper is not None else {})} for p in r.curve],
        }
    return out


def write_results(study_dir: str | Path, results: list[HypothesisPower] | None, *, key: str = "results",
                  block: dict | None = None) -> Path:
    """Replace `power.<key>` (default `results`; `calibration` for `prereg calibrate`) in prereg.yaml,
    keeping the rest of the file (and its comments) byte-for-byte. Refuses once the study is
    locked (results then go through `amend`)."""
    import yaml

    from leaklab.runstore import atomic_write_text
    from prereg.locking import LOCK_NAME

    folder = Path(study_dir)
    if (folder / LOCK_NAME).exists():
        raise PreregError(f"{folder / LOCK_NAME}: the study is locked; power.{key} is written before locking "
                          f"(to change a locked prereg use `leaklab prereg amend`)")
    path = folder / "prereg.yaml"
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("power:")), None)
    if start is None:
        raise PreregError(f"{path}: no top-level 'power:' section to write {key} into")
    end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace()
                and not lines[i].startswith("#")), len(lines))
    if lines[start].strip() != "power:":
        raise PreregError(f"{path}:{start + 1}: write results into a block-style 'power:' section (not inline)")
    section = lines[start + 1:end]
    # drop an existing `  <key>:` sub-block (its key line and everything indented deeper)
    kept, skipping = [], False
    for ln in section:
        if ln.startswith(f"  {key}:"):
            skipping = True
            continue
        if skipping and (not ln.strip() or ln.startswith("   ")):
            continue
        skipping = False
        kept.append(ln)
    while kept and not kept[-1].strip():
        kept.pop()
    data = results_block(results) if block is None else block
    dumped = yaml.safe_dump({key: json.loads(json.dumps(data))}, sort_keys=True,
                            default_flow_style=None, width=120)
    new_block = kept + ["  " + ln for ln in dumped.rstrip("\n").splitlines()]
    tail = lines[end:]
    text = "\n".join(lines[:start + 1] + new_block + ([""] if tail else []) + tail) + "\n"
    atomic_write_text(path, text)
    from prereg.schema import load_prereg

    load_prereg(folder)  # the written file must still validate
    return path
