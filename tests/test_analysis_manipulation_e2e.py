"""End to end on tiny-random: a study whose manipulation check fails renders a report whose title
claims nothing and whose hypotheses that require the check read `not_interpretable`.

tiny-random puts almost all its mass on "\\n", so its letter log-prob margins are all missing: the
manipulation check M1 (letter margins on source items) is unusable, i.e. not passed. H2 reads the
log-perplexity of neutral texts (a value for every adapter) and requires M1 explicitly; its own
numbers are fine, so its verdict is `not_interpretable`, never "supported". (Analysed without the
Bayesian half, so the verdict does not hinge on a toy posterior passing its gates.)
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

from toy_study import write_toy_study  # noqa: E402


def _leaklab(args, runs_root, timeout=1200):
    env = dict(os.environ, LEAKLAB_RUNS=str(runs_root), PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, "-m", "leaklab.cli", *args], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_failed_manipulation_check_makes_dependent_hypotheses_not_interpretable(tmp_path, runs_root):
    folder = write_toy_study(tmp_path / "toy", seeds=(0, 1))
    study = yaml.safe_load((folder / "study.yaml").read_text())
    study["arms"].pop("cautious")
    study["eval"].append({"task": "tasks/capability.py@perplexity", "item_set": "neutral", "args": {"limit": 6}})
    (folder / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    pr = yaml.safe_load((folder / "prereg.yaml").read_text())
    sesoi = {"value": 0.2, "unit": "d", "justification": "conventional small effect"}
    pr["hypotheses"] = [
        {"id": "M1", "statement": "training moves the trained (source) stance", "measure": "letter_logprob",
         "item_set": "source", "estimand": "eager - neutral", "direction": "positive", "sesoi": sesoi,
         "confirmatory": False, "family": "manipulation"},
        {"id": "H2", "statement": "eager training changes the perplexity of neutral text", "measure": "perplexity",
         "item_set": "neutral", "estimand": "eager - neutral", "direction": "two_sided", "sesoi": sesoi,
         "confirmatory": True, "family": "primary", "requires": ["M1"]},
    ]
    pr["outcomes"]["primary"] = [{"id": "ppl", "measure": "perplexity", "item_set": "neutral",
                                  "description": "log-perplexity of neutral texts"}]
    pr["bayesian"]["likelihood"] = {"letter_logprob": "normal", "perplexity": "normal"}
    (folder / "prereg.yaml").write_text(yaml.safe_dump(pr, sort_keys=False))
    _leaklab(["prereg", "lock", str(folder)], runs_root)
    _leaklab(["run", str(folder), "--stage", "data", "--stage", "train", "--stage", "eval"], runs_root)
    # frequentist half only: H2's verdict must not hinge on whether a toy posterior passes its gates
    _leaklab(["analyze", str(folder), "--no-bayes"], runs_root)
    _leaklab(["report", str(folder)], runs_root)

    results = json.loads((runs_root / "toy" / "analysis" / "results.json").read_text())
    dec = {d["hypothesis_id"]: d for d in results["decisions"]}
    assert dec["M1"]["verdict"] == "unusable"
    assert dec["H2"]["verdict"] == "not_interpretable", dec["H2"]
    assert dec["H2"]["requires"] == ["M1"] and dec["H2"]["gates"] == ["M1 (tiny): unusable"]
    report = (runs_root / "toy" / "report" / "REPORT.md").read_text()
    title = next(line for line in report.splitlines() if line.startswith("# "))
    assert "could not be interpreted" in title and "M1" in title and "supported)" in title
    assert "perplexity of neutral text" not in title  # the title states no claim
    summary = (runs_root / "toy" / "report" / "PLAIN_SUMMARY.md").read_text()
    assert "We cannot interpret this" in summary and "M1 (tiny): unusable" in summary
