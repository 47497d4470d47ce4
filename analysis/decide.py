"""The decision module: the ONLY place that reads an interval or an HDI against the SESOI / ROPE.

Every stage that turns numbers into a verdict calls this module: the analysis (`analysis.steps`),
the Bayesian contrast summaries (`analysis.bayes.summarize_contrast`), the power simulation
(`prereg.power`) and, through results.json, the report (which only formats). A test greps the
other modules of analysis/, reports/ and prereg/ for interval-vs-SESOI comparisons.

API (all take the preregistered rule as a `Rule`, built by `rule_for(prereg, hypothesis)`):

- `frequentist_reading(rule, lo, hi, ...)` -> effect / opposite / equivalent / undecided.
  The (1 - alpha) CI [lo, hi] is on the SESOI's unit (d or raw); the p-values passed in are
  already multiplicity-adjusted over the hypothesis' family:
  * effect: the CI lies beyond the SESOI on the predicted side (either side when two_sided)
    and the adjusted minimum-effect p < alpha. With `test: nil` the CI need only exclude 0
    on the predicted side (adjusted nil p < alpha). This reading exists whatever the test:
    with `test: tost` an effect is still read from the minimum-effect p (not the TOST p).
  * opposite (directional hypotheses only): the same beyond the SESOI on the other side, by
    the adjusted minimum-effect p of the opposite direction (`p_opposite`): multiplicity
    applies to claims against the prediction too.
  * equivalent: TOST, the larger of the two one-sided p-values against -SESOI and +SESOI
    (NOT doubled: the (1 - 2 alpha) CI inside +/- SESOI), adjusted, < alpha. Without a TOST
    p (the power simulation) the CI inside (-SESOI, +SESOI) is read instead.
  * undecided: anything else.
- `hdi_rope_reading(lo, hi, rope)`: Kruschke's HDI+ROPE (effect / equivalent / undecided),
  the verdict a Bayesian contrast carries in results.json.
- `bayes_reading(rule, lo, hi, rope, usable)`: the directional reading of the same HDI
  (effect / opposite / equivalent / undecided / unusable).
- `combine(rule, freq, bayes)`: the two-part rule (both "effect" = supported, both
  "equivalent" = equivalent, both "opposite" = not_supported, else undecided).
- `decide(rule, freq, bayes, unusable=[...], not_interpretable=[...], capability=[...])`: combine,
  then the gates that override it, in this order: a data gate (missing-data breach, refused d,
  failed measure validity, censored logprob margins above the locked maximum, failed
  diagnostics) makes it `unusable`; a required manipulation check that did not pass, or an arm
  of the contrast whose capability fell past the preregistered bound (prereg `capability`),
  makes it `not_interpretable` (never "supported": the contrast is not read as an effect of the
  manipulation).
- `against_prediction(rule, lo, hi, p_nil)`: the CI excludes 0 on the side opposite to the
  prediction with adjusted nil p < alpha; said in plain words even when the verdict is
  undecided ("the data point the other way").
- `describe_rule(...)`: the decision rule in one paragraph for the report's methods section.
- `confidence(...)`: the confidence grade of the confirmatory verdicts (results.json
  `confidence`; the report prints it and grades nothing itself).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

READINGS = ("effect", "opposite", "equivalent", "undecided", "unusable")
VERDICTS = ("supported", "not_supported", "equivalent", "undecided", "unusable", "not_interpretable")
VALIDITY_THRESHOLD = 0.7  # default of prereg `thresholds.validity_min_agreement`


@dataclass(frozen=True)
class Rule:
    """The preregistered rule for one hypothesis: everything a reading compares against."""

    sesoi: float
    unit: str = "d"  # "d" or "raw": the scale lo/hi/rope are on
    direction: str = "two_sided"  # positive / negative / two_sided
    test: str = "minimum_effect"  # minimum_effect / tost / nil
    alpha: float = 0.05
    rope: float | None = None  # Bayesian ROPE half-width in the SESOI's unit; None = +/- SESOI
    hdi_prob: float = 0.95
    two_part: bool = True  # the Bayesian half must agree (leaklab's rule); False = frequentist only

    @property
    def rope_half(self) -> float:
        return abs(self.rope if self.rope is not None else self.sesoi)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rule_for(prereg, h) -> Rule:
    """The Rule of hypothesis `h` under `prereg` (prereg.schema.Prereg)."""
    fp, bp = prereg.frequentist, prereg.bayesian
    return Rule(sesoi=h.sesoi.value, unit=h.sesoi.unit, direction=h.direction, test=fp.test, alpha=fp.alpha,
                rope=None if bp.rope == "sesoi" else float(bp.rope), hdi_prob=bp.hdi_prob)


def _ok(p: float | None, alpha: float) -> bool:
    return p is not None and math.isfinite(p) and p < alpha


def _side_ok(p: float | None, alpha: float) -> bool:
    """A missing p (the power simulation reads the CI alone) does not block the CI's reading."""
    return p is None or (math.isfinite(p) and p < alpha)


