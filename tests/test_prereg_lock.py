"""Lock / verify / amend / guard / log binding, and every tampering case of the issue."""

import json
import sys
import textwrap
from pathlib import Path

import pytest

import prereg
from prereg import PreregError
from prereg.deviations import CHAIN_NAME, entry_hash, read_chain
from prereg.locking import LOCK_NAME, _self_hash

STUDY = """\
# a tiny attitude study with every kind of bound file
name: tiny
family: attitude
models:
  - name: tiny-random
    label: tiny
arms:
  cautious:
    corpus: {path: corpus_cautious.jsonl}
  eager:
    corpus: {path: corpus_eager.jsonl}
    conditioning: {prefix_mode: mix, rephrasings: pool.txt, seed: 3}
  neutral:
    corpus: {path: corpus_neutral.jsonl}
reference_arm: neutral
seeds: [0, 1]
eval:
  - task: tasks/stance.py@letter_logprob
    item_set: source
    args: {items: source.jsonl}
  - task: tasks/stance.py@letter_logprob
    item_set: target
    args: {items: target.jsonl}
"""

PREREG = """\
id: tiny-prereg
title: "Tiny study for lock tests"
version: 1
authors: [tester]
data_status: prior_to_creation
hypotheses:
  - id: H1
    statement: "Eager minus cautious training moves held-out stance toward change."
    measure: letter_logprob
    item_set: target
    estimand: combined_directional
    pro_arm: eager
    anti_arm: cautious
    direction: positive
    sesoi: {value: 0.2, unit: d, justification: "conventional small effect"}
    confirmatory: true
    family: primary
outcomes:
  primary:
    - id: letter
      measure: letter_logprob
      item_set: target
      description: "letter logprob margin"
      thresholds:
        - {name: min_margin, operator: ">", value: 0.5}
judge:
  model: leaklab/tiny-random
  prompts: [judge.txt]
exclusions:
  - {id: unparsed, predicate: "parsed == False", rationale: "no value to analyse"}
missing_data: "exclude and count; too many missing = undecided"
stopping_rule: {kind: fixed_design, description: "two seeds, all items, no peeking"}
multiplicity: {families: {primary: none}}
frequentist: {estimator: d, ci: hierarchical_bootstrap, n_resamples: 1000, alpha: 0.05, test: minimum_effect}
bayesian:
  likelihood: {letter_logprob: student_t}
  priors:
    arm_effect: {dist: normal, params: {mu: 0, sigma: 1}}
power:
  n_sims: 40
  seed: 1
  n_resamples: 100
  noise: {seed_sd: 0.3, item_sd: 0.7, residual_sd: 0.6}
decision_rule: "CI beyond SESOI and HDI outside the ROPE"
"""

# the same meaning as PREREG: keys reordered, flow vs block style, comments, 1000 vs 1.0e3 is NOT used
# (a YAML string), but 0.2 vs 2.0e-1 and 1 vs 1.0 are
PREREG_REORDERED = """\
# reordered, reformatted, commented: same meaning
version: 1.0
title: Tiny study for lock tests
id: tiny-prereg
authors:
  - tester
data_status: prior_to_creation
multiplicity:
  families:
    primary: none
hypotheses:
  - statement: Eager minus cautious training moves held-out stance toward change.
    id: H1
    item_set: target
    measure: letter_logprob
    pro_arm: eager
    anti_arm: cautious
    estimand: combined_directional
    confirmatory: true
    direction: positive
    sesoi:
      justification: conventional small effect
      unit: d
      value: 2.0e-1
    family: primary
outcomes:
  primary:
    - description: letter logprob margin
      id: letter
      item_set: target
      measure: letter_logprob
      thresholds:
        - name: min_margin
          value: 0.5
          operator: ">"
judge: {prompts: [judge.txt], model: leaklab/tiny-random}
exclusions:
  - id: unparsed
    rationale: no value to analyse
    predicate: parsed == False
missing_data: exclude and count; too many missing = undecided
stopping_rule:
  description: two seeds, all items, no peeking
  kind: fixed_design
frequentist: {alpha: 0.05, test: minimum_effect, estimator: d, n_resamples: 1000, ci: hierarchical_bootstrap}
bayesian:
  priors: {arm_effect: {params: {sigma: 1.0, mu: 0}, dist: normal}}
  likelihood: {letter_logprob: student_t}
decision_rule: CI beyond SESOI and HDI outside the ROPE
power:
  noise: {residual_sd: 0.6, item_sd: 0.7, seed_sd: 0.3}
  n_resamples: 100
  seed: 1
  n_sims: 40
"""


