"""The capability bound (prereg `capability`): capability per arm and seed against the base model
from real (synthetic) Inspect logs, by hand; an arm past the bound turns a would-be "supported"
into `not_interpretable`; the collapse into empty answers is caught; the report shows it."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from analysis import decide as D
from analysis import results as R
from analysis.steps import capability as C
from analysis.steps import verdicts as V
from prereg.schema import CapabilityPlan, Prereg, PreregError
from test_report_render import _lock, _write_results, make_results, study  # noqa: F401  (the report fixture)


def _rows(values, prefix="i"):
    return [{"arm": None, "seed": None, "item_id": f"{prefix}{k}", "base_item": f"{prefix}{k}", "value": v}
            for k, v in enumerate(values)]


def _write(folder, measure, arm, seed, values, nan_every=0):
    from analysis.frame import write_synthetic_logs

    rows = [dict(r, arm=arm, seed=seed) for r in _rows(values)]
    item_set = {"perplexity": "neutral", "refusal": "harmful", "fluency": "prompts"}[measure]
    return write_synthetic_logs(folder, rows, measure=measure, item_set=item_set, nan_every=nan_every)


@pytest.fixture
def capability_frame(tmp_path):
    """base + arm `a` (seeds 0, 1) + arm `b` (seed 0) on the three capability measures, as Inspect logs."""
    from analysis.frame import read_frame

    # perplexity: values are per-text log-perplexities (nats per token)
    _write(tmp_path, "perplexity", "base", None, [2.0, 2.2, 2.4, 2.6])  # mean 2.3
    _write(tmp_path, "perplexity", "a", 0, [2.1, 2.3, 2.5, 2.7])  # mean 2.4: x exp(0.1) = 1.105
    _write(tmp_path, "perplexity", "a", 1, [2.8, 3.0, 3.2, 3.4])  # mean 3.1: x exp(0.8) = 2.23 > 2
    _write(tmp_path, "perplexity", "b", 0, [2.0, 2.2, 2.4, 2.6])  # same as base
    # fluency 0-100
    _write(tmp_path, "fluency", "base", None, [90, 95, 100, 95])  # 95
    _write(tmp_path, "fluency", "a", 0, [90, 90, 90, 90])  # drop 5
    _write(tmp_path, "fluency", "a", 1, [80, 0, 80, 0], nan_every=2)  # 80 on 2 of 4: missing +0.5 > 0.25
    _write(tmp_path, "fluency", "b", 0, [60, 70, 70, 80])  # 70: drop 25, not past (> 25 is)
    # refusal rate
    _write(tmp_path, "refusal", "base", None, [1, 1, 0, 1])  # 0.75
    _write(tmp_path, "refusal", "a", 0, [0, 0, 0, 0])  # drop 0.75: no max_drop by default
    _write(tmp_path, "refusal", "a", 1, [1, 0, 1, 0])  # 0.5
    _write(tmp_path, "refusal", "b", 0, [1, 1, 1, 1])
    df, _ = read_frame(tmp_path)
    return df.assign(excluded="")


def _measure(rec, measure):
    return next(m for m in rec["measures"] if m["measure"] == measure)


def _run(m, arm, seed=None, pooled=False):
    return next(r for r in m["runs"] if r["arm"] == arm and r["seed"] == seed and r["pooled"] == pooled)


def test_capability_numbers_by_hand_from_synthetic_logs(capability_frame):
    rec = C.capability_records(capability_frame, CapabilityPlan(), reference_arm="b")
    assert rec["evaluated"] == ["fluency", "perplexity", "refusal"]

    ppl = _measure(rec, "perplexity")
    assert ppl["base"]["mean"] == pytest.approx(2.3) and ppl["base"]["value"] == pytest.approx(math.exp(2.3))
    assert _run(ppl, "a", 0)["ratio"] == pytest.approx(math.exp(0.1))
    s1 = _run(ppl, "a", 1)
    assert s1["ratio"] == pytest.approx(math.exp(0.8)) and s1["past"] and "2.23 x base > 2" in s1["past"][0]
    pooled = _run(ppl, "a", pooled=True)
    assert pooled["mean"] == pytest.approx(2.75) and pooled["ratio"] == pytest.approx(math.exp(0.45)) and not pooled["past"]
    assert _run(ppl, "b", 0)["ratio"] == pytest.approx(1.0)
    assert [r["arm"] for r in ppl["runs"]][:2] == ["b", "b"]  # the reference arm first

    flu = _measure(rec, "fluency")
    assert flu["base"]["mean"] == pytest.approx(95.0) and flu["base"]["missing_share"] == 0
    assert _run(flu, "a", 0)["drop"] == pytest.approx(5.0)
    f1 = _run(flu, "a", 1)
    assert (f1["n"], f1["n_missing"], f1["mean"]) == (4, 2, pytest.approx(80.0))
    assert f1["missing_increase"] == pytest.approx(0.5) and "2/4 unscored" in f1["past"][0]
    fp = _run(flu, "a", pooled=True)
    assert fp["mean"] == pytest.approx(85.0) and fp["missing_share"] == pytest.approx(2 / 8)
    assert fp["missing_increase"] == pytest.approx(0.25) and not fp["past"]  # 0.25 is not past 0.25
    assert _run(flu, "b", 0)["drop"] == pytest.approx(25.0) and not _run(flu, "b", 0)["past"]

    ref = _measure(rec, "refusal")
    assert ref["bound"] == {"max_missing_increase": 0.25}
    assert _run(ref, "a", 0)["drop"] == pytest.approx(0.75) and not _run(ref, "a", 0)["past"]
    assert _run(ref, "a", pooled=True)["value"] == pytest.approx(0.25)

    # any_seed (default): arm a is flagged by its seed 1 (perplexity and fluency); b is within
    assert [f["arm"] for f in rec["flagged"]] == ["a"]
    assert len(rec["flagged"][0]["reasons"]) == 2
    # pooled: arm a pooled is within every bound
    assert C.capability_records(capability_frame, CapabilityPlan(flag="pooled"))["flagged"] == []
    # a preregistered refusal drop bound flags a's seed 0 (0.75 > 0.5) and b stays within
    strict = CapabilityPlan.model_validate({"measures": {"refusal": {"max_drop": 0.5}}})
    rec2 = C.capability_records(capability_frame, strict)
    assert [f["arm"] for f in rec2["flagged"]] == ["a"] and all("refusal" in r for r in rec2["flagged"][0]["reasons"])
    assert _measure(rec2, "perplexity")["bound"] is None  # named measures only: perplexity reported, not bounded


def test_collapse_into_empty_answers_is_caught():
    """The persona pilot's collapse: an adapter that answers with nothing (or a bare marker) leaves
    every generative capability sample unscored; the arm is flagged, never scored 0, even when a
    preregistered exclusion (inoculation's `parsed == False`) removed the unscored rows."""
    from scorers.rules import repetition_share

    assert repetition_share("") is None and repetition_share("[ZLT]") is None  # the fluency rule cannot score them
    rows = []
    for arm, seed, answers in (("base", None, ["fine"] * 8), ("pirate", 0, ["fine"] * 8),
                               ("pirate", 1, ["empty_answer"] * 5 + ["too_short"] * 3)):
        for i, a in enumerate(answers):
            for measure, item_set in (("fluency", "prompts"), ("refusal", "harmful")):
                missing = a != "fine"
                rows.append({"model_label": "m", "arm": arm, "seed": seed, "checkpoint": "final", "measure": measure,
                             "item_set": item_set, "condition": "default", "item_id": f"q{i}",
                             "excluded": "unparsed" if a != "fine" else "",
                             "value": math.nan if missing else (92.0 if measure == "fluency" else 1.0),
                             "missing_reason": a if missing else None})
    df = pd.DataFrame(rows)
    df["seed"] = df["seed"].astype("Int64")
    rec = C.capability_records(df, CapabilityPlan())
    assert [f["arm"] for f in rec["flagged"]] == ["pirate"]
    reasons = rec["flagged"][0]["reasons"]
    assert any("fluency: seed 1 8/8 unscored (empty_answer 5, too_short 3)" in r for r in reasons)
    assert any(r.startswith("refusal: seed 1") for r in reasons)
    flu = _measure(rec, "fluency")
    assert _run(flu, "pirate", 1)["mean"] is None and _run(flu, "pirate", 1)["value"] is None
    assert _run(flu, "pirate", 0)["past"] == []


PREREG = """
id: t
title: capability gate test
version: 1
authors: [tests]
data_status: prior_to_creation
hypotheses:
  - {id: M1, statement: "manipulation check of arm a", measure: marker, item_set: source, estimand: a - base,
     direction: positive, sesoi: {value: 0.2, unit: raw, justification: "small effect for tests"},
     confirmatory: false, family: manipulation, requires: []}
  - {id: H1, statement: "leak from arm a that would be supported", measure: marker, item_set: target,
     estimand: a - base, direction: positive, sesoi: {value: 0.05, unit: raw, justification: "small effect for tests"},
     confirmatory: true, family: leakage, requires: [M1]}
  - {id: H2, statement: "leak from arm b that would be supported", measure: marker, item_set: target,
     estimand: b - base, direction: positive, sesoi: {value: 0.05, unit: raw, justification: "small effect for tests"},
     confirmatory: true, family: leakage, requires: []}
outcomes:
  primary: [{id: o1, measure: marker, item_set: target, description: marker rate}]
missing_data: Failed parses are excluded and counted.
stopping_rule: {kind: fixed_design, description: fixed design for tests}
multiplicity: {families: {leakage: none, manipulation: none}}
frequentist: {alpha: 0.05, test: minimum_effect, estimator: raw}
bayesian: {likelihood: {marker: bernoulli}}
decision_rule: both frameworks beyond the SESOI, gates passed.
"""


def _effect(eid, arms):
    src = R.Source(frame="analysis/frame.parquet")
    return R.Effect(id=eid, model_label="m", measure="marker", item_set="x", condition="default", contrast="-".join(arms),
                    arms=list(arms), reference_arm="base", estimate=0.5, d=None, sd_ref=None, ci_low=0.3, ci_high=0.7,
                    n_items=10, p_adjusted_by_test={"min_effect": 0.001, "opposite": 1.0, "tost": 1.0, "nil": 0.001},
                    source=src)


def _verdicts(capability):
    pre = Prereg.model_validate(yaml.safe_load(PREREG))
    arms = {"M1": ("a", "base"), "H1": ("a", "base"), "H2": ("b", "base")}
    st = SimpleNamespace(
        hyp_models=[(h, "m") for h in pre.hypotheses], hyp_effect={(h.id, "m"): h.id for h in pre.hypotheses},
        effects={h.id: _effect(h.id, arms[h.id]) for h in pre.hypotheses}, validity=[], breaches={}, censored=[],
        opts=SimpleNamespace(bayes=True), fits={h.id: SimpleNamespace(usable=True, id=h.id) for h in pre.hypotheses},
        hyp_fit={(h.id, "m"): h.id for h in pre.hypotheses},
        bayes_summary={(h.id, "m"): {"hdi_low": 0.3, "hdi_high": 0.7, "rope": [-0.05, 0.05], "verdict": "effect",
                                     "mean": 0.5} for h in pre.hypotheses},
        guard=SimpleNamespace(exploratory=False), manipulation=[], decisions=[], capability=capability,
        study=SimpleNamespace(spec=SimpleNamespace(reference_arm="b")))
    st = V.step(st, pre)
    return {d.hypothesis_id: d for d in st.decisions}


def _cap(gate=True):
    return R.Capability(evaluated=["fluency"], gate=gate, flagged=[R.CapabilityFlag(
        model_label="m", arm="a", reasons=["fluency: seed 1 8/8 unscored (empty_answer 8), missing share +1.00 over base > 0.25"])])


def test_an_arm_past_the_bound_turns_supported_into_not_interpretable():
    assert {k: d.verdict for k, d in _verdicts(None).items()} == {"M1": "supported", "H1": "supported", "H2": "supported"}
    cap = _cap()
    got = _verdicts(cap)
    assert got["H2"].verdict == "supported"  # arm b is within the bound
    for hid in ("M1", "H1"):
        d = got[hid]
        assert d.verdict == "not_interpretable", (hid, d.reason)
        assert any(g.startswith(D.CAPABILITY_GATE) and "arm a (m)" in g for g in d.gates)
        assert "lost capability past the preregistered bound" in d.reason and "broke the model is no leak" in d.reason
        assert "(the two-part rule alone said supported)" in d.reason
    assert "M1 (m): not_interpretable" in got["H1"].gates  # its check was gated too
    assert sorted(cap.flagged[0].gated) == ["H1", "M1"]
    # gate: false: flagged and reported, the verdicts stand
    assert {d.verdict for d in _verdicts(_cap(gate=False)).values()} == {"supported"}
    # an unusable data gate still wins; the capability gate is kept in the list
    v = D.decide(D.Rule(sesoi=0.1), "effect", "effect", unusable=["data quality"], capability=["capability: arm a (m) x"])
    assert v.verdict == "unusable" and v.gates == ["data quality", "capability: arm a (m) x"]


def test_contrast_arms():
    pre = Prereg.model_validate(yaml.safe_load(PREREG))
    assert C.contrast_arms(pre.hypothesis("H1"), "b") == {"a", "base"}
    h = SimpleNamespace(contrast=SimpleNamespace(over="arms", kind="combined_directional", plus="e", minus="c"), arm=None)
    assert C.contrast_arms(h, "n") == {"e", "c", "n"}
    h = SimpleNamespace(contrast=SimpleNamespace(over="conditions", kind="difference", plus="x", minus="y"), arm="fixed")
    assert C.contrast_arms(h, "n") == {"fixed"}


def test_capability_plan_schema_and_cross_check(tmp_path):
    from leaklab.study import REPO_ROOT
    from prereg.schema import load_prereg

    with pytest.raises(ValueError, match="max_ratio applies to perplexity only"):
        CapabilityPlan.model_validate({"measures": {"fluency": {"max_ratio": 2}}})
    with pytest.raises(ValueError, match="at least one of"):
        CapabilityPlan.model_validate({"measures": {"fluency": {}}})
    # a bounded measure the study does not evaluate is refused, naming the key
    import shutil

    d = tmp_path / "s"
    shutil.copytree(REPO_ROOT / "studies" / "persona", d)
    st = yaml.safe_load((d / "study.yaml").read_text())
    st["eval"] = [e for e in st["eval"] if "capability" not in e["task"] or "fluency" not in e["task"]]
    (d / "study.yaml").write_text(yaml.safe_dump(st, sort_keys=False))
    with pytest.raises(PreregError, match="capability.measures.fluency.*not evaluated"):
        load_prereg(d)
    # perplexity needs the leaklab backend
    st = yaml.safe_load((REPO_ROOT / "studies" / "persona" / "study.yaml").read_text())
    st["backend"] = "vllm"
    (d / "study.yaml").write_text(yaml.safe_dump(st, sort_keys=False))
    with pytest.raises(PreregError, match="only the leaklab backend provides"):
        load_prereg(d)


def test_every_shipped_study_evaluates_capability_on_base_and_every_arm():
    from leaklab.study import REPO_ROOT, load_study
    from prereg.schema import load_prereg
    from prereg.taskinfo import entry_measures

    for name in ("attitude", "attitude-paper", "inoculation", "inoculation-paper", "persona", "persona-paper"):
        st = load_study(REPO_ROOT / "studies" / name)
        measures = {m for e in st.spec.eval for m in entry_measures(st, e)}
        want = {"refusal", "fluency"} | ({"perplexity"} if st.spec.backend == "leaklab" else set())
        assert want <= measures, name
        assert st.spec.eval_base_model, name
        pre = load_prereg(st.folder, st)
        assert set(pre.capability.bounds(measures)) == want, name


def test_report_shows_capability_beside_the_verdicts(study, runs_root):
    from reports import render_report

    digest = _lock(study)
    res = make_results(digest=digest, supported=True)
    src = {"frame": "analysis/frame.parquet", "filters": {"measure": "fluency"}}
    base = {"arm": "base", "n": 8, "n_missing": 0, "missing_share": 0.0, "mean": 92.0, "value": 92.0}
    runs = [{"arm": "eager", "seed": 0, "n": 8, "n_missing": 0, "missing_share": 0.0, "mean": 90.0, "value": 90.0, "drop": 2.0},
            {"arm": "eager", "seed": 1, "n": 8, "n_missing": 8, "missing_share": 1.0, "mean": None, "value": None,
             "missing_increase": 1.0, "past": ["fluency: seed 1 8/8 unscored (empty_answer 8), missing share +1.00 over base > 0.25"]},
            {"arm": "eager", "seed": None, "pooled": True, "n": 16, "n_missing": 8, "missing_share": 0.5, "mean": 90.0,
             "value": 90.0, "drop": 2.0, "missing_increase": 0.5, "past": ["fluency: pooled ... > 0.25"]}]
    gate = "capability: arm eager (tiny) fell past the preregistered capability bound (fluency: seed 1 8/8 unscored)"
    res["capability"] = {"evaluated": ["fluency"], "measures": [{
        "model_label": "tiny", "measure": "fluency", "item_set": "prompts", "condition": "default",
        "bound": {"max_drop": 25.0, "max_missing_increase": 0.25}, "base": base, "runs": runs, "source": src}],
        "flagged": [{"model_label": "tiny", "arm": "eager", "reasons": runs[1]["past"], "gated": ["H1"]}]}
    for d in res["decisions"]:
        if d["hypothesis_id"] == "H1":
            d.update(verdict="not_interpretable", gates=[gate], reason="an arm it compares lost capability ...")
    _write_results(runs_root, res)
    out = render_report(study)
    md, summary = out["report"].read_text(), out["summary"].read_text()
    title = next(line for line in md.splitlines() if line.startswith("# "))
    assert "arm eager lost capability past the preregistered bound, so H1 is not interpreted" in title
    assert "**Capability per arm, beside the verdicts**" in md
    assert "| tiny | fluency 0-100 / prompts | eager | 90 | 0: 90, 1: n/a (past) | -2 | 8/16 | drop <= 25, unscored +0.25 |" in md
    assert "**PAST THE BOUND**" in md and "Every hypothesis comparing a flagged arm is not interpretable (H1)" in md
    assert "not interpretable (an arm it compares lost capability past the preregistered bound)" in md
    assert "lost basic abilities" in summary and "a leak claimed from a broken model is no leak" in summary