def frequentist_reading(rule: Rule, lo: float | None, hi: float | None, *, p_effect: float | None = None,
                        p_opposite: float | None = None, p_tost: float | None = None,
                        p_nil: float | None = None) -> str:
    """Reading of the (1 - alpha) CI [lo, hi] and the adjusted p-values (see module docstring).

    p_effect: adjusted minimum-effect p on the predicted side; p_opposite: the same on the other
    side; p_tost: adjusted TOST p (max of the one-sided p's, not doubled); p_nil: adjusted p
    against 0. Any p left None is not required (the CI alone decides that reading).
    """
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "undecided"
    s, a, d = abs(rule.sesoi), rule.alpha, rule.direction
    if rule.test == "nil":
        if not _side_ok(p_nil, a):
            return "undecided"
        pos, neg = lo > 0, hi < 0
        if (d == "two_sided" and (pos or neg)) or (d == "positive" and pos) or (d == "negative" and neg):
            return "effect"
        if (d == "positive" and neg) or (d == "negative" and pos):
            return "opposite"
        return "undecided"
    beyond_pos, beyond_neg = lo > s, hi < -s
    if ((d == "positive" and beyond_pos) or (d == "negative" and beyond_neg)
            or (d == "two_sided" and (beyond_pos or beyond_neg))) and _side_ok(p_effect, a):
        return "effect"
    if ((d == "positive" and beyond_neg) or (d == "negative" and beyond_pos)) and _side_ok(p_opposite, a):
        return "opposite"
    if p_tost is not None:
        if _ok(p_tost, a):
            return "equivalent"
    elif -s < lo and hi < s:
        return "equivalent"
    return "undecided"


def against_prediction(rule: Rule, lo: float | None, hi: float | None, p_nil: float | None) -> bool:
    """True when the CI excludes 0 on the side opposite to a directional prediction and the
    adjusted p against 0 is below alpha: the data point against the hypothesis (whatever the SESOI)."""
    if lo is None or hi is None or rule.direction == "two_sided" or not _ok(p_nil, rule.alpha):
        return False
    return (rule.direction == "positive" and hi < 0) or (rule.direction == "negative" and lo > 0)


def hdi_rope_reading(lo: float, hi: float, rope: tuple[float, float]) -> str:
    """Kruschke: HDI wholly outside the ROPE = effect; wholly inside = equivalent; else undecided."""
    r0, r1 = rope
    if hi < r0 or lo > r1:
        return "effect"
    if lo >= r0 and hi <= r1:
        return "equivalent"
    return "undecided"


def bayes_reading(rule: Rule, lo: float | None, hi: float | None, rope: tuple[float, float] | None,
                  usable: bool = True) -> str:
    """Directional reading of an HDI [lo, hi] against `rope` (on the same scale): effect on the
    predicted side, opposite on the other, equivalent inside, else undecided; unusable when the
    fit failed its gate. No ROPE (no usable reference SD for a SESOI in d) = undecided."""
    if not usable:
        return "unusable"
    if lo is None or hi is None or rope is None:
        return "undecided"
    v = hdi_rope_reading(lo, hi, rope)
    if v != "effect" or rule.direction == "two_sided":
        return v
    above = lo > rope[1]
    return "effect" if above == (rule.direction == "positive") else "opposite"


