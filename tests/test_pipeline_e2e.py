"""The whole pipeline on tiny-random at toy scale: lock -> data -> train -> eval -> analyze -> report.

Asserts on the produced artifacts, then kills a `leaklab run` mid-training and checks that a
second run resumes (finished cells are not retrained) and completes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _env(runs_root):
    env = dict(os.environ, LEAKLAB_RUNS=str(runs_root), PYTHONUNBUFFERED="1")
    return env


def _leaklab(args, env, **kw):
    return subprocess.run([sys.executable, "-m", "leaklab.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, **kw)


@pytest.mark.timeout(900)
def test_whole_pipeline_then_kill_and_resume(toy_run):
    """The session's toy run (tests/conftest.py `toy_run`): locked, killed as soon as the first
    cell was DONE, then resumed."""
    toy_study, runs_root, lock, first_done = toy_run.study, toy_run.runs, toy_run.lock, toy_run.first_done
    env = _env(runs_root)
    assert first_done, "no cell finished before the kill"
    train = runs_root / "toy" / "train" / "tiny"

    # second run resumes: finished cells untouched, everything else completed
    r = toy_run.resumed
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    for cell, mtime in first_done.items():
        assert (cell / "DONE").stat().st_mtime_ns == mtime, f"{cell} was retrained"
    cells = sorted(str(p.parent.relative_to(train)) for p in train.glob("*/seed*/DONE"))
    assert cells == [f"{a}/seed{s}" for a in ("cautious", "eager", "neutral") for s in (0, 1)]
    for cell in train.glob("*/seed*"):
        man = json.loads((cell / "manifest.json").read_text())
        assert man["arm"] == cell.parent.name and (cell / "adapter" / "adapter_config.json").exists()

    # eval logs: base + 6 adapters, each stamped with the lock digest
    from inspect_ai.log import list_eval_logs, read_eval_log

    logs = [read_eval_log(i, header_only=True) for i in list_eval_logs(str(runs_root / "toy" / "logs"))]
    ok = [lg for lg in logs if lg.status == "success"]
    assert len(ok) == 7 * 2
    assert {lg.eval.metadata["leaklab"]["lock_digest"] for lg in ok} == {lock["digest"]}
    assert {lg.eval.metadata["leaklab"]["arm"] for lg in ok} == {"base", "cautious", "eager", "neutral"}

    # analysis + report
    results = json.loads((runs_root / "toy" / "analysis" / "results.json").read_text())
    assert (runs_root / "toy" / "analysis" / "frame.parquet").exists()
    text = json.dumps(results)
    assert "H1" in text and lock["digest"] in text
    report = (runs_root / "toy" / "report" / "REPORT.md").read_text()
    assert lock["digest"] in report and "H1" in report
    assert (runs_root / "toy" / "report" / "PLAIN_SUMMARY.md").exists()

    # status sees a complete study

    r = _leaklab(["status", str(toy_study), "--json"], env)
    st = json.loads(r.stdout)
    assert st["train"] == "6/6 cells done" and st["report"] is True
