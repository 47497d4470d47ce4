"""`leaklab eval` planning: checkpoints from DONE cells, conditions per checkpoint, task construction."""

from leaklab.evaluate import build_tasks, checkpoints, eval_conditions_for, eval_metadata, model_for
from leaklab.runstore import mark_done, train_dir
from leaklab.study import load_study
from toy_study import write_echo_study

def make_study(tmp_path):
    return load_study(write_echo_study(tmp_path / "toy"))


def test_checkpoints_only_done_cells(tmp_path, runs_root):
    s = make_study(tmp_path)
    assert [c.label for c in checkpoints(s)] == ["tiny/base"]
    cell = train_dir(s.runs_dir, "tiny", "fixed", 1)
    (cell / "adapter").mkdir(parents=True)
    assert [c.label for c in checkpoints(s)] == ["tiny/base"]  # no DONE marker yet
    mark_done(cell)
    labels = [c.label for c in checkpoints(s)]
    assert labels == ["tiny/base", "tiny/fixed/seed1/final"]
    ck = checkpoints(s)[1]
    assert ck.log_dir(s.runs_dir) == runs_root / "toy" / "logs" / "tiny" / "fixed" / "seed1" / "final"
    assert model_for(s, ck) == ("leaklab/tiny-random", {"adapter": str(cell / "adapter")})
    meta = eval_metadata(s, ck, "abc", False)["leaklab"]
    assert meta["arm"] == "fixed" and meta["seed"] == 1 and meta["lock_digest"] == "abc"


def test_training_condition_expands_for_base(tmp_path, runs_root):
    s = make_study(tmp_path)
    base = checkpoints(s)[0]
    conds = eval_conditions_for(s, base, ["default", "training"])
    # the base model sees every arm's framing that is non-empty; the control arm has none
    assert [name for name, _ in conds] == ["default", "training@fixed"]
    assert conds[1][1]["user_prefix"] == "Be playful."
    mark_done(train_dir(s.runs_dir, "tiny", "control", 0))
    ctrl = checkpoints(s)[1]
    assert eval_conditions_for(s, ctrl, ["training"]) == [("training", s.spec.arms["control"].conditioning.model_dump())]


def test_build_tasks_applies_args_config_roles(tmp_path, runs_root):
    s = make_study(tmp_path)
    tasks = build_tasks(s, checkpoints(s)[0], s.spec.eval)
    assert len(tasks) == 2
    t = tasks[1]
    assert t.metadata["condition"] == "training@fixed"
    assert t.metadata["items"] == "data/x.jsonl"  # data/ paths stay repo-relative
    assert t.config.temperature == 1.0 and t.config.seed is None
    assert t.epochs == 3
    entry = s.spec.eval[-1].model_copy(update={"seed": 20261203})
    seeded = build_tasks(s, checkpoints(s)[0], [entry])
    assert [x.config.seed for x in seeded] == [20261203, 20261203]  # every condition
    assert seeded[1].config.temperature == 1.0  # the rest of the task's config is kept
    assert "grader" in (t.model_roles or {})


def test_eval_checkpoint_scans_installed_packages_once(tmp_path, monkeypatch):
    """Inspect scans every installed package's files to find the distribution of each task from our
    `tasks` package; eval_checkpoint reuses one scan (and puts Inspect's lookup back after)."""
    import importlib.metadata

    from inspect_ai import task_with
    from inspect_ai._util import package as inspect_package
    from inspect_ai.log import read_eval_log

    from leaklab import evaluate
    from tasks.capability import refusal

    calls = []
    real = importlib.metadata.packages_distributions

    def counting():
        calls.append(1)
        return real()

    monkeypatch.setattr(inspect_package, "packages_distributions", counting)
    monkeypatch.setattr(importlib.metadata, "packages_distributions", counting)
    evaluate._packages_distributions_once.cache_clear()

    def tasks():
        return [task_with(refusal(limit=1, max_tokens=4), name=f"refusal_{i}") for i in range(3)]

    packages = []
    for once, folder in ((False, "plain"), (True, "once"), (True, "again")):
        calls.clear()
        assert evaluate.eval_checkpoint(tasks(), tmp_path / folder, "mockllm/model", {}, scan_packages_once=once)
        assert len(calls) == {"plain": 3, "once": 1, "again": 0}[folder]  # per task; once; not again
        assert inspect_package.packages_distributions is counting
        logs = [read_eval_log(str(p), header_only=True) for p in sorted((tmp_path / folder).glob("*.eval"))]
        assert len(logs) == 3 and all(lg.status == "success" for lg in logs)
        packages.append(sorted(str(lg.eval.packages) for lg in logs))
    assert packages[0] == packages[1] == packages[2]  # the logs record the same packages either way


def test_unseeded_sampling_entries_are_listed(tmp_path, runs_root):
    from leaklab.evaluate import unseeded_sampling_entries

    s = make_study(tmp_path)
    listed = unseeded_sampling_entries(s)
    sampled = [i for i, e in enumerate(s.spec.eval) if e.temperature]
    assert sampled and [line.split()[0] for line in listed] == [f"eval[{i}]" for i in sampled]
    for i in sampled:
        s.spec.eval[i] = s.spec.eval[i].model_copy(update={"seed": 1})
    assert unseeded_sampling_entries(s) == []