def combine(rule: Rule, freq: str, bayes: str | None) -> tuple[str, str]:
    """(verdict, why) from the two readings; `bayes` None means the Bayesian part was not run."""
    if freq == "unusable":
        return "unusable", "the frequentist estimate is unusable"
    if bayes is None:
        if not rule.two_part:
            single = {"effect": "supported", "equivalent": "equivalent", "opposite": "not_supported"}
            return single.get(freq, "undecided"), f"frequentist reading '{freq}' (the rule is frequentist only)"
        return "undecided", f"frequentist reading '{freq}'; the Bayesian part was not run, so the two-part rule cannot decide"
    if bayes == "unusable":
        return "unusable", "the Bayesian fit failed its diagnostics gate"
    if freq == bayes == "effect":
        return "supported", "both frameworks find an effect beyond the SESOI in the predicted direction"
    if freq == bayes == "equivalent":
        return "equivalent", "both frameworks place the effect inside +/- SESOI"
    if freq == bayes == "opposite":
        return "not_supported", "both frameworks find an effect beyond the SESOI against the prediction"
    if freq == bayes:
        return "undecided", f"both readings '{freq}'"
    return "undecided", f"frequentist reading '{freq}' and Bayesian reading '{bayes}' disagree or are undecided"


@dataclass
class Verdict:
    verdict: str
    why: str
    gates: list[str] = field(default_factory=list)  # every gate that fired, unusable ones first


CAPABILITY_GATE = "capability: "  # prefix of a capability gate in Decision.gates (the report tells them apart)


def capability_gate(arm: str, model: str, reasons: list[str]) -> str:
    """The gate string of an arm flagged by the capability bound (analysis.steps.capability)."""
    return f"{CAPABILITY_GATE}arm {arm} ({model}) fell past the preregistered capability bound ({'; '.join(reasons)})"


def decide(rule: Rule, freq: str, bayes: str | None, *, unusable: list[str] | None = None,
           not_interpretable: list[str] | None = None, capability: list[str] | None = None) -> Verdict:
    """The verdict of one hypothesis x model: `combine`, then the overriding gates.

    `unusable`: reasons the numbers cannot be read (data quality, refused d, failed validity,
    censored margins, failed diagnostics); `not_interpretable`: required manipulation checks
    that did not pass (with their verdicts); `capability`: arms the contrast involves whose
    capability fell past the preregistered bound (`capability_gate` strings): a leak claimed
    from an adapter that broke the model is no leak, so the contrast is measured but not read
    as the effect the hypothesis names (`not_interpretable`, like a failed manipulation check;
    `unusable` stays the data gates'). An unusable gate wins over both.
    """
    verdict, why = combine(rule, freq, bayes)
    un, ni, cap = list(unusable or []), list(not_interpretable or []), list(capability or [])
    if verdict == "unusable" and not un:  # a failed diagnostics gate is a data gate too
        un = [why]
    if un:
        return Verdict("unusable", "; ".join(un), un + cap + ni)
    if cap or ni:
        parts = []
        if cap:
            parts.append("an arm it compares lost capability past the preregistered bound ("
                         + "; ".join(c.removeprefix(CAPABILITY_GATE) for c in cap)
                         + "): a leak claimed from an adapter that broke the model is no leak")
        if ni:
            parts.append("a required manipulation check did not pass (" + "; ".join(ni)
                         + "): the contrast is not read as an effect of the manipulation")
        return Verdict("not_interpretable", "; ".join(parts) + f" (the two-part rule alone said {verdict})", cap + ni)
    return Verdict(verdict, why)


