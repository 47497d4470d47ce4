"""The shipped inoculation and persona studies, run end to end on tiny-random at toy scale.

Same study.yaml and prereg.yaml as studies/<name>, with the model swapped for tiny-random and
every size knob shrunk, so the whole path (corpus from a file, framed training, marker-only
loss, generative tasks with conditions, condition contrasts on the base model, Bernoulli and
Student-t fits, interp, report) runs in CI.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

SHRINK = {
    "inoculation": {
        "eval_args": {"limit": 6, "max_tokens": 24},
        "interp_args": {"n_examples": 8},
    },
    "persona": {
        "eval_args": {"limit_questions": 2, "max_tokens": 24},
        "interp_args": {"n_questions": 3, "n_perm": 99, "n_boot": 100, "persona_layers": [0, 1]},
    },
}


def _toy_copy(name: str, dest: Path) -> Path:
    d = dest / name
    shutil.copytree(REPO / "studies" / name, d, ignore=shutil.ignore_patterns("prereg.lock.json", "prereg.deviations.jsonl"))
    study = yaml.safe_load((d / "study.yaml").read_text())
    study["models"] = [{"name": "tiny-random", "label": "tiny"}]
    study["seeds"] = [0, 1]
    study["training"].update(max_steps=2, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    family = [e for e in study["eval"] if "capability.py" not in e["task"]]
    for entry in family:
        entry["args"].update(SHRINK[name]["eval_args"])
    for entry in study["eval"]:  # the capability tasks (base and every arm), a few samples each
        if "capability.py" in entry["task"]:
            entry["args"].update({"limit": 3}, **({} if entry["task"].endswith("perplexity") else {"max_tokens": 12}))
    if name == "persona":  # fewer personas per item set
        for entry in family:
            entry["args"]["personas"] = ",".join(p.strip() for p in entry["args"]["personas"].split(",")[:3])
    study["interp_args"].update(SHRINK[name]["interp_args"])
    (d / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    pr = yaml.safe_load((d / "prereg.yaml").read_text())
    pr["bayesian"].update(draws=150, tune=150, chains=2,
                          gates={"rhat_max": 1.1, "ess_bulk_min": 20, "ess_tail_min": 20, "max_divergences": 50})
    pr["frequentist"]["n_resamples"] = 300
    pr.pop("power", None)
    (d / "prereg.yaml").write_text(yaml.safe_dump(pr, sort_keys=False))
    return d


def study_arms(study: Path) -> list[str]:
    return list(yaml.safe_load((study / "study.yaml").read_text())["arms"])


def _leaklab(args, runs_root, timeout=900):
    env = dict(os.environ, LEAKLAB_RUNS=str(runs_root), PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, "-m", "leaklab.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r


@pytest.mark.long_running
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("name", ["inoculation", "persona"])
def test_shipped_family_study_runs_end_to_end(name, tmp_path, runs_root):
    study = _toy_copy(name, tmp_path)
    _leaklab(["prereg", "lock", str(study)], runs_root)
    _leaklab(["run", str(study)], runs_root)

    out = runs_root / name
    results = json.loads((out / "analysis" / "results.json").read_text())
    prereg = yaml.safe_load((study / "prereg.yaml").read_text())
    decided = {d["hypothesis_id"]: d for d in results["decisions"]}
    assert set(decided) == {h["id"] for h in prereg["hypotheses"]}
    report = (out / "report" / "REPORT.md").read_text()
    for hid in decided:
        assert hid in report
    # capability on the base model and every arm, beside the verdicts
    assert results["capability"]["evaluated"] == ["fluency", "perplexity", "refusal"]
    assert {r["arm"] for m in results["capability"]["measures"] for r in m["runs"]} == set(study_arms(study))
    assert "Capability per arm, beside the verdicts" in report
    interp = json.loads((out / "interp" / "results.json").read_text())
    if name == "inoculation":
        # the base-model elicitation contrast (training@fixed - default) was estimated
        e1 = [e for e in results["effects"] if e["id"] in decided["E1"]["effect_ids"]]
        assert e1 and all(e["estimate"] is not None for e in e1), decided["E1"]
        assert "heuristics" in interp
    else:
        import pandas as pd

        frame = pd.read_parquet(out / "analysis" / "frame.parquet")
        # persona metadata survives into the frame for by-category summaries
        marker = frame[frame["measure"] == "marker"]  # the capability rows carry no persona
        assert marker["persona_category"].notna().all() and set(marker["persona"]) >= {"pirate", "doctor", "wizard", "assistant"}
        # multi-source geometry: every source counted, the layer chosen on held-out questions,
        # per-source and pooled (random-effects) estimates in the report's interp section
        p = interp["persona"]
        assert {r["source"] for r in p["leakage"]} == {"pirate", "doctor", "wizard"}
        assert all(r["n"] + r["n_empty"] + r["n_marker_only"] + r["n_other_missing"] == r["n_total"] for r in p["leakage"])
        assert p["layer_selection"]["method"] == "held_out_questions"
        assert not set(p["layer_selection"]["selection_questions"]) & set(p["layer_selection"]["test_questions"])
        assert set(p["headline"]["per_source"]) == {"pirate", "doctor", "wizard"} and "pooled" in p["headline"]
        assert set(p["degeneracy"]) == {"pirate", "doctor", "wizard"}
        assert (out / "interp" / p["figure"]).exists()
        assert "random-effects meta-analysis" in report
        # the layer choice is reported either way: chosen on the selection half, or (tiny-random's
        # constant cosines/leakage) declared because no layer could be chosen there
        chosen = p["layer_selection"].get("chosen_layer")
        assert (f"**layer {chosen}**" in report.lower()) if chosen is not None else ("no layer could be chosen" in report.lower())