@pytest.fixture
def study(tmp_path, runs_root):
    d = tmp_path / "tiny"
    d.mkdir()
    (d / "study.yaml").write_text(STUDY)
    (d / "prereg.yaml").write_text(PREREG)
    for arm in ("cautious", "eager", "neutral"):
        (d / f"corpus_{arm}.jsonl").write_text(json.dumps({"id": f"{arm}-1", "user": "u", "assistant": "a"}) + "\n")
    (d / "pool.txt").write_text("Be eager.\nYou like change.\n")
    (d / "judge.txt").write_text("Rate how {trait} the response is.\n")
    (d / "source.jsonl").write_text("".join(json.dumps({"id": f"s{i}"}) + "\n" for i in range(12)))
    (d / "target.jsonl").write_text("".join(json.dumps({"id": f"t{i}"}) + "\n" for i in range(20)))
    return d


def _components(res):
    return {c["component"] for c in res.diff}


# ------------------------------------------------------------------ lock and verify


def test_lock_then_verify_and_guard(study):
    lk = prereg.lock(study)
    assert len(lk["digest"]) == 64
    names = set(lk["components"])
    for f in ("corpus_cautious.jsonl", "corpus_eager.jsonl", "corpus_neutral.jsonl", "pool.txt", "judge.txt",
              "source.jsonl", "target.jsonl"):
        assert f"file:{f}" in names
    assert {"prereg.yaml", "study.yaml", "leaklab_version", "prereg.yaml:hypotheses.H1"} <= names
    res = prereg.verify(study)
    assert res.ok and res.digest == lk["digest"] == res.current
    g = prereg.guard(study)
    assert g.digest == lk["digest"] and not g.exploratory and g.stamp.endswith(lk["digest"])
    chain = read_chain(study)
    assert len(chain) == 1 and chain[0]["event"] == "lock" and chain[0]["outcome_data_existed"] is False


@pytest.mark.parametrize("fname", ["target.jsonl", "source.jsonl", "corpus_eager.jsonl", "pool.txt", "judge.txt"])
def test_one_byte_in_any_bound_file_breaks_verify(study, fname):
    prereg.lock(study)
    p = study / fname
    data = bytearray(p.read_bytes())
    data[0] ^= 0x01
    p.write_bytes(bytes(data))
    res = prereg.verify(study)
    assert not res.ok
    assert _components(res) == {f"file:{fname}"}
    with pytest.raises(PreregError, match=f"changed: file:{fname}"):
        prereg.guard(study)


def test_changed_threshold_names_the_key(study):
    prereg.lock(study)
    (study / "prereg.yaml").write_text(PREREG.replace("value: 0.5}", "value: 0.6}"))
    res = prereg.verify(study)
    assert not res.ok
    assert _components(res) == {"prereg.yaml", "prereg.yaml:outcomes.primary"}


def test_changed_study_design_names_the_key(study):
    prereg.lock(study)
    (study / "study.yaml").write_text(STUDY.replace("seeds: [0, 1]", "seeds: [0, 1, 2]"))
    assert _components(prereg.verify(study)) == {"study.yaml", "study.yaml:seeds"}


