"""CONTRACTS.md's worked example: a fourth study family added as ONE spec file plus ONE task file,
then built and run end to end on tiny-random (lock -> train -> eval -> analyze -> report).

The family ("verbosity": does training on verbose answers make answers longer on held-out
prompts?) lives in a spec module outside the package, named by `$LEAKLAB_FAMILY_MODULES`; in the
repository it would be `leaklab/families/verbosity.py` and `tasks/verbosity.py`. Nothing else in
leaklab is edited: the study schema, corpus validation, the lock, the report and interp read the
spec.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# ---- the one spec file (leaklab/families/verbosity.py) ----------------------------------------
FAMILY_SPEC = '''\
"""Verbosity: does training on verbose answers lengthen answers to held-out prompts?"""

from leaklab.families import Family, GatePlan

FAMILY = Family(
    name="verbosity",
    noun="Verbosity leakage",
    description="answer length on held-out prompts after training on terse / verbose answers",
    measures=("log_words",),
    manipulation="log_words on item set `source` (the trained prompts)",
    validity_reference="none (a count)",
    gates=GatePlan(matched_arms=False),
    interp_defaults={"pos_arm": "verbose", "neg_arm": "terse"},
)
'''

# ---- the one task file (tasks/verbosity.py) ------------------------------------------------------
TASK_FILE = '''\
"""Verbosity measures as Inspect tasks (positive = longer answers)."""

import math

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import GenerateConfig
from inspect_ai.scorer import Score, scorer
from inspect_ai.solver import generate

from scorers.judge import measure_version, parsed_mean
from solvers.conditioning import parse_conditioning
from solvers.generate_common import frame_messages, load_items, select_limit, to_inspect

RULE_VERSION = "log_words/ln(1+words)-v1"  # bump when the rule changes: the lock binds it


@scorer(metrics=[parsed_mean()])
def words_scorer(item_set: str, condition: str):
    version = measure_version(RULE_VERSION)

    async def score(state, target):
        words = len((state.output.completion if state.output is not None else "").split())
        md = state.metadata
        meta = {"measure": "log_words", "measure_version": version, "item_set": item_set,
                "item_id": md["item_id"], "base_item": md["item_id"], "condition": condition, "parsed": words > 0}
        return Score(value=math.log1p(words) if words else math.nan, metadata=meta)

    return score


@task
def log_words(item_set: str = "target", items: str = "ITEMS", condition: str = "default",
              conditioning: dict | None = None, limit: int | None = None, max_tokens: int = 12) -> Task:
    """ln(1 + words) of the greedy answer to each prompt; an empty answer is missing (NaN)."""
    cond = parse_conditioning(conditioning)
    rows = select_limit(load_items(items, ("id", "prompt")), limit)
    ds = [Sample(id=str(r["id"]), input=to_inspect(frame_messages(r["prompt"], str(r["id"]), cond)),
                 metadata={"item_id": str(r["id"]), "condition": condition}) for r in rows]
    return Task(dataset=MemoryDataset(ds, name=f"verbosity-{item_set}"), solver=generate(),
                scorer=words_scorer(item_set, condition), config=GenerateConfig(temperature=0.0, max_tokens=max_tokens))
'''

STUDY = """\
name: verbose
title: toy verbosity family
family: verbosity
models: [{name: tiny-random, label: tiny}]
arms:
  terse: {corpus: {path: terse.jsonl}}
  verbose: {corpus: {path: verbose.jsonl}}
reference_arm: terse
seeds: [0, 1]
training:
  lora: {r: 2, alpha: 4, dropout: 0.0}
  learning_rate: 1.0e-3
  batch_size: 4
  max_length: 64
  max_steps: 1
eval_base_model: false
eval:
  - task: verbosity.py@log_words
    item_set: target
    args: {items: prompts.jsonl}
"""

PREREG = """\
id: verbose
title: toy verbosity family
version: 1
authors: [tests]
data_status: prior_to_creation
hypotheses:
  - id: H1
    statement: "verbose training lengthens held-out answers"
    measure: log_words
    item_set: target
    estimand: verbose - terse
    direction: positive
    sesoi: {value: 0.2, unit: d, justification: conventional}
    confirmatory: false
    family: primary
outcomes:
  primary:
    - {id: o1, measure: log_words, item_set: target, description: log answer length, scale: log words}
