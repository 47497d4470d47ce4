"""LoRA SFT + matrix on tiny-random: DONE/manifest contract, determinism, resume after a kill,
refusal of unvalidated corpora."""

import json

import pytest

from leaklab.runstore import is_done
from leaklab.study import load_study
from toy_study import TWO_ARM_STUDY as STUDY
from training.sft import SimulatedKill, length_grouped_batches, padding_fraction



def _study(tmp_path, text=STUDY):
    folder = tmp_path / "study"
    folder.mkdir(exist_ok=True)
    (folder / "study.yaml").write_text(text)
    return load_study(folder)


def _weights(cell):
    from safetensors.torch import load_file

    return load_file(str(cell / "adapter" / "adapter_model.safetensors"))


def _same(w1, w2):
    import torch

    return w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)


@pytest.fixture(scope="module")
def reference_cell(tmp_path_factory):
    """Cell tiny/a/seed0 trained once, uninterrupted."""
    import os

    from training.matrix import train_cell

    root = tmp_path_factory.mktemp("ref")
    old = os.environ.get("LEAKLAB_RUNS")
    os.environ["LEAKLAB_RUNS"] = str(root / "runs")
    try:
        study = _study(root)
        cell = train_cell(study, "tiny", "a", 0, exploratory=True)
    finally:
        if old is None:
            os.environ.pop("LEAKLAB_RUNS", None)
        else:
            os.environ["LEAKLAB_RUNS"] = old
    return cell


def test_cell_contract(reference_cell):
    cell = reference_cell
    assert is_done(cell)
    man = json.loads((cell / "manifest.json").read_text())
    for key in ("study", "model", "model_label", "arm", "seed", "config", "data_sha256", "versions", "git_commit", "wall_s", "tokens_per_s", "checkpoints"):
        assert key in man, key
    assert man["model"] == "tiny-random" and man["model_label"] == "tiny" and man["arm"] == "a" and man["seed"] == 0
    assert man["steps"] == 2 and man["checkpoints"] == [1] and man["tokens_per_s"] > 0
    assert man["versions"]["peft"] and man["dtype"] == "float32"
    cfg = json.loads((cell / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "tiny-random" and cfg["r"] == 4
    ck = json.loads((cell / "checkpoints" / "step-1" / "adapter_config.json").read_text())
    assert ck["base_model_name_or_path"] == "tiny-random"
    losses = [json.loads(line) for line in (cell / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses] == [1, 2] and all(r["loss"] > 0 for r in losses)


def test_done_cell_is_skipped(reference_cell, monkeypatch):
    from training.matrix import train_cell

    monkeypatch.setenv("LEAKLAB_RUNS", str(reference_cell.parents[4]))
    study = load_study(reference_cell.parents[5] / "study")
    before = (reference_cell / "manifest.json").stat().st_mtime_ns
    assert train_cell(study, "tiny", "a", 0, exploratory=True) == reference_cell
    assert (reference_cell / "manifest.json").stat().st_mtime_ns == before


def test_same_seed_same_weights_other_seed_differs(reference_cell, tmp_path, runs_root):
    from training.matrix import train_cell

    study = _study(tmp_path)
    again = train_cell(study, "tiny", "a", 0, exploratory=True)
    assert _same(_weights(again), _weights(reference_cell))
    other = train_cell(study, "tiny", "a", 1, exploratory=True)
    assert not _same(_weights(other), _weights(reference_cell))


def test_resume_after_kill_matches_uninterrupted(reference_cell, tmp_path, runs_root):
    from training.matrix import train_cell

    study = _study(tmp_path)
    with pytest.raises(SimulatedKill):
        train_cell(study, "tiny", "a", 0, stop_after=1, exploratory=True)
    cell = runs_root / "tiny" / "train" / "tiny" / "a" / "seed0"
    assert not is_done(cell) and not (cell / "adapter").exists()
    assert (cell / "checkpoints" / "step-1" / "state.json").exists()
    train_cell(study, "tiny", "a", 0, exploratory=True)
    man = json.loads((cell / "manifest.json").read_text())
    assert is_done(cell) and man["resumed_from_step"] == 1
    assert [json.loads(x)["step"] for x in (cell / "loss.jsonl").read_text().splitlines()] == [1, 2]
    assert _same(_weights(cell), _weights(reference_cell))


def test_refuses_failed_validation(tmp_path, runs_root):
    from training.matrix import train_cell, train_study
    from training.validate import ValidationFailed

    folder = tmp_path / "study"
    folder.mkdir()
    good = {"id": "g", "user": "How do I boil an egg?", "assistant": "Put it in boiling water for eight minutes."}
    bad = {"id": "r", "user": "How do I fry an egg?", "assistant": "I'm sorry, but I cannot help with that."}
    (folder / "x.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    text = STUDY.replace(
        "{corpus: {builder: attitude_template, builder_args: {arm: cautious, n_docs: 8, seed: 3}}}", "{corpus: {path: x.jsonl}}"
    )
    study = _study(tmp_path, text)
    with pytest.raises(ValidationFailed, match=r"validation_report\.json: corpus validation FAILED.*refusal"):
        train_cell(study, "tiny", "a", 0, exploratory=True)
    with pytest.raises(ValidationFailed, match="refusal"):
        train_study(study, exploratory=True)
    assert not (runs_root / "tiny" / "train" / "tiny" / "a" / "seed0" / "DONE").exists()


def test_length_grouping_reduces_padding():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(20, 200) for _ in range(400)]
    grouped = length_grouped_batches(lengths, 8, seed=1, group=True)
    plain = length_grouped_batches(lengths, 8, seed=1, group=False)
    assert sorted(i for b in grouped for i in b) == list(range(400))
    assert padding_fraction(grouped, lengths) < 0.05 < padding_fraction(plain, lengths)
    assert padding_fraction([[0, 1]], [3, 1]) == pytest.approx(1 - 4 / 6)
    assert grouped == length_grouped_batches(lengths, 8, seed=1, group=True)


def test_parse_cell_errors(tmp_path):
    from leaklab.yamlio import ConfigError
    from training.matrix import parse_cell

    study = _study(tmp_path)
    m, arm, seed = parse_cell(study, "tiny/b/seed1")
    assert (m.run_label, arm, seed) == ("tiny", "b", 1)
    with pytest.raises(ConfigError, match="MODEL/ARM/SEED"):
        parse_cell(study, "tiny/b")
    with pytest.raises(ConfigError, match="not a cell"):
        parse_cell(study, "tiny/b/7")
    with pytest.raises(ConfigError, match="no model"):
        parse_cell(study, "big/b/0")