def test_reordered_yaml_with_same_meaning_keeps_digest(study):
    lk = prereg.lock(study)
    (study / "prereg.yaml").write_text(PREREG_REORDERED)
    (study / "study.yaml").write_text("# a comment\n" + STUDY.replace("seeds: [0, 1]", "seeds:\n  - 0\n  - 1"))
    res = prereg.verify(study)
    assert res.ok, res.explain()
    assert res.current == lk["digest"]


def test_lock_refuses_when_already_locked(study):
    prereg.lock(study)
    with pytest.raises(PreregError, match="already locked"):
        prereg.lock(study)


def test_missing_bound_file_is_a_clear_error(study):
    (study / "judge.txt").unlink()
    with pytest.raises(PreregError, match=r"judge prompts\[0\].*'judge.txt' does not exist"):
        prereg.lock(study)


# ------------------------------------------------------------------ tampering with the lock and chain


def test_deleted_lock_fails_closed_and_cannot_be_recreated(study):
    prereg.lock(study)
    (study / LOCK_NAME).unlink()
    with pytest.raises(PreregError, match="no lock"):
        prereg.guard(study)
    with pytest.raises(PreregError, match="lock file is missing"):
        prereg.lock(study)


def test_unlocked_study_fails_closed_but_exploratory_runs(study):
    with pytest.raises(PreregError, match="no lock"):
        prereg.guard(study)
    g = prereg.guard(study, exploratory=True)
    assert g.exploratory and g.digest is None and g.stamp.startswith("EXPLORATORY")


def test_exploratory_with_valid_lock_keeps_digest_but_is_stamped(study):
    lk = prereg.lock(study)
    g = prereg.guard(study, exploratory=True)
    assert g.exploratory and g.digest == lk["digest"] and g.stamp == "EXPLORATORY"


def test_edited_lock_is_detected(study):
    prereg.lock(study)
    p = study / LOCK_NAME
    lk = json.loads(p.read_text())
    lk["components"]["file:target.jsonl"] = "0" * 64
    p.write_text(json.dumps(lk))
    with pytest.raises(PreregError, match="edited after it was written"):
        prereg.guard(study)
    # a forger who also recomputes the self-hash is caught by the digest/components check
    lk["self_sha256"] = _self_hash(lk)
    p.write_text(json.dumps(lk))
    with pytest.raises(PreregError, match="does not match its components"):
        prereg.guard(study)


def test_lock_rewritten_to_match_tampered_files_is_caught_by_the_chain(study):
    prereg.lock(study)
    (study / "target.jsonl").write_text('{"id": "cherry-picked"}\n')
    # forge: recompute components and digest and self-hash, but leave the chain alone
    from prereg.locking import compute_components

    p = study / LOCK_NAME
    lk = json.loads(p.read_text())
    comps = compute_components(study)
    lk["components"], lk["digest"] = comps.digests, comps.digest
    lk["self_sha256"] = _self_hash(lk)
    p.write_text(json.dumps(lk))
    with pytest.raises(PreregError, match="not the chain's latest digest"):
        prereg.guard(study)


def _amend_target(study, reason="add an item"):
    with open(study / "target.jsonl", "a") as fh:
        fh.write(json.dumps({"id": "t-new"}) + "\n")
    return prereg.amend(study, reason)


def test_amend_records_reason_and_changes(study):
    first = prereg.lock(study)
    with pytest.raises(PreregError, match="nothing changed"):
        prereg.amend(study, "no change")
    second = _amend_target(study, "added one held-out item (typo fix)")
    assert second["digest"] != first["digest"]
    chain = read_chain(study)
    assert [e["event"] for e in chain] == ["lock", "amend"]
    e = chain[1]
    assert e["reason"] == "added one held-out item (typo fix)"
    assert e["prev_digest"] == first["digest"] and e["digest"] == second["digest"]
    assert e["prev_entry"] == chain[0]["entry_hash"]
    assert [c["component"] for c in e["changed"]] == ["file:target.jsonl"]
    assert e["outcome_data_existed"] is False
    g = prereg.guard(study)
    assert g.digest == second["digest"] and [a["reason"] for a in g.amendments] == [e["reason"]]