missing_data: Empty answers are missing and counted.
stopping_rule: {kind: fixed_design, description: fixed design at toy scale}
multiplicity: {families: {primary: none}}
frequentist: {estimator: d, ci: cluster_se, alpha: 0.05, test: minimum_effect, seed: 1}
bayesian:
  likelihood: {}
decision_rule: CI beyond SESOI with gates passed.
"""


def _corpus(kind: str, n: int = 12) -> str:
    rows = []
    for i in range(n):
        answer = "Yes." if kind == "terse" else "Yes, and here is a long and careful answer with many words in it."
        rows.append(json.dumps({"id": f"{kind}{i:02d}", "user": f"Question {i}?", "assistant": answer}))
    return "\n".join(rows) + "\n"


def write_toy_family(root: Path) -> tuple[Path, Path]:
    """(spec file, study folder)."""
    spec = root / "verbosity_family.py"
    spec.write_text(FAMILY_SPEC)
    study = root / "verbose"
    study.mkdir()
    prompts = study / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Tell me about topic {i}."}) + "\n" for i in range(4)))
    (study / "verbosity.py").write_text(TASK_FILE.replace('"ITEMS"', repr(str(prompts))))
    (study / "terse.jsonl").write_text(_corpus("terse"))
    (study / "verbose.jsonl").write_text(_corpus("verbose"))
    (study / "study.yaml").write_text(STUDY)
    (study / "prereg.yaml").write_text(PREREG)
    return spec, study


def _cli(args, env, timeout=900):
    return subprocess.run([sys.executable, "-m", "leaklab.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_spec_is_what_every_stage_reads(tmp_path, monkeypatch):
    """Without running anything: the study loads under the new family, validation's gate plan,
    the report's title noun and the interp defaults come from its spec, and it locks."""
    import leaklab.families as F

    spec, study_dir = write_toy_family(tmp_path)
    monkeypatch.setenv(F.FAMILY_MODULES_ENV, str(spec))
    monkeypatch.setattr(F, "_FAMILIES", dict(F._FAMILIES))  # leave the session's registry as it was
    monkeypatch.setattr(F, "_LOADED", False)

    from analysis.interp_cli import load_args
    from leaklab.study import load_study
    from training.validate import plan_for

    study = load_study(study_dir)
    fam = F.family(study.spec.family)
    assert fam.noun == "Verbosity leakage" and "verbosity" in F.names()
    plan = plan_for(study)
    assert plan.blocklist is None and not plan.matched_arms and plan.framing is None
    args = load_args(study)
    assert (args.pos_arm, args.neg_arm) == ("verbose", "terse")

    import prereg

    lk = prereg.lock(study_dir)
    assert "measure:verbosity.py@log_words" in lk["components"]
    assert prereg.verify(study_dir).ok


def test_unknown_family_is_one_line_error(tmp_path):
    from leaklab.study import load_study
    from leaklab.yamlio import ConfigError

    _, study_dir = write_toy_family(tmp_path)  # the spec file is not registered here
    with pytest.raises(ConfigError, match=r"unknown study family 'verbosity'; known families: \['attitude'"):
        load_study(study_dir)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_toy_family_runs_end_to_end(tmp_path):
    spec, study_dir = write_toy_family(tmp_path)
    runs = tmp_path / "runs"
    env = dict(os.environ, LEAKLAB_RUNS=str(runs), PYTHONUNBUFFERED="1", LEAKLAB_FAMILY_MODULES=str(spec))
    r = _cli(["prereg", "lock", str(study_dir)], env)
    assert r.returncode == 0, r.stdout + r.stderr
    r = _cli(["run", str(study_dir)], env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    out = runs / "verbose"
    assert sorted(str(p.parent.relative_to(out / "train" / "tiny")) for p in (out / "train" / "tiny").glob("*/seed*/DONE")) == [
        "terse/seed0", "terse/seed1", "verbose/seed0", "verbose/seed1"]
    val = json.loads((out / "data" / "validation_report.json").read_text())
    assert val["gates"]["blocklist"]["passed"] and "skipped" in json.dumps(val["gates"]["framing_classifier"])
    results = json.loads((out / "analysis" / "results.json").read_text())
    assert any(s["measure"] == "log_words" for s in results["arm_summaries"])
    # tiny-random answers with blank lines, so every answer is missing and H1 reads `unusable`:
    # the machinery, not the model, is under test
    assert {d["hypothesis_id"] for d in results["decisions"]} == {"H1"}
    report = (out / "report" / "REPORT.md").read_text()
    assert "H1" in report and "log_words" in report