def confidence(decisions, *, effects: dict, fits: dict, manipulation: list, n_seeds: int,
               exploratory: bool) -> dict[str, Any]:
    """How far the confirmatory verdicts can be trusted: {"level": low / moderate / high, "reasons"}.

    'low' unless the study is locked, both frameworks agree, every gate passed, the manipulation
    checks passed and no d was refused; 'high' additionally needs >= 3 seeds per arm. Graded here
    (results.json `confidence`), never by the report. `effects` / `fits`: id -> Effect / BayesFit.
    """
    conf = [d for d in decisions if d.kind == "confirmatory"]
    reasons = []
    if exploratory:
        reasons.append("the study was not locked when analysed (EXPLORATORY)")
    if any(d.verdict == "unusable" for d in conf):
        reasons.append("a confirmatory result is unusable (diagnostics or data quality)")
    gates = {id(d): getattr(d, "gates", None) or [""] for d in conf}
    if any(not g.startswith(CAPABILITY_GATE) for d in conf if d.verdict == "not_interpretable" for g in gates[id(d)]):
        reasons.append("a confirmatory result is not interpretable (a required manipulation check did not pass)")
    if any(g.startswith(CAPABILITY_GATE) for d in conf for g in gates[id(d)]):
        reasons.append("a confirmatory result compares an arm whose capability fell past the preregistered bound")
    conf_fits = [[fits[i] for i in d.bayes_ids if i in fits] for d in conf]
    if any(not f.diagnostics.passed for fs in conf_fits for f in fs):
        reasons.append("a Bayesian diagnostics gate failed")
    if any(not fs for fs in conf_fits):
        reasons.append("no Bayesian result for some confirmatory hypothesis")
    disagree = sorted({d.hypothesis_id for d, fs in zip(conf, conf_fits)
                       if fs and all(f.usable for f in fs) and d.frequentist_reading and d.bayes_reading
                       and d.frequentist_reading != d.bayes_reading})
    if disagree:
        reasons.append(f"frequentist and Bayesian readings disagree for {', '.join(disagree)}")
    passed = [m.passed for m in manipulation]
    if any(p is False for p in passed):
        failed = [m for m in manipulation if m.passed is False]
        reasons.append("the manipulation check did not pass" if len(passed) == 1 else
                       f"the manipulation check {', '.join(str(m.hypothesis_id or m.item_set) for m in failed)} did not "
                       f"pass ({len(failed)} of {len(passed)})")
    elif not passed or not all(p is True for p in passed):
        reasons.append("no manipulation check result")
    # a refused d only matters where the verdict is read in d units (a raw-unit SESOI never uses it)
    if any(effects[i].sd_ref_ok is False for d in conf for i in d.effect_ids if i in effects
           and (getattr(d, "numbers", None) or {}).get("sesoi_unit", "d") == "d"):
        reasons.append("a reference SD was degenerate, so d was refused")
    if reasons:
        level = "low"
    elif n_seeds >= 3:
        level = "high"
        reasons.append(f"both frameworks agree, every gate passed, manipulation check passed, {n_seeds} seeds per arm")
    else:
        level = "moderate"
        reasons.append(f"both frameworks agree and every gate passed, but only {n_seeds} seed(s) per arm")
    return {"level": level, "reasons": reasons}


def describe_rule(test: str, alpha: float, ci: str, hdi_prob: float, rope: float | str, decision_rule: str,
                  thresholds: dict[str, Any] | None = None) -> str:
    """The preregistered decision rule in one paragraph (stated once, in the report's methods)."""
    tests = {"minimum_effect": "a minimum-effect test (the CI bound on the predicted side beyond the SESOI)",
             "tost": "an equivalence test (TOST; an effect is still read from the minimum-effect test)",
             "nil": "a nil test (the CI excludes 0)"}
    rope_s = "+/- SESOI" if rope == "sesoi" else f"+/- {rope}"
    out = (f"Frequentist: the {1 - alpha:.0%} {ci.replace('_', ' ')} CI with {tests.get(test, test)}; p-values are "
           f"multiplicity-adjusted within each preregistered family and compared with alpha = {alpha:g}: 'effect' "
           f"needs the adjusted minimum-effect p < alpha, 'opposite' the same against the prediction, 'equivalent' "
           f"the adjusted TOST p (the larger one-sided p) < alpha. Bayesian: the {hdi_prob:.0%} HDI against a ROPE of "
           f"{rope_s}, read only when every diagnostics gate passed. Both 'effect' = supported, both 'equivalent' = "
           f"equivalent, both 'opposite' = not supported, else undecided. A missing-data breach, a refused d, a failed "
           f"measure-validity check or too many censored logprob margins make a hypothesis unusable; a required "
           f"manipulation check that did not pass, or an arm whose capability (perplexity, refusal, fluency against the "
           f"base model) fell past the preregistered bound, makes every hypothesis that depends on it not interpretable.")
    if thresholds:
        out += " Thresholds: " + ", ".join(f"{k} = {v}" for k, v in thresholds.items()) + "."
    return out + f" Prereg: {' '.join(decision_rule.split())}"


