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
    assert t.config.temperature == 1.0
    assert t.epochs == 3
    assert "grader" in (t.model_roles or {})