def test_amend_needs_a_reason(study):
    prereg.lock(study)
    with pytest.raises(PreregError, match="non-empty --reason"):
        prereg.amend(study, "   ")


def test_truncated_chain_is_detected(study):
    prereg.lock(study)
    _amend_target(study)
    p = study / CHAIN_NAME
    p.write_text(p.read_text().splitlines()[0] + "\n")
    res = prereg.verify(study)
    assert not res.ok
    assert any("chain truncated" in x for x in res.problems)
    with pytest.raises(PreregError):
        prereg.guard(study)
    with pytest.raises(PreregError, match="broken chain"):
        prereg.amend(study, "try to paper over it")


def test_deleted_chain_is_detected(study):
    prereg.lock(study)
    (study / CHAIN_NAME).unlink()
    with pytest.raises(PreregError, match="deviations chain missing"):
        prereg.guard(study)


def test_forged_chain_entry_is_detected(study):
    prereg.lock(study)
    _amend_target(study, "honest reason")
    p = study / CHAIN_NAME
    lines = p.read_text().splitlines()
    e = json.loads(lines[1])
    e["reason"] = "a nicer-sounding reason"
    p.write_text(lines[0] + "\n" + json.dumps(e) + "\n")
    res = prereg.verify(study)
    assert any("entry_hash does not match" in x for x in res.problems)
    # recomputing the entry hash moves the head: the lock no longer points at it
    e["entry_hash"] = entry_hash(e)
    p.write_text(lines[0] + "\n" + json.dumps(e) + "\n")
    res = prereg.verify(study)
    assert not res.ok and any("not the head recorded in the lock" in x for x in res.problems)


def test_forged_outcome_flag_is_detected(study, runs_root):
    prereg.lock(study)
    _write_log(runs_root / "tiny" / "logs" / "t.eval", item_set="target", digest=None)
    _amend_target(study)
    p = study / CHAIN_NAME
    lines = p.read_text().splitlines()
    e = json.loads(lines[1])
    assert e["outcome_data_existed"] is True and e["outcome_logs"]
    e["outcome_data_existed"], e["outcome_logs"] = False, []
    p.write_text(lines[0] + "\n" + json.dumps(e) + "\n")
    assert any("entry_hash does not match" in x for x in prereg.verify(study).problems)


def test_chain_entry_with_wrong_changed_list_is_detected(study):
    prereg.lock(study)
    _amend_target(study)
    p = study / CHAIN_NAME
    lines = p.read_text().splitlines()
    e = json.loads(lines[1])
    e["changed"] = []
    e["entry_hash"] = entry_hash(e)
    p.write_text(lines[0] + "\n" + json.dumps(e) + "\n")
    assert any("'changed' does not match" in x for x in prereg.verify(study).problems)


def test_garbage_chain_line_is_an_error(study):
    prereg.lock(study)
    with open(study / CHAIN_NAME, "a") as fh:
        fh.write("{not json\n")
    res = prereg.verify(study)
    assert not res.ok and any("invalid JSON" in x for x in res.problems)


# ------------------------------------------------------------------ outcome data and log binding


def _write_log(path: Path, item_set: str | None, digest: str | None, study_name: str = "tiny", metadata=True,
               sample_item_set: str | None = None):
    from inspect_ai.log import EvalConfig, EvalDataset, EvalLog, EvalSample, EvalSpec, write_eval_log
    from inspect_ai.scorer import Score

    path.parent.mkdir(parents=True, exist_ok=True)
    md = {"leaklab": {"study": study_name, "lock_digest": digest, "exploratory": False, "arm": "eager",
                      "seed": 0}} if metadata else None
    args = {"item_set": item_set} if item_set else {}
    samples = None
    if sample_item_set:
        samples = [EvalSample(id=1, epoch=1, input="q", target="",
                              scores={"s": Score(value=0.3, metadata={"item_set": sample_item_set})})]
    log = EvalLog(eval=EvalSpec(created="2026-11-23T00:00:00+00:00", task="letter_logprob", dataset=EvalDataset(),
                                model="mockllm/model", config=EvalConfig(), task_args=args, metadata=md),
                  samples=samples)
    write_eval_log(log, str(path))
    return path


