"""Issue 15: the lock binds everything that produced a number; hostile and broken inputs fail cleanly.

Each case tried by hand as a new user and as an adversary is a test here:
- custody: an emptied chain; training outside the guard (lock, set lr 0.5, train, revert);
  rewritten score values, synthetic logs with a copied lock digest, swapped labels, a `.json`
  log, a replaced adapter, an edited ledger; task source edited after the lock; hand-run
  `inspect eval` logs registered with `leaklab register-log`;
- no code from data: a pickle planted in a checkpoint, a torn checkpoint, a judge prompt that
  reaches for os.popen;
- paths: `../` labels, arms and study names, corpus paths outside the project, symlinks,
  `templates_path` resolved against the study folder whatever the working directory;
- one run at a time per study;
- one-line errors, exit 2: non-UTF-8 YAML and JSONL, a directory where a file is expected,
  out-of-range numbers, an unknown model, a 3-record corpus, duplicate YAML keys, negative
  n_docs, ENOSPC/EROFS; atomic writes keep the old file and ordinary file modes.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import prereg
from leaklab.study import REPO_ROOT, load_study
from leaklab.yamlio import ConfigError, load_yaml
from prereg import PreregError
from prereg.deviations import CHAIN_NAME
from toy_study import PREREG as TOY_PREREG
from toy_study import STUDY as TOY_STUDY
from toy_study import hypothesis, letter_eval, prereg_text, two_arm_study, write_study, write_toy_study

# a two-arm study small enough to train and evaluate in seconds on tiny-random
ADV_STUDY = two_arm_study("adv", seeds=(0,), extra="eval_base_model: false\n", eval=letter_eval("source", 1), training="""\
  lora: {r: 2, alpha: 4, dropout: 0.0}
  learning_rate: 1.0e-3
  batch_size: 4
  max_length: 96
  max_steps: 1
