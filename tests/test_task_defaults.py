"""Inspect conventions: every @task in tasks/*.py runs with no `-T` argument on the shipped data
(`inspect eval tasks/stance.py@letter_logprob --model leaklab/tiny-random`), and says in its
docstring what it measures. Tasks that grade with a model get a mock `grader` role bound (a
model role, not a task argument) that answers "70" with a top-logprob list: tiny-random's
tokenizer splits numbers into digits, which the 0-100 judge refuses by design."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _tasks() -> list[tuple[str, ast.FunctionDef]]:
    out = []
    for f in sorted((REPO / "tasks").glob("*.py")):
        for node in ast.parse(f.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and any(
                (isinstance(d, ast.Name) and d.id == "task") or (isinstance(d, ast.Call) and getattr(d.func, "id", "") == "task")
                for d in node.decorator_list
            ):
                out.append((f"tasks/{f.name}@{node.name}", node))
    return out


TASKS = _tasks()
NEEDS_GRADER = {"tasks/em.py@em", "tasks/trait.py@trait_calibration", "tasks/capability.py@fluency"}


def test_every_task_is_found():
    names = {ref for ref, _ in TASKS}
    assert {"tasks/stance.py@letter_logprob", "tasks/trait.py@trait", "tasks/persona.py@persona"} <= names
    assert NEEDS_GRADER <= names


@pytest.mark.parametrize("ref,node", TASKS, ids=[r for r, _ in TASKS])
def test_task_needs_no_argument_and_says_what_it_measures(ref, node):
    a = node.args
    required = [x.arg for x in (a.posonlyargs + a.args)[: len(a.posonlyargs + a.args) - len(a.defaults)]]
    required += [x.arg for x, d in zip(a.kwonlyargs, a.kw_defaults) if d is None]
    assert not required, f"{ref}: arguments without a default: {required}"
    doc = ast.get_docstring(node) or ""
    assert len(doc.split()) >= 8, f"{ref}: the docstring must say what the task measures"
    if ref in NEEDS_GRADER:
        assert "grader" in doc, f"{ref}: the docstring must say it needs a grader"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("ref", [r for r, _ in TASKS])
def test_task_runs_without_task_args_on_tiny_random(ref, tmp_path, monkeypatch):
    from inspect_ai import eval as inspect_eval

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("LEAKLAB_JUDGE_CACHE", str(tmp_path / "judge"))
    roles = None
    if ref in NEEDS_GRADER:
        from inspect_ai.model import get_model
        from mockllm_outputs import LN, judge_output

        grader = get_model("mockllm/model", custom_outputs=lambda *_: judge_output([("70", LN(0.9)), ("30", LN(0.1))]),
                           memoize=False)
        roles = {"grader": grader}
    [log] = inspect_eval(ref, model="leaklab/tiny-random", model_roles=roles, limit=1, max_tokens=8,
                         log_dir=str(tmp_path / "logs"), display="none", log_format="eval")
    assert log.status == "success", (ref, log.error.message if log.error else None)
    assert log.samples and all(s.scores for s in log.samples)