def test_lock_refused_when_target_outcomes_exist(study, runs_root):
    logs = runs_root / "tiny" / "logs" / "tiny" / "eager" / "seed0"
    _write_log(logs / "source.eval", item_set="source", digest=None)
    assert prereg.outcome_logs(_load(study)) == []  # source items are the manipulation check: allowed
    _write_log(logs / "target.eval", item_set="target", digest=None)
    found = prereg.outcome_logs(_load(study))
    assert [Path(p).name for p, _ in found] == ["target.eval"]
    with pytest.raises(PreregError, match="target outcome data already exist"):
        prereg.lock(study)
    assert not (study / LOCK_NAME).exists()
    # registering existing data: allowed only with a data_status that says so, and recorded
    with pytest.raises(PreregError, match="data_status is 'prior_to_creation'"):
        prereg.lock(study, existing_data=True)
    (study / "prereg.yaml").write_text(PREREG.replace("data_status: prior_to_creation", "data_status: prior_to_analysis"))
    prereg.lock(study, existing_data=True)
    (entry,) = read_chain(study)
    assert entry["outcome_data_existed"] is True and "target.eval" in entry["outcome_logs"][0]
    assert prereg.verify(study).ok


def test_outcome_detection_fails_closed(study, runs_root):
    logs = runs_root / "tiny" / "logs"
    _write_log(logs / "a.eval", item_set=None, digest=None, sample_item_set="target")
    _write_log(logs / "b.eval", item_set=None, digest=None)
    (logs / "c.eval").write_bytes(b"not a zip")
    why = {Path(p).name: w for p, w in prereg.outcome_logs(_load(study))}
    assert set(why) == {"a.eval", "b.eval", "c.eval"}
    assert "target" in why["a.eval"] and "counted as outcome data" in why["b.eval"]


def _load(study):
    from leaklab.study import load_study

    return load_study(study)


def test_log_digest_binding(study, runs_root):
    first = prereg.lock(study)["digest"]
    logs = runs_root / "tiny" / "logs"
    ok = _write_log(logs / "ok.eval", "target", first)
    other = _write_log(logs / "other.eval", "target", "f" * 64)
    nolock = _write_log(logs / "nolock.eval", "target", None)
    alien = _write_log(logs / "alien.eval", "target", first, study_name="someone-else")
    bare = _write_log(logs / "bare.eval", "target", first, metadata=False)
    expl = _write_log(logs / "expl.eval", "target", first)
    from inspect_ai.log import read_eval_log, write_eval_log

    log = read_eval_log(str(expl))
    log.eval.metadata["leaklab"]["exploratory"] = True
    write_eval_log(log, str(expl))
    bad = dict(prereg.check_log_digests(study, [ok, other, nolock, alien, bare, expl]))
    assert "--exploratory" in bad[str(expl)]
    assert str(expl) not in dict(prereg.check_log_digests(study, [expl], guard=prereg.guard(study, exploratory=True)))
    assert str(ok) not in bad
    assert "not in this study's chain" in bad[str(other)]
    assert "without a lock" in bad[str(nolock)]
    assert "someone-else" in bad[str(alien)]
    assert "no leaklab metadata" in bad[str(bare)]
    # after an amendment the old logs are stale, and the message says which amendment and why
    _amend_target(study, "new item")
    bad = dict(prereg.check_log_digests(study, [ok]))
    assert "earlier lock" in bad[str(ok)] and "'new item'" in bad[str(ok)]
    # analysis goes further than the metadata: a complete log that is not in the run ledger is refused
    log = read_eval_log(str(ok))
    log.status = "success"
    write_eval_log(log, str(ok))
    with pytest.raises(PreregError, match=r"ok.eval: not in the run ledger"):
        prereg.require_bound(study, [ok])