""")

ADV_PREREG = prereg_text(
    "adv", "adversarial custody study",
    [hypothesis("M1", "b vs a on source items", item_set="source", estimand="b - a", confirmatory=False, family="manipulation")],
    outcome_item_set="source", families={"manipulation": "none"},
    frequentist="{estimator: d, ci: hierarchical_bootstrap, n_resamples: 200, alpha: 0.05, test: minimum_effect, seed: 1}",
    bayesian="  likelihood: {letter_logprob: normal}\n  draws: 100\n  tune: 100\n  chains: 1\n  seed: 1\n",
)


def _write_adv(folder: Path) -> Path:
    return write_study(folder, ADV_STUDY, ADV_PREREG)


@pytest.fixture(scope="module")
def base_evaluated(tmp_path_factory):
    """The adv study locked, trained (2 cells) and evaluated once; tests work on copies."""
    from leaklab.pipeline import run_study

    root = tmp_path_factory.mktemp("adv")
    old = os.environ.get("LEAKLAB_RUNS")
    os.environ["LEAKLAB_RUNS"] = str(root / "runs")
    try:
        folder = _write_adv(root / "adv")
        prereg.lock(folder)
        run_study(folder, stages=["lock", "data", "train", "eval"])
    finally:
        if old is None:
            os.environ.pop("LEAKLAB_RUNS", None)
        else:
            os.environ["LEAKLAB_RUNS"] = old
    return root / "runs", folder


@pytest.fixture
def evaluated(base_evaluated, tmp_path, monkeypatch):
    runs, folder = base_evaluated
    shutil.copytree(runs, tmp_path / "runs")
    shutil.copytree(folder, tmp_path / "adv")
    monkeypatch.setenv("LEAKLAB_RUNS", str(tmp_path / "runs"))
    study = load_study(tmp_path / "adv")
    return study, prereg.guard(study.folder)


def _logs(study) -> dict[str, Path]:
    """arm -> its (single) ledgered log."""
    from prereg.ledger import ledger_path, read_ledger

    return {e["arm"]: study.runs_dir / e["log"] for e in read_ledger(ledger_path(study.runs_dir))}


def _refused(study, guard) -> dict[str, str]:
    from prereg.ledger import custody

    return {Path(p).name if Path(p).suffix == ".json" else p: why for p, why in custody(study, guard).refused}


# ---------------------------------------------------------------- the chain


def test_emptied_chain_fails_against_the_locks_length(tmp_path, runs_root):
    folder = write_toy_study(tmp_path / "toy")
    prereg.lock(folder)
    (folder / CHAIN_NAME).write_text("")
    res = prereg.verify(folder)
    assert not res.ok
    text = res.explain()
    assert "chain is empty" in text and "has 0 entries, the lock records 1" in text
    with pytest.raises(PreregError, match="does not verify"):
        prereg.guard(folder)
    with pytest.raises(PreregError, match="broken chain"):
        prereg.amend(folder, "paper over it")


# ---------------------------------------------------------------- custody: lock -> cell -> log -> frame


def test_untouched_run_is_accepted_and_read_from_the_ledger(evaluated):
    from analysis.frame import read_study_frame
    from prereg.ledger import custody

    study, guard = evaluated
    c = custody(study, guard)
    assert len(c.accepted) == 2 and not c.refused
    df, rep = read_study_frame(study, guard)
    assert set(df["arm"]) == {"a", "b"} and set(df["lock_digest"]) == {guard.digest}
    man = json.loads((study.runs_dir / "train" / "tiny" / "a" / "seed0" / "manifest.json").read_text())
    assert man["lock_digest"] == guard.digest and man["exploratory"] is False
    assert man["fingerprint"]["training"]["learning_rate"] == 1e-3 and len(man["adapter_sha256"]) == 64


def test_rewritten_score_values_are_refused(evaluated, capsys, monkeypatch):
    from inspect_ai.log import read_eval_log, write_eval_log

    study, guard = evaluated
    path = _logs(study)["a"]
    log = read_eval_log(str(path))
    for s in log.samples:
        for sc in s.scores.values():
            sc.value = 9.0
    write_eval_log(log, str(path))
    assert "bytes changed since it was ledgered" in _refused(study, guard)[str(path)]
    with pytest.raises(PreregError, match="bytes changed"):
        prereg.require_bound(study.folder, [], guard)
    code, _ = _cli(["ledger", study.folder], capsys, monkeypatch)  # `leaklab ledger` lists it and exits 1
    assert code == 1


def test_synthetic_log_with_a_copied_lock_digest_is_refused(evaluated):
    from analysis.frame import read_study_frame, simulate_cells, write_synthetic_logs

    study, guard = evaluated
    rows = simulate_cells(arms={"a": 0.0, "b": 5.0}, seeds=[0], n_base=3, rng=1)
    fake = write_synthetic_logs(study.runs_dir / "logs" / "extra", rows, study="adv", lock_digest=guard.digest,
                                measure="letter_logprob", item_set="source", model_label="tiny")
    refused = _refused(study, guard)
    for p in fake:
        assert "not in the run ledger" in refused[str(p)]
    with pytest.raises(PreregError, match="not in the run ledger"):
        read_study_frame(study, guard)


def test_swapped_arm_labels_are_refused(evaluated):
    from inspect_ai.log import read_eval_log, write_eval_log

    from prereg.ledger import record_log

    study, guard = evaluated
    logs = _logs(study)
    # swap the files between the arms' folders
    a, b = logs["a"].read_bytes(), logs["b"].read_bytes()
    logs["a"].write_bytes(b)
    logs["b"].write_bytes(a)
    refused = _refused(study, guard)
    assert "bytes changed" in refused[str(logs["a"])] and "bytes changed" in refused[str(logs["b"])]
    # relabel a log's metadata (arm a -> b) and try to ledger it: its adapter is a's, not b's
    log = read_eval_log(str(logs["b"]))  # holds a's log now
    log.eval.metadata["leaklab"]["arm"] = "b"
    write_eval_log(log, str(logs["b"]))
    with pytest.raises(PreregError, match="labels swapped"):
        record_log(study, logs["b"], via="test")


def test_json_log_does_not_bypass_the_check(evaluated):
    from inspect_ai.log import read_eval_log, write_eval_log

    study, guard = evaluated
    log = read_eval_log(str(_logs(study)["a"]))
    log.eval.metadata["leaklab"].update(exploratory=True, lock_digest=None)
    dest = study.runs_dir / "logs" / "tiny" / "a" / "seed0" / "final" / "exploratory.json"
    write_eval_log(log, str(dest), format="json")
    assert "not in the run ledger" in _refused(study, guard)["exploratory.json"]
    with pytest.raises(PreregError, match="exploratory.json"):
        prereg.require_bound(study.folder, [], guard)  # the path analysis/cli.py takes


def test_replaced_adapter_and_edited_ledger_are_refused(evaluated):
    from prereg.ledger import custody, ledger_path

    study, guard = evaluated
    w = study.runs_dir / "train" / "tiny" / "a" / "seed0" / "adapter" / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:-8] + b"\0" * 8)
    assert "adapter" in _refused(study, guard)[str(_logs(study)["a"])]
    # an edited ledger entry (arm b relabelled a) breaks the hash chain: nothing is read
    lp = ledger_path(study.runs_dir)
    lines = lp.read_text().splitlines()
    e = json.loads(lines[-1])
    e["arm"] = "a" if e["arm"] == "b" else "b"
    lp.write_text("\n".join(lines[:-1] + [json.dumps(e)]) + "\n")
    with pytest.raises(PreregError, match="ledger is broken"):
        custody(study, guard)


def test_training_under_another_config_is_refused_at_eval(evaluated):
    """Lock, set lr 0.5, train, revert the study, run: the adapters the lock never described are refused."""
    from leaklab.evaluate import run_eval
    from training.matrix import train_cell

    study, guard = evaluated
    text = (study.folder / "study.yaml").read_text()
    (study.folder / "study.yaml").write_text(text.replace("learning_rate: 1.0e-3", "learning_rate: 0.5"))
    changed = load_study(study.folder)
    with pytest.raises(PreregError, match="does not verify"):
        train_cell(changed, "tiny", "a", 0)  # training goes through the guard
    with pytest.raises(ConfigError, match="learning_rate: trained with 0.001, the study now says 0.5"):
        train_cell(changed, "tiny", "a", 0, exploratory=True)  # a DONE cell is never silently reused
    cell = study.runs_dir / "train" / "tiny" / "a" / "seed0"
    shutil.move(str(cell), str(cell.with_name("seed0.aside")))
    train_cell(changed, "tiny", "a", 0, exploratory=True)
    assert json.loads((cell / "manifest.json").read_text())["fingerprint"]["training"]["learning_rate"] == 0.5
    (study.folder / "study.yaml").write_text(text)  # revert: the lock verifies again
    with pytest.raises(ConfigError, match=r"(?s)learning_rate: trained with 0.5.*--exploratory"):
        run_eval(load_study(study.folder))


def test_register_log_of_a_hand_run_inspect_eval(evaluated, tmp_path, monkeypatch):
    from inspect_ai import eval as inspect_eval

    from leaklab.evaluate import load_task_function
    from leaklab.register import register_log
    from prereg.ledger import custody

    study, guard = evaluated
    logs = _logs(study)
    monkeypatch.chdir(REPO_ROOT)
    adapter = study.runs_dir / "train" / "tiny" / "b" / "seed0" / "adapter"
    fn = load_task_function("tasks/stance.py@letter_logprob")

    def hand_run(**args):
        (log,) = inspect_eval(fn(items="data/attitude/source.jsonl", item_set="source", **args),
                              model="leaklab/tiny-random", model_args={"adapter": str(adapter)},
                              log_dir=str(tmp_path / "hand"), display="none", log_level="warning")
        return Path(log.location.removeprefix("file://"))

    good = hand_run(limit_base_items=1)
    entry, dest = register_log(study, good)
    assert entry["arm"] == "b" and entry["via"] == "register-log" and entry["adapter_sha256"]
    assert str(dest) in custody(study, guard).accepted
    assert register_log(study, good)[0] == entry  # idempotent
    other = hand_run(limit_base_items=2)
    with pytest.raises(ConfigError, match=r"refusing to register: .*task args \['limit_base_items'\] differ"):
        register_log(study, other)
    # a log already under logs/ with eval's metadata (written before the ledger existed) is ledgered in place
    (study.runs_dir / "ledger.jsonl").unlink()
    again, where = register_log(study, dest)
    assert where == dest and again["seq"] == 0
    c = custody(study, guard)
    assert c.accepted == [str(dest)] and str(logs["b"]) in [p for p, _ in c.refused]


# ---------------------------------------------------------------- the lock binds what defines a measure

TASK = '''"""A study-local task."""
from scorers.stance import RULE_VERSIONS

PROMPT_TEMPLATE = "Question: {q}\\nAnswer:"


def _helper(x):
    return x


def mytask(item_set: str = "target", condition: str = "default", conditioning=None):
    return _helper(PROMPT_TEMPLATE)
'''


def test_task_source_is_bound_but_a_refactor_is_not(tmp_path, runs_root):
    folder = write_toy_study(tmp_path / "toy")
    study = TOY_STUDY.replace("tasks/stance.py@letter_logprob", "mytask.py@mytask")
    study = study.replace("args: {items: data/attitude/source.jsonl, limit_base_items: 4}", "args: {}")
    study = study.replace("args: {items: data/attitude/target.jsonl, limit_base_items: 6}", "args: {}")
    (folder / "study.yaml").write_text(study)
    (folder / "prereg.yaml").write_text(TOY_PREREG.replace("letter_logprob", "mytask"))
    (folder / "mytask.py").write_text(TASK)
    lk = prereg.lock(folder)
    assert "measure:mytask.py@mytask" in lk["components"]
    # a refactor: renamed helper, new docstring and comment, reformatted: the lock still verifies
    (folder / "mytask.py").write_text(TASK.replace("_helper", "_identity").replace('"""A study-local task."""',
                                      '"""Refactored."""\n# a comment').replace("Question: {q}\\nAnswer:", "Question: {q}\\n" "Answer:"))
    assert prereg.verify(folder).ok, prereg.verify(folder).explain()
    # the prompt template changed after the lock: caught, named
    (folder / "mytask.py").write_text(TASK.replace("Answer:", "Reply:"))
    res = prereg.verify(folder)
    assert not res.ok and {d["component"] for d in res.diff} == {"measure:mytask.py@mytask"}


def test_shipped_task_measures_are_bound(tmp_path, runs_root):
    folder = write_toy_study(tmp_path / "toy")
    lk = prereg.lock(folder)
    assert lk["components"]["measure:tasks/stance.py@letter_logprob"]
    assert "scorers.stance" in lk["sources"]["measure:tasks/stance.py@letter_logprob"]


def test_templates_path_resolves_against_the_study_folder(tmp_path, runs_root, monkeypatch):
    from prereg.canonical import file_sha256
    from training.corpora import build_corpus, meta_path

    folder = write_toy_study(tmp_path / "toy")
    shutil.copy(REPO_ROOT / "data" / "attitude_corpus" / "templates.yaml", folder / "tpl.yaml")
    (folder / "study.yaml").write_text(TOY_STUDY.replace("n_docs: 60, seed: 3}", "n_docs: 60, seed: 3, templates_path: tpl.yaml}"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "tpl.yaml").write_text("version: other\n")  # the file a cwd-relative build would have read
    monkeypatch.chdir(elsewhere)
    lk = prereg.lock(folder)
    study = load_study(folder)
    out = build_corpus(study, "cautious")
    meta = json.loads(meta_path(out).read_text())
    assert meta["data_files"] == {"tpl.yaml": file_sha256(folder / "tpl.yaml")}
    assert prereg.verify(folder).ok and lk["components"]["builder:cautious"]


# ---------------------------------------------------------------- no code from data

SFT_STUDY = """
name: sft
family: custom
models: [{name: tiny-random, label: tiny}]
arms:
  a: {corpus: {builder: attitude_template, builder_args: {arm: cautious, n_docs: 8, seed: 3}}}