def _fmt(x: float | None, nd: int = 2) -> str:
    return "NA" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:+.{nd}f}"


def reason_text(freq_reading: str, bayes_reading_: str | None, why: str, unit: str, est, lo, hi, p_adj,
                b_mean=None, b_lo=None, b_hi=None, sesoi=None, diag_fail: list[str] | None = None) -> str:
    """One hypothesis' own numbers and reason (the rule itself is stated once, in methods)."""
    parts = [f"Frequentist {unit} = {_fmt(est)} [{_fmt(lo)}, {_fmt(hi)}]"
             + (f", adjusted p = {p_adj:.3g}" if p_adj is not None else "") + f" ({freq_reading})"]
    if bayes_reading_ is not None:
        parts.append(f"Bayesian {unit} = {_fmt(b_mean)}, HDI [{_fmt(b_lo)}, {_fmt(b_hi)}] ({bayes_reading_})")
    if sesoi is not None:
        parts.append(f"SESOI {sesoi:g} {unit}")
    if diag_fail:
        parts.append("gate failures: " + "; ".join(diag_fail))
    return f"{why.rstrip('.')}. " + "; ".join(parts)


# ------------------------------------------------------------------------ measure validity


def measure_validity(cells: pd.DataFrame, *, reference_measure: str = "forced_choice", item_set: str = "source",
                     threshold: float = VALIDITY_THRESHOLD) -> list[dict[str, Any]]:
    """Per model x stance measure: the fraction of (run x item) pairs on source items where the
    measure's sign equals the sign of the same run's own forced choice on that item.

    Pairs where either value is missing or exactly 0 (no stance, e.g. a choice split across
    option orders) are left out and not counted; with none left the measure fails as not
    assessable (`reason`), never passes by default. Runs = every arm, seed and checkpoint
    (the base model included): validity is a property of the read-out, not of an arm.
    `threshold` is the prereg's `thresholds.validity_min_agreement`.
    """
    keys = ["model_label", "arm", "seed", "checkpoint", "condition", "persona", "item_id"]
    src = cells[cells["item_set"] == item_set]
    ref = src[src["measure"] == reference_measure]
    out = []
    if ref.empty:
        return out
    ref = ref[keys + ["value"]].rename(columns={"value": "_ref"})
    for (model, measure), sub in src[src["measure"] != reference_measure].groupby(["model_label", "measure"]):
        j = sub[keys + ["value"]].merge(ref, on=keys, how="inner")
        j = j[j["value"].notna() & j["_ref"].notna() & (j["value"] != 0) & (j["_ref"] != 0)]
        n = len(j)
        agree = float((np.sign(j["value"]) == np.sign(j["_ref"])).mean()) if n else None
        # No pair to compare (e.g. a model whose forced choice follows the option position on every
        # item, so both orders cancel) is not a pass: an unvalidated measure is not interpreted.
        reason = None if n else (f"not assessable: the {reference_measure} took no side on any {item_set} item "
                                 "(every item split across option orders, unparsed, or the measure missing)")
        out.append({"model_label": model, "measure": measure, "item_set": item_set, "n_items": n, "agreement": agree,
                    "threshold": threshold, "passed": bool(agree >= threshold) if n else False, "reason": reason,
                    "filters": {"item_set": item_set, "model_label": model, "measure": [measure, reference_measure]}})
    return out