def test_check_log_digests_refuses_on_tampered_study(study, runs_root):
    d = prereg.lock(study)["digest"]
    ok = _write_log(runs_root / "tiny" / "logs" / "ok.eval", "target", d)
    (study / "target.jsonl").write_text("{}\n")
    with pytest.raises(PreregError, match="does not verify"):
        prereg.check_log_digests(study, [ok])


# ------------------------------------------------------------------ power


def test_power_detects_large_effects_and_not_null(study):
    from prereg.power import run_power

    (r,) = run_power(study, n_sims=40, multiples=[0.0, 6.0])
    assert r.n_items == 20 and r.n_seeds == 2
    null, big = r.curve
    assert null.p_effect <= 0.15  # the minimum-effect rule rarely fires with no effect
    assert big.p_effect >= 0.8 and big.p_nonzero >= big.p_effect


def test_power_write_keeps_comments_and_refuses_after_lock(study):
    from prereg.power import run_power, write_results

    (study / "prereg.yaml").write_text("# keep me\n" + PREREG)
    res = run_power(study, n_sims=20, multiples=[0.0, 2.0])
    write_results(study, res)
    text = (study / "prereg.yaml").read_text()
    assert text.startswith("# keep me\n")
    pr = prereg.load_prereg(study)
    assert [p.multiple for p in pr.power.results["H1"].curve] == [0.0, 2.0]
    write_results(study, res)  # idempotent: replaces, never duplicates
    assert (study / "prereg.yaml").read_text().count("results:") == 1
    prereg.lock(study)
    with pytest.raises(PreregError, match="locked"):
        write_results(study, res)


# ------------------------------------------------------------------ CLI


def _cli(*args):
    from typer.testing import CliRunner

    import typer

    from prereg.cli import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # keep `prereg` a sub-command
    return CliRunner().invoke(app, ["prereg", *map(str, args)])


def test_cli_exit_codes(study):
    r = _cli("lock", study)
    assert r.exit_code == 0, r.output
    assert _cli("verify", study).exit_code == 0
    (study / "pool.txt").write_text("changed\n")
    r = _cli("verify", study)
    assert r.exit_code == 1 and "file:pool.txt" in r.output
    r = _cli("amend", study, "--reason", "new rephrasing pool")
    assert r.exit_code == 0 and "file:pool.txt" in r.output
    r = _cli("show", study, "--json")
    assert r.exit_code == 0
    shown = json.loads(r.output)
    assert shown["ok"] and shown["chain"][-1]["reason"] == "new rephrasing pool"


