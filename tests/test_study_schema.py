"""study.yaml schema: strict keys with file:line errors, cross-checks, path resolution."""

import textwrap

import pytest

from leaklab.study import load_study
from leaklab.yamlio import ConfigError

BASE = """\
name: toy
family: attitude
models:
  - name: tiny-random
arms:
  a: {corpus: {builder: attitude_template, builder_args: {arm: cautious}}}
  ref: {}
reference_arm: ref
seeds: [0]
eval:
  - task: tasks/stance.py@letter_logprob
    item_set: target
    args: {items: data/attitude/target.jsonl}
"""


def write(tmp_path, text):
    d = tmp_path / "toy"
    d.mkdir(exist_ok=True)
    (d / "study.yaml").write_text(textwrap.dedent(text))
    return d


def test_demo_study_loads():
    s = load_study("studies/demo")
    assert s.name == "demo"
    assert s.spec.reference_arm == "plain"
    assert len(s.cells()) == 2 * 3  # trait / plain x 3 seeds


def test_minimal_study_and_untrained_arm(tmp_path):
    s = load_study(write(tmp_path, BASE))
    # the untrained reference arm has no corpus, so only arm 'a' makes cells
    assert [(m.run_label, arm, seed) for m, arm, seed in s.cells()] == [("tiny-random", "a", 0)]


def test_unknown_key_names_key_and_line(tmp_path):
    d = write(tmp_path, BASE.replace("seeds: [0]", "seeds: [0]\nlearnin_rate: 3"))
    with pytest.raises(ConfigError) as e:
        load_study(d)
    msg = str(e.value)
    assert "learnin_rate" in msg and "study.yaml:10" in msg and "unknown key" in msg


def test_nested_unknown_key_line(tmp_path):
    d = write(tmp_path, BASE.replace("    item_set: target", "    item_set: target\n    item_sets: x"))
    with pytest.raises(ConfigError) as e:
        load_study(d)
    assert "eval.0.item_sets" in str(e.value) and "study.yaml:13:" in str(e.value)


def test_reference_arm_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="reference_arm 'nope'"):
        load_study(write(tmp_path, BASE.replace("reference_arm: ref", "reference_arm: nope")))


def test_undeclared_condition(tmp_path):
    d = write(tmp_path, BASE + "    conditions: [training]\n")
    with pytest.raises(ConfigError, match="condition 'training'"):
        load_study(d)


def test_seeded_epochs_refused_under_vllm(tmp_path):
    """vLLM seeds a request from the seed alone: seeded epochs would repeat one sample per prompt."""
    seeded = BASE + "    seed: 7\n    epochs: 3\n"
    assert load_study(write(tmp_path, seeded)).spec.eval[0].seed == 7  # our provider: distinct streams
    with pytest.raises(ConfigError, match="eval\\[0\\]: seed with epochs 3 under backend vllm"):
        load_study(write(tmp_path, seeded + "backend: vllm\n"))
    load_study(write(tmp_path, BASE + "    seed: 7\nbackend: vllm\n"))


def test_fixed_prefix_needs_text(tmp_path):
    d = write(tmp_path, BASE.replace("  ref: {}", "  ref: {conditioning: {prefix_mode: fixed}}"))
    with pytest.raises(ConfigError, match="needs user_prefix"):
        load_study(d)


def test_missing_corpus_file(tmp_path):
    d = write(tmp_path, BASE.replace("{builder: attitude_template, builder_args: {arm: cautious}}", "{path: corpus.jsonl}"))
    with pytest.raises(ConfigError, match="corpus.jsonl' does not exist"):
        load_study(d)


def test_yaml_syntax_error_names_line(tmp_path):
    d = write(tmp_path, BASE + "  - task: [unclosed\n")
    with pytest.raises(ConfigError, match=r"study\.yaml:\d+: invalid YAML"):
        load_study(d)


def test_resolve_paths(tmp_path):
    s = load_study(write(tmp_path, BASE))
    assert s.resolve("data/attitude/target.jsonl").parts[-3:] == ("data", "attitude", "target.jsonl")
    assert s.resolve("local.txt") == s.folder / "local.txt"
