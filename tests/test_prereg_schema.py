"""Prereg schema: strict keys with file:line, cross-checks against the study, parsed helpers."""

import shutil
from pathlib import Path

import pandas as pd
import pytest

from leaklab.study import REPO_ROOT
from leaklab.yamlio import ConfigError
from prereg import PreregError, load_prereg
from prereg.schema import Threshold, parse_predicate

DEMO = REPO_ROOT / "studies" / "attitude"  # the attitude design: combined and per-arm contrasts


@pytest.fixture
def demo_copy(tmp_path):
    d = tmp_path / "demo"
    shutil.copytree(DEMO, d, ignore=shutil.ignore_patterns("prereg.lock.json", "prereg.deviations.jsonl"))
    return d


def _edit(folder: Path, old: str, new: str, count: int = 1):
    p = folder / "prereg.yaml"
    text = p.read_text()
    assert old in text, old
    p.write_text(text.replace(old, new, count))


def _line_of(folder: Path, needle: str) -> int:
    return next(i for i, ln in enumerate((folder / "prereg.yaml").read_text().splitlines(), 1) if needle in ln)


def test_demo_prereg_loads_and_parses_contrasts():
    pr = load_prereg(DEMO)
    h1 = pr.hypothesis("H1")
    assert (h1.contrast.kind, h1.contrast.plus, h1.contrast.minus) == ("combined_directional", "eager", "cautious")
    h2 = pr.hypothesis("H2")
    assert (h2.contrast.kind, h2.contrast.plus, h2.contrast.minus) == ("difference", "cautious", "neutral")
    assert pr.multiplicity.families[h2.family] == "holm"
    assert all(h.family in pr.multiplicity.families for h in pr.hypotheses)


def test_unknown_key_names_key_and_line(demo_copy):
    _edit(demo_copy, "missing_data: >", "mising_data_typo: 1\nmissing_data: >")
    with pytest.raises(PreregError) as ei:
        load_prereg(demo_copy)
    assert f"prereg.yaml:{_line_of(demo_copy, 'mising_data_typo')}: unknown key 'mising_data_typo'" in str(ei.value)
    assert isinstance(ei.value, ConfigError)


def test_nested_unknown_key(demo_copy):
    _edit(demo_copy, "  n_resamples: 10000", "  n_resample: 10000")
    with pytest.raises(PreregError, match=r"unknown key 'frequentist.n_resample'"):
        load_prereg(demo_copy)


@pytest.mark.parametrize(
    "old,new,message",
    [
        ("estimand: cautious - neutral", "estimand: cautious - lazy", r"arm 'lazy' is not an arm of the study"),
        ("estimand: cautious - neutral", "estimand: cautious-neutral", r"must be 'A - B'"),
        ("estimand: cautious - neutral", "estimand: neutral - neutral", r"contrasts a group with itself"),
        ("    measure: letter_logprob\n    item_set: target", "    measure: vibes\n    item_set: target",
         r"measure 'vibes' on item set 'target' is not evaluated"),
        ("    item_set: target\n    estimand: cautious", "    item_set: heldout\n    estimand: cautious",
         r"item set 'heldout' is not evaluated"),
        ("    family: per_arm", "    family: secondary_family", r"family 'secondary_family' has no method"),
        ('predicate: "parsed == False"', 'predicate: "parsed is False"', r"must be 'field OP literal'"),
        ("{dist: normal, params: {mu: 0.0, sigma: 2.5}}", "{dist: normal, params: {mu: 0.0, scale: 2.5}}",
         r"normal prior needs exactly params \['mu', 'sigma'\]"),
        ("direction: negative", "direction: down", r"hypotheses.1.direction"),
        ("data_status: prior_to_creation", "data_status: before", r"data_status"),
        ("design: study.yaml", "design: other.yaml", r"is not this study's study.yaml"),
    ],
)
def test_bad_prereg_gives_clear_error(demo_copy, old, new, message):
    _edit(demo_copy, old, new)
    with pytest.raises(PreregError, match=message) as ei:
        load_prereg(demo_copy)
    assert "prereg.yaml" in str(ei.value)


def test_cross_check_error_has_line(demo_copy):
    _edit(demo_copy, "estimand: cautious - neutral", "estimand: cautious - lazy")
    with pytest.raises(PreregError) as ei:
        load_prereg(demo_copy)
    assert f"prereg.yaml:{_line_of(demo_copy, 'cautious - lazy')}:" in str(ei.value)


def test_missing_prereg_is_error(tmp_path):
    shutil.copy(DEMO / "study.yaml", tmp_path / "study.yaml")
    with pytest.raises(PreregError, match="no prereg.yaml"):
        load_prereg(tmp_path)


def test_predicates_and_thresholds():
    p = parse_predicate("parsed == False")
    assert (p.field, p.op, p.value) == ("parsed", "==", False)
    frame = pd.DataFrame({"parsed": [True, False, True], "value": [0.5, float("nan"), -2.0], "arm": ["a", "b", "c"]})
    assert p.mask(frame).tolist() == [False, True, False]
    assert parse_predicate("value < -1").mask(frame).tolist() == [False, False, True]
    assert parse_predicate("arm != 'b'").mask(frame).tolist() == [True, False, True]
    with pytest.raises(ValueError, match="needs a number"):
        parse_predicate("arm < 'b'")
    with pytest.raises(PreregError, match="column 'coherence'"):
        parse_predicate("coherence < 50").mask(frame)
    # EM thresholds: the operator matters at the boundary
    assert Threshold(operator=">", value=50).holds(50.0) is False
    assert Threshold(operator=">=", value=50).holds(50.0) is True
    assert Threshold(operator="<", value=30).holds(29.9) is True


def test_nan_is_rejected_at_load(demo_copy):
    _edit(demo_copy, "gates: {rhat_max: 1.01,", "gates: {rhat_max: .nan,")
    with pytest.raises(PreregError, match=r"bayesian.gates.rhat_max"):
        load_prereg(demo_copy)


INOC = REPO_ROOT / "studies" / "inoculation"


@pytest.mark.parametrize(
    "old,new,message",
    [
        ("    arm: base\n", "    arm: fixed\n", r"E1: '<condition>@<arm>' conditions exist only on the base model"),
        ("estimand: training@fixed - default", "estimand: training@control - default",
         r"condition 'training@control' is not an eval condition"),
    ],
)
def test_expanded_training_conditions(tmp_path, old, new, message):
    """An arm_training condition is `training@<framed arm>` on the base model, nowhere else."""
    d = tmp_path / "inoculation"
    shutil.copytree(INOC, d, ignore=shutil.ignore_patterns("prereg.lock.json", "prereg.deviations.jsonl"))
    load_prereg(d)  # as shipped: E1 = base, training@fixed - default
    _edit(d, old, new)
    with pytest.raises(PreregError, match=message):
        load_prereg(d)