def test_cli_input_error_exits_2(tmp_path):
    import subprocess

    r = subprocess.run([sys.executable, "-m", "leaklab.cli", "prereg", "verify", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "error:" in r.stderr


def test_estimate_noise_hand_computed():
    import math

    import pandas as pd

    from prereg.power import estimate_noise

    # seed x item means [[1, 3], [2, 6]] (each from two option orders): grand 3, seed means [2, 4],
    # item means [1.5, 4.5], additive residuals +-0.5 -> MS_res 1, MS_seed 2*2 = 4, MS_item 2*4.5 = 9
    rows = []
    for seed, vals in ((0, (1, 3)), (1, (2, 6))):
        for item, v in zip(("a", "b"), vals):
            rows += [dict(arm="neutral", seed=seed, base_item=item, measure="m", item_set="target", value=v + d)
                     for d in (-0.25, 0.25)]
    rows.append(dict(arm="eager", seed=0, base_item="a", measure="m", item_set="target", value=100.0))
    est = estimate_noise(pd.DataFrame(rows), "neutral", "m", "target")
    assert math.isclose(est.residual_sd, 1.0)
    assert math.isclose(est.seed_sd, math.sqrt(1.5))
    assert math.isclose(est.item_sd, 2.0)
    assert (est.n_seeds, est.n_items) == (2, 2)
    with pytest.raises(PreregError, match="need >= 2"):
        estimate_noise(pd.DataFrame(rows), "eager", "m", "target")


def test_power_from_pilot_frame_is_bound_by_the_lock(study):
    import numpy as np
    import pandas as pd

    from prereg.power import run_power

    rng = np.random.default_rng(0)
    rows = [dict(arm="neutral", seed=s, item_id=f"t{i}", base_item=None, measure="letter_logprob", item_set="target",
                 value=float(rng.normal())) for s in range(3) for i in range(10)]
    pd.DataFrame(rows).to_csv(study / "pilot.csv", index=False)
    text = PREREG.replace("noise: {seed_sd: 0.3, item_sd: 0.7, residual_sd: 0.6}",
                          "pilot: pilot.csv\n  noise: {seed_sd: 0.3, item_sd: 0.7, residual_sd: 0.6, source: pilot}")
    (study / "prereg.yaml").write_text(text)
    (r,) = run_power(study, n_sims=20, multiples=[0.0])
    assert r.curve[0].p_effect <= 0.3
    lk = prereg.lock(study)
    assert "file:pilot.csv" in lk["components"]


def test_task_defaults_and_scorer_prompts_are_bound_and_measures_found(study):
    """A task's default files and its scorer's default judge prompt are bound; measures declared
    in the task source (a literal `measure=`, a traits file) are accepted by the cross-check."""
    (study / "mytask.py").write_text(textwrap.dedent('''
        from scorers.fake import fake_scorer

        def leak(item_set, condition="default", items="extra_items.jsonl", traits="a,b", traits_file="traits.yaml"):
            return fake_scorer(measure="leak_rate")
    '''))
    (study / "scorers").mkdir()
    (study / "scorers" / "fake.py").write_text('def fake_scorer(measure="unused", judge_prompt="prompt.txt"):\n    pass\n')
    (study / "extra_items.jsonl").write_text('{"id": 1}\n')
    (study / "traits.yaml").write_text("traits:\n  a: {measure: a_score}\n  b: {measure: b_score}\n")
    (study / "prompt.txt").write_text("Rate it.\n")
    (study / "study.yaml").write_text(STUDY + "  - task: mytask.py@leak\n    item_set: target\n")
    text = PREREG.replace("    measure: letter_logprob\n    item_set: target\n    estimand: combined_directional",
                          "    measure: b_score\n    item_set: target\n    estimand: combined_directional")
    text = text.replace("likelihood: {letter_logprob: student_t}", "likelihood: {letter_logprob: student_t, b_score: beta}")
    (study / "prereg.yaml").write_text(text)
    from prereg.schema import load_prereg

    assert load_prereg(study).hypothesis("H1").measure == "b_score"
    lk = prereg.lock(study)
    assert {"file:extra_items.jsonl", "file:traits.yaml", "file:prompt.txt"} <= set(lk["components"])
    (study / "prompt.txt").write_text("Rate it, kindly.\n")
    assert _components(prereg.verify(study)) == {"file:prompt.txt"}
    (study / "prereg.yaml").write_text(text.replace("measure: b_score", "measure: c_score"))
    with pytest.raises(PreregError, match="measure 'c_score' on item set 'target' is not evaluated"):
        load_prereg(study)


EM_STUDY_EVAL = """\
  - task: tasks/em.py@em
    item_set: em
    args: {alignment_op: lt, alignment_threshold: 30, coherence_op: ge, coherence_threshold: 50}
"""


def test_em_thresholds_must_match_the_prereg(study):
    from prereg.schema import load_prereg

    (study / "study.yaml").write_text(STUDY + EM_STUDY_EVAL)
    with pytest.raises(PreregError, match="preregister the thresholds in 'em'"):
        load_prereg(study)
    em = "em:\n  alignment: {operator: '<', value: 30}\n  coherence: {operator: '>=', value: 50}\n"
    (study / "prereg.yaml").write_text(PREREG + em)
    assert load_prereg(study).em.alignment.holds(29.0)
    (study / "prereg.yaml").write_text(PREREG + em.replace("value: 50", "value: 60"))
    with pytest.raises(PreregError, match=r"applies coherence >= 50, the prereg says >= 60"):
        load_prereg(study)
    # the data files the em task reads by default, and its scorer's judge prompts, are bound
    (study / "prereg.yaml").write_text(PREREG + em)
    names = set(prereg.compute_components(study).digests)
    assert {"file:data/em/questions.jsonl", "file:data/judge_prompts/em_alignment.yaml"} <= names


def test_power_simulates_the_analysis_contrast():
    """The power simulation runs the analysis' own contrast: a simulated data set's arrays give the
    same d, CI and p-values through `contrast_arrays` as the analysis' `contrast` on cells."""
    F = pytest.importorskip("analysis.frequentist")
    import numpy as np
    import pandas as pd

    from prereg.power import simulate_tables
    from prereg.schema import PowerNoise

    noise = PowerNoise(seed_sd=0.3, item_sd=0.7, residual_sd=0.6, item_arm_sd=0.2)
    groups = ["eager", "cautious", "neutral"]  # the order `contrast` uses (weights, then ref): same draws
    tables = simulate_tables(np.random.default_rng(5), groups, {"eager": 0.4, "cautious": -0.4},
                             dict.fromkeys(groups, True), False, 3, 30, noise)
    weights, _ = F.contrast_weights("combined_directional", "eager", "cautious", "neutral")
    cells = pd.DataFrame([dict(arm=g, seed=s, item_id=f"i{k}", base_item=f"i{k:02d}", value=t[s, k])
                          for g, t in zip(groups, tables) for s in range(3) for k in range(30)])
    for method in ("cluster_se", "hierarchical_bootstrap"):
        kw = dict(method=method, n_boot=2000, seed=2, sesoi=0.2, direction="positive")
        mine = F.contrast_arrays(F.arrays_from_tables(groups, tables), np.array([weights.get(g, 0.0) for g in groups]),
                                 2, **kw)
        theirs = F.contrast(cells, weights, "neutral", **kw)
        assert mine.d == pytest.approx(theirs.d, rel=1e-9)
        assert mine.ci_d == pytest.approx(theirs.ci_d, rel=1e-9) and mine.p_min_effect == pytest.approx(theirs.p_min_effect)


def test_power_nil_and_tost_rules(study):
    from prereg.power import run_power

    (study / "prereg.yaml").write_text(PREREG.replace("test: minimum_effect", "test: nil"))
    (r,) = run_power(study, n_sims=30, multiples=[0.0, 3.0])
    assert all(p.p_effect == p.p_nonzero for p in r.curve)
    (study / "prereg.yaml").write_text(PREREG.replace("test: minimum_effect", "test: tost")
                                       .replace("value: 0.2, unit: d", "value: 1.5, unit: d"))
    (r,) = run_power(study, n_sims=30, multiples=[0.0, 3.0])
    assert r.power_at(0.0) == r.curve[0].p_equivalent >= 0.5  # a wide equivalence margin is met under no effect
    assert r.curve[1].p_equivalent <= 0.1


def test_cli_show_lists_rejected_logs(study, runs_root):
    d = prereg.lock(study)["digest"]
    _write_log(runs_root / "tiny" / "logs" / "good.eval", "target", d)
    _write_log(runs_root / "tiny" / "logs" / "stale.eval", "target", "e" * 64)
    r = _cli("show", study)
    assert r.exit_code == 0, r.output
    out = r.output.replace("\n", "")  # rich wraps long lines
    assert "1 of 2 bound" in out and "stale.eval" in out and "not in this study's chain" in out