reference_arm: a
seeds: [0]
training:
  lora: {r: 2, alpha: 4, dropout: 0.0}
  batch_size: 2
  max_length: 96
  warmup_ratio: 0.0
  checkpoint_every: 1
  max_steps: 3
eval: []
"""


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_planted_pickle_and_torn_checkpoint_fall_back_to_the_previous_one(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from training.matrix import train_cell
    from training.sft import SimulatedKill, load_resume_state

    folder = tmp_path / "sft"
    folder.mkdir()
    (folder / "study.yaml").write_text(SFT_STUDY)
    monkeypatch.setenv("LEAKLAB_RUNS", str(tmp_path / "ref"))
    ref = train_cell(load_study(folder), "tiny", "a", 0, exploratory=True)
    monkeypatch.setenv("LEAKLAB_RUNS", str(tmp_path / "killed"))
    study = load_study(folder)
    with pytest.raises(SimulatedKill):
        train_cell(study, "tiny", "a", 0, stop_after=2, exploratory=True)
    cell = tmp_path / "killed" / "sft" / "train" / "tiny" / "a" / "seed0"
    ck = cell / "checkpoints"
    assert (ck / "step-1" / "trainer_state.pt").exists() and (ck / "step-2" / "trainer_state.pt").exists()
    # a torn newest checkpoint: the one before it is used
    scratch = tmp_path / "scratch"
    shutil.copytree(ck, scratch)
    w = scratch / "step-2" / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[: len(w.read_bytes()) // 2])
    with pytest.warns(RuntimeWarning, match="step-2: checkpoint unreadable"):
        assert load_resume_state(scratch, "cpu")[0] == 1
    # a pickle planted as the newest trainer state never runs; training resumes from step 1
    marker = tmp_path / "pwned"
    torch.save({"optimizer": _Evil(marker), "scheduler": {}, "torch_rng": torch.get_rng_state()},
               ck / "step-2" / "trainer_state.pt")
    with pytest.warns(RuntimeWarning, match="step-2: checkpoint unreadable"):
        train_cell(study, "tiny", "a", 0, exploratory=True)
    assert not marker.exists()
    man = json.loads((cell / "manifest.json").read_text())
    assert man["resumed_from_step"] == 1
    wa, wb = load_file(str(cell / "adapter" / "adapter_model.safetensors")), load_file(str(ref / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [json.loads(x)["step"] for x in (cell / "loss.jsonl").read_text().splitlines()] == [1, 2, 3]


@pytest.mark.parametrize("template", [
    "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
])
def test_judge_prompt_cannot_run_code(tmp_path, template):
    from scorers.judge import load_judge_prompt

    p = tmp_path / "evil.yaml"
    p.write_text(json.dumps({"user": template.replace("MARKER", str(tmp_path / "pwned"))}))
    with pytest.raises(ConfigError, match="unsafe operation"):
        load_judge_prompt(str(p)).render(response="x")
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------- paths


def _study_with(tmp_path, old, new, text=TOY_STUDY):
    folder = write_toy_study(tmp_path / "toy")
    (folder / "study.yaml").write_text(text.replace(old, new))
    return folder


@pytest.mark.parametrize("old,new,match", [
    ("label: tiny}", "label: ../../../../escaped}", "model label"),
    ("name: tiny-random, label: tiny", "name: ../../../x", "model label"),
    ("  cautious: {corpus", "  ../up: {corpus", "arm name"),
    ("name: toy\n", "name: ../toy\n", "study name"),
])
def test_names_that_become_path_segments_are_validated(tmp_path, runs_root, old, new, match):
    folder = _study_with(tmp_path, old, new)
    with pytest.raises(ConfigError, match=match):
        load_study(folder)
    assert not (tmp_path / "escaped").exists()


def test_data_paths_stay_inside_the_project(tmp_path, runs_root, monkeypatch):
    corpus = "{corpus: {builder: attitude_template, builder_args: {arm: cautious, n_docs: 60, seed: 3}}}"
    folder = _study_with(tmp_path, corpus, "{corpus: {path: ../../../../../../etc/passwd}}")
    with pytest.raises(ConfigError, match="outside the project"):
        load_study(folder)
    (folder / "link.jsonl").symlink_to("/etc/passwd")
    (folder / "study.yaml").write_text(TOY_STUDY.replace(corpus, "{corpus: {path: link.jsonl}}"))
    with pytest.raises(ConfigError, match=r"link.jsonl' resolves to /etc/passwd, outside the project"):
        load_study(folder)
    monkeypatch.setenv("LEAKLAB_DATA_ROOTS", "/etc")  # an explicitly allowed data root
    assert load_study(folder).resolve("link.jsonl") == Path("/etc/passwd")
    bad = TOY_STUDY.replace("data/attitude/target.jsonl", "data/../../../etc/hosts.jsonl")
    (folder / "study.yaml").write_text(bad)
    monkeypatch.delenv("LEAKLAB_DATA_ROOTS")
    with pytest.raises(ConfigError, match="outside the project"):
        load_study(folder)


# ---------------------------------------------------------------- one run at a time


def test_second_run_of_a_study_is_refused_naming_the_holder(tmp_path, runs_root):
    from leaklab.runstore import run_lock

    folder = write_toy_study(tmp_path / "toy")
    env = dict(os.environ, LEAKLAB_RUNS=str(runs_root))
    with run_lock(runs_root / "toy", "first run"):
        r = subprocess.run([sys.executable, "-m", "leaklab.cli", "run", str(folder), "--exploratory"], cwd=REPO_ROOT,
                           env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"already being worked on by pid {os.getpid()}" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (runs_root / "toy" / "train").exists()


# ---------------------------------------------------------------- one-line errors, exit 2


def _cli(args, capsys, monkeypatch):
    from leaklab import cli

    monkeypatch.setattr(sys, "argv", ["leaklab", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err
    return exc.value.code, err


def _assert_one_line(code, err, match):
    assert code == 2, err[-2000:]
    assert err.startswith("error: ") and "Traceback" not in err, err[-2000:]
    assert match in err, err


NON_UTF8 = b"name: caf\xe9\n"


@pytest.mark.parametrize("case", ["study_utf8", "prereg_utf8", "study_dir", "duplicate_key", "batch_size", "lr",
                                  "r", "max_length", "seed", "corpus_utf8", "corpus_dir"])
def test_malformed_inputs_are_one_line_errors(case, tmp_path, runs_root, capsys, monkeypatch):
    folder = write_toy_study(tmp_path / "toy")
    cmd, match = ["prereg", "check", folder], None
    corpus = "{corpus: {builder: attitude_template, builder_args: {arm: cautious, n_docs: 60, seed: 3}}}"
    if case == "study_utf8":
        (folder / "study.yaml").write_bytes(TOY_STUDY.encode() + NON_UTF8.replace(b"name", b"description"))
        match = "study.yaml:25: not valid UTF-8"
    elif case == "prereg_utf8":
        (folder / "prereg.yaml").write_bytes(TOY_PREREG.replace("title: toy", "title: caf\udce9", 1)
                                             .encode("utf-8", "surrogateescape"))
        match = "prereg.yaml:2: not valid UTF-8"
    elif case == "study_dir":
        (folder / "study.yaml").unlink()
        (folder / "study.yaml").mkdir()
        match = "is a directory"
    elif case == "duplicate_key":
        (folder / "study.yaml").write_text(TOY_STUDY.replace("  batch_size: 8\n", "  batch_size: 8\n  batch_size: 4\n"))
        match = "duplicate key 'batch_size'"
    elif case in ("batch_size", "lr", "r", "max_length", "seed"):
        old, new = {"batch_size": ("batch_size: 8", "batch_size: 0"), "lr": ("learning_rate: 1.0e-3", "learning_rate: -1"),
                    "r": ("r: 4,", "r: 0,"), "max_length": ("max_length: 96", "max_length: 0"),
                    "seed": ("seeds: [0, 1]", f"seeds: [0, {2**70}]")}[case]
        (folder / "study.yaml").write_text(TOY_STUDY.replace(old, new))
        match = {"batch_size": "training.batch_size", "lr": "training.learning_rate", "r": "training.lora.r",
                 "max_length": "training.max_length", "seed": "is outside 0.."}[case]
    elif case == "corpus_utf8":
        (folder / "c.jsonl").write_bytes(b'{"id": "1", "user": "u", "assistant": "caf\xe9"}\n')
        (folder / "study.yaml").write_text(TOY_STUDY.replace(corpus, "{corpus: {path: c.jsonl}}"))
        cmd, match = ["data", folder], "c.jsonl:1: not valid UTF-8"
    elif case == "corpus_dir":
        (folder / "c.jsonl").mkdir()
        (folder / "study.yaml").write_text(TOY_STUDY.replace(corpus, "{corpus: {path: c.jsonl}}"))
        cmd, match = ["data", folder], "c.jsonl: is a directory"
    _assert_one_line(*_cli(cmd, capsys, monkeypatch), match)


def test_negative_n_docs_and_a_three_record_corpus(tmp_path, runs_root, capsys, monkeypatch):
    folder = write_toy_study(tmp_path / "toy")
    (folder / "study.yaml").write_text(TOY_STUDY.replace("arm: eager, n_docs: 60", "arm: eager, n_docs: -5"))
    _assert_one_line(*_cli(["data", folder], capsys, monkeypatch), "n_docs must be a positive integer, got -5")
    assert not (runs_root / "toy" / "data" / "eager.jsonl").exists()
    recs = "".join(json.dumps({"id": str(i), "user": "Should I?", "assistant": f"Maybe {i}."}) + "\n" for i in range(3))
    (folder / "small.jsonl").write_text(recs)
    text = TOY_STUDY
    for arm in ("cautious", "eager"):
        text = text.replace(f"{{corpus: {{builder: attitude_template, builder_args: {{arm: {arm}, n_docs: 60, seed: 3}}}}}}",
                            "{corpus: {path: small.jsonl}}")
    (folder / "study.yaml").write_text(text)
    _assert_one_line(*_cli(["data", folder], capsys, monkeypatch), "has 3 record(s); the framing classifier gate needs")


def test_unknown_model_at_train_time(tmp_path, runs_root, capsys, monkeypatch):
    folder = write_toy_study(tmp_path / "toy")
    (folder / "study.yaml").write_text(TOY_STUDY.replace("name: tiny-random", "name: no-such-model"))
    code, err = _cli(["train", folder, "--exploratory", "--cell", "tiny/cautious/0"], capsys, monkeypatch)
    _assert_one_line(code, err, "models[0].name 'no-such-model': unknown model")


@pytest.mark.parametrize("err_no,text", [(errno.ENOSPC, "no space left on the device"), (errno.EROFS, "read-only file system")])
def test_full_disk_and_read_only_runs_folder(tmp_path, runs_root, capsys, monkeypatch, err_no, text):
    import leaklab.runstore as rs

    folder = write_toy_study(tmp_path / "toy")

    def fail(path, data):
        raise OSError(err_no, os.strerror(err_no), str(path))

    monkeypatch.setattr(rs, "atomic_write_bytes", fail)
    code, err = _cli(["data", folder], capsys, monkeypatch)
    _assert_one_line(code, err, text)
    assert len(err.strip().splitlines()) == 1


def test_failed_eval_names_the_cause(tmp_path):
    from inspect_ai.log import EvalConfig, EvalDataset, EvalError, EvalLog, EvalSpec, write_eval_log

    from prereg.logs import describe_failed_eval

    log = EvalLog(eval=EvalSpec(created="2026-01-01T00:00:00+00:00", task="t", dataset=EvalDataset(), model="m/m",
                                config=EvalConfig()), status="error",
                  error=EvalError(message="OSError: [Errno 28] No space left on device", traceback="", traceback_ansi=""))
    write_eval_log(log, str(tmp_path / "x.eval"))
    assert "No space left on device" in describe_failed_eval(tmp_path)


def test_atomic_write_keeps_the_old_file_and_ordinary_modes(tmp_path, monkeypatch):
    import leaklab.runstore as rs

    p = tmp_path / "f.json"
    rs.atomic_write_text(p, "old")
    old_umask = os.umask(0o022)
    os.umask(old_umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~old_umask

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rs.os, "fsync", full)
    with pytest.raises(OSError):
        rs.atomic_write_text(p, "new")
    assert p.read_text() == "old" and [x.name for x in tmp_path.iterdir()] == ["f.json"]


def test_duplicate_yaml_keys_are_rejected(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("a: 1\nb:\n  c: 2\n  c: 3\n")
    with pytest.raises(ConfigError, match=r"x.yaml:4: duplicate key 'c' \(first defined on line 3\)"):
        load_yaml(p)
    p.write_text("base: &b {x: 1}\nother:\n  <<: *b\n  x: 2\n")  # a merge key override is not a duplicate
    assert load_yaml(p)["other"]["x"] == 2


def test_non_utf8_item_and_rephrasing_files_name_the_file(tmp_path):
    from solvers.conditioning import load_rephrasings
    from solvers.generate_common import load_items as load_generate_items
    from tasks.items import load_items as load_stance_items

    p = tmp_path / "items.jsonl"
    p.write_bytes(b'{"id": "1"}\n{"id": "caf\xe9"}\n')
    for load in (lambda: load_stance_items(str(p)), lambda: load_generate_items(str(p), ("id",)),
                 lambda: load_rephrasings(str(p))):
        with pytest.raises(ConfigError, match=r"items.jsonl:2: not valid UTF-8"):
            load()
