"""The report's capability view: results.json `capability` as table rows and one sentence.

Formats only (the numbers, the comparison with the bound and the flags are the analysis',
`analysis/steps/capability.py`): per model x capability measure, the base model's value and
every arm's pooled value beside its per-seed values, the comparison with the base model, the
unscored share and the preregistered bound; the arms flagged and the hypotheses they gated.
"""

from __future__ import annotations

from typing import Any

UNIT = {"perplexity": "perplexity", "refusal": "refusal rate", "fluency": "fluency 0-100"}


def _num(x: Any, nd: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{nd}g}"


def _vs_base(r) -> str:
    if r.ratio is not None:
        return f"x{r.ratio:.2f}"
    if r.drop is not None:
        return f"{0.0 - r.drop + 0.0:+.3g}"  # arm - base (never "-0")
    return "n/a"


def _bound(b: dict | None) -> str:
    if not b:
        return "none (reported only)"
    words = {"max_ratio": "ratio <= {:g}", "max_drop": "drop <= {:g}", "max_missing_increase": "unscored +{:g}"}
    return ", ".join(w.format(b[k]) for k, w in words.items() if b.get(k) is not None)


def capability_context(results) -> dict[str, Any] | None:
    """{"rows", "flagged", "sentence", "gated"} for the templates; None when results.json has no record
    (written before the capability step)."""
    cap = getattr(results, "capability", None)
    if cap is None:
        return None
    rows = []
    for m in cap.measures:
        base = m.base
        rows.append({"model": m.model_label, "measure": m.measure, "item_set": m.item_set, "arm": "base",
                     "value": _num(base.value) if base else "n/a", "seeds": "-", "vs_base": "-",
                     "unscored": f"{base.n_missing}/{base.n}" if base else "n/a", "bound": _bound(m.bound), "flag": "-",
                     "unit": UNIT.get(m.measure, m.measure)})
        by_arm: dict[str, list] = {}
        for r in m.runs:
            by_arm.setdefault(r.arm, []).append(r)
        for arm, runs in by_arm.items():
            pooled = next((r for r in runs if r.pooled), None)
            seeds = [r for r in runs if not r.pooled]
            past = [p for r in runs for p in r.past]
            rows.append({
                "model": m.model_label, "measure": m.measure, "item_set": m.item_set, "arm": arm,
                "value": _num(pooled.value) if pooled else "n/a",
                "seeds": ", ".join(f"{r.seed}: {_num(r.value)}" + (" (past)" if r.past else "") for r in seeds) or "-",
                "vs_base": _vs_base(pooled) if pooled else "n/a",
                "unscored": f"{pooled.n_missing}/{pooled.n}" if pooled else "n/a", "bound": _bound(m.bound),
                "flag": "**PAST THE BOUND**" if past else "within", "unit": UNIT.get(m.measure, m.measure)})
    gated = sorted({h for f in cap.flagged for h in f.gated})
    if not cap.evaluated:
        sentence = "Capability was not evaluated (no tasks/capability.py task in the eval plan): a broken adapter would go unnoticed."
    elif cap.flagged:
        arms = "; ".join(f"arm {f.arm} ({f.model_label}): " + "; ".join(f.reasons[:3]) for f in cap.flagged)
        sentence = (f"Capability fell past the preregistered bound in {arms}. "
                    + (f"Every hypothesis comparing a flagged arm is not interpretable ({', '.join(gated)}): "
                       "a leak claimed from an adapter that broke the model is no leak." if cap.gate and gated else
                       "The prereg sets `gate: false`: flagged and reported, the verdicts stand." if not cap.gate else
                       "No hypothesis compares a flagged arm."))
    else:
        sentence = (f"Every arm kept its capability within the preregistered bound ({', '.join(cap.evaluated)} against "
                    "the base model, flag rule `" + cap.flag_rule + "`).")
    if cap.note:
        sentence += " " + cap.note
    return {"rows": rows, "flagged": cap.flagged, "sentence": sentence, "gated": gated, "evaluated": cap.evaluated}
