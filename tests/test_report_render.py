"""Report rendering: guard refusal / EXPLORATORY stamp, honest titles, optional sections,
traceability of every cited file, PNG figures linked by relative paths.

The fixture builds a tiny locked study (its own study.yaml + prereg.yaml, no shared data
files) and writes a hand-made results.json (validated by analysis.results) and a frame.parquet,
so these tests exercise the renderer alone and run in seconds.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pandas as pd
import pytest

STUDY_YAML = """\
name: rt
title: "Report test study (tiny, 3 arms x 2 seeds)"
family: attitude
description: A synthetic study used to test report rendering.
models:
  - name: tiny-random
    label: tiny
arms:
  cautious: {corpus: {path: cautious.jsonl}, description: cautious advice}
  eager: {corpus: {path: eager.jsonl}, description: eager advice}
  neutral: {corpus: {path: neutral.jsonl}, description: neutral advice}
reference_arm: neutral
seeds: [0, 1]
eval:
  - task: tasks/stance.py@letter_logprob
    item_set: target
  - task: tasks/stance.py@letter_logprob
    item_set: source
  - task: tasks/stance.py@forced_choice
    item_set: source
"""

PREREG_YAML = """\
id: rt-prereg
title: "Report test preregistration"
version: 1
authors: ["tests"]
data_status: prior_to_creation
background: Synthetic background for the report test.
hypotheses:
  - id: H1
    statement: Eager rather than cautious training moves held-out stance toward change.
    measure: letter_logprob
    item_set: target
    estimand: combined_directional
    pro_arm: eager
    anti_arm: cautious
    direction: positive
    sesoi: {value: 0.2, unit: d, justification: "conventional small effect size"}
    confirmatory: true
    family: primary
  - id: H2
    statement: Cautious training moves held-out stance against change relative to neutral.
    measure: letter_logprob
    item_set: target
    estimand: cautious - neutral
    direction: negative
    sesoi: {value: 0.2, unit: d, justification: "conventional small effect size"}
    confirmatory: true
    family: primary
  - id: E1
    statement: Exploratory check of the eager arm against neutral on target items.
    measure: letter_logprob
    item_set: target
    estimand: eager - neutral
    direction: positive
    sesoi: {value: 0.2, unit: d, justification: "conventional small effect size"}
    confirmatory: false
    family: exploratory
outcomes:
  primary:
    - id: letter_target
      measure: letter_logprob
      item_set: target
      description: letter log-prob margin on target items
missing_data: Missing values are excluded and counted, never scored as zero.
stopping_rule: {kind: fixed_design, description: "Fixed design with the seeds in study.yaml."}
multiplicity: {families: {primary: holm, exploratory: none}}
frequentist: {n_resamples: 1000, seed: 1}
bayesian:
  likelihood: {letter_logprob: student_t}
  draws: 300
  tune: 300
  chains: 2
power:
  noise: {seed_sd: 0.3, item_sd: 0.7, residual_sd: 0.6}
  results:
    H1:
      {test: minimum_effect, alpha: 0.05, n_items: 10, n_seeds: 2, n_sims: 300, computed_at: "2026-11-23T09:00:00Z",
       curve: [{multiple: 0.0, p_effect: 0.01, p_nonzero: 0.05, p_equivalent: 0.2, mcse: 0.01},
               {multiple: 1.0, p_effect: 0.42, p_nonzero: 0.7, p_equivalent: 0.05, mcse: 0.03},
               {multiple: 2.0, p_effect: 0.86, p_nonzero: 0.97, p_equivalent: 0.0, mcse: 0.02}]}
decision_rule: Supported when the CI and the HDI both lie beyond the SESOI in the predicted direction.
"""

ARMS = ["base", "cautious", "eager", "neutral"]


def _src(**filters):
    return {"frame": "analysis/frame.parquet", "filters": filters, "n_rows": 40, "n_missing": 1}


def _effect(eid, contrast, d, lo, hi, item_set="target", p=0.01, p_adj=0.02):
    return {
        "id": eid, "model_label": "tiny", "measure": "letter_logprob", "item_set": item_set, "condition": "default",
        "contrast": contrast, "arms": contrast.split("-") if "-" in contrast else ["eager", "cautious", "neutral"],
        "reference_arm": "neutral", "estimate": d * 0.5, "d": d, "sd_ref": 0.5, "ci_low_d": lo, "ci_high_d": hi,
        "ci_low": lo * 0.5, "ci_high": hi * 0.5, "p_value": p, "p_adjusted": p_adj, "sesoi_d": 0.2,
        "p_tost": 0.9, "p_min_effect": 0.03, "direction": "positive", "n_boot": 1000, "n_items": 10,
        "n_seeds": {"eager": 2, "cautious": 2, "neutral": 2},
        "source": _src(measure="letter_logprob", item_set=item_set, arm=["eager", "cautious", "neutral"]),
    }


def _bayes(fid, item_set, contrasts, passed=True):
    return {
        "id": fid, "model_label": "tiny", "measure": "letter_logprob", "item_set": item_set, "condition": "default",
        "likelihood": "student_t", "formula": "value ~ arm + (1|seed) + (1|item)", "sampler": {"draws": 300, "chains": 2},
        "fit_seconds": 4.2,
        "diagnostics": {"rhat_max": 1.003 if passed else 1.09, "ess_bulk_min": 800.0, "ess_tail_min": 700.0,
                        "divergences": 0 if passed else 7, "bfmi_min": 0.8, "passed": passed,
                        "failures": [] if passed else ["rhat_max 1.09 > 1.01", "divergences 7 > 0"]},
        "usable": passed, "contrasts": contrasts, "source": _src(measure="letter_logprob", item_set=item_set),
    }


def _contrast(name, m, lo, hi, verdict):
    return {"name": name, "mean": m * 0.5, "hdi_low": lo * 0.5, "hdi_high": hi * 0.5, "mean_d": m, "hdi_low_d": lo,
            "hdi_high_d": hi, "rope": [-0.2, 0.2], "rope_scale": "d", "p_in_rope": 0.01, "p_positive": 0.99,
            "verdict": verdict}


def make_results(*, digest, exploratory=False, supported=True, bayes=True, safety=False, manip_passed=True):
    """A results.json dict in the analysis.results schema, with hand-picked numbers."""
    h1 = (0.61, 0.35, 0.88) if supported else (0.05, -0.2, 0.3)
    h1_verdict = "effect" if supported else "undecided"
    effects = [
        _effect("tiny/letter_logprob/target/default/combined_directional", "combined_directional", *h1),
        _effect("tiny/letter_logprob/target/default/cautious-neutral", "cautious-neutral", -0.12, -0.4, 0.15, p=0.3, p_adj=0.6),
        _effect("tiny/letter_logprob/target/default/eager-neutral", "eager-neutral", 0.33, 0.01, 0.6),
        _effect("tiny/letter_logprob/source/default/combined_directional", "combined_directional", 1.4, 1.0, 1.8, item_set="source"),
    ]
    summaries = []
    for iset in ("target", "source"):
        for i, arm in enumerate(ARMS):
            m = [0.1, -0.2, 0.3, 0.05][i]
            summaries.append({
                "model_label": "tiny", "measure": "letter_logprob", "item_set": iset, "condition": "default", "arm": arm,
                "mean": m, "sd": 0.5, "se": 0.08, "ci_low": m - 0.157, "ci_high": m + 0.157, "se_clustered": 0.1,
                "n_cells": 20 if arm != "base" else 10, "n_seeds": 2 if arm != "base" else 1, "n_items": 10,
                "source": _src(measure="letter_logprob", item_set=iset, arm=arm)})
    if safety:
        for arm in ARMS:
            summaries.append({
                "model_label": "tiny", "measure": "perplexity", "item_set": "neutral_text", "condition": "default",
                "arm": arm, "mean": 12.5, "sd": 1.0, "se": 0.2, "ci_low": 12.1, "ci_high": 12.9, "n_cells": 10,
                "n_seeds": 2, "n_items": 5, "source": _src(measure="perplexity", arm=arm)})
    fits = []
    if bayes:
        fits = [_bayes("tiny/letter_logprob/target/default", "target", [
            _contrast("combined_directional", *(h1 if supported else (0.04, -0.25, 0.31)), h1_verdict),
            _contrast("cautious-neutral", -0.1, -0.38, 0.16, "undecided"),
            _contrast("eager-neutral", 0.3, 0.0, 0.58, "undecided"),
        ])]
    decisions = [
        {"hypothesis_id": "H1", "kind": "confirmatory", "statement": "Eager rather than cautious training moves held-out stance toward change.",
         "rule": "CI and HDI beyond SESOI", "verdict": "supported" if supported else "undecided",
         "reason": "d = +0.61 [+0.35, +0.88] beyond SESOI 0.2" if supported else "CI straddles the SESOI",
         "effect_ids": [effects[0]["id"]], "bayes_ids": [fits[0]["id"]] if bayes else [],
         "model_label": "tiny", "frequentist_reading": h1_verdict, "bayes_reading": h1_verdict if bayes else None},
        {"hypothesis_id": "H2", "kind": "confirmatory", "statement": "Cautious training moves held-out stance against change relative to neutral.",
         "rule": "CI and HDI beyond SESOI", "verdict": "undecided", "reason": "CI straddles the SESOI",
         "effect_ids": [effects[1]["id"]], "bayes_ids": [fits[0]["id"]] if bayes else []},
        {"hypothesis_id": "E1", "kind": "exploratory", "statement": "Exploratory check of the eager arm against neutral on target items.",
         "rule": "CI beyond SESOI", "verdict": "undecided", "reason": "CI straddles the SESOI",
         "effect_ids": [effects[2]["id"]], "bayes_ids": [fits[0]["id"]] if bayes else []},
    ]
    return {
        "study": "rt", "stamp": "EXPLORATORY" if exploratory else "CONFIRMATORY", "exploratory": exploratory,
        "lock_digest": digest, "created_utc": "2026-11-23T10:00:00Z", "leaklab_version": "0.1.0",
        "reference_arm": "neutral", "arms": ARMS,
        "frame": {"path": "analysis/frame.parquet", "sha256": "ab" * 32, "n_rows": 160, "n_missing": 4, "n_logs": 7,
                  "measure_versions": {"letter_logprob": "cd" * 32}},
        "manipulation_checks": [{"model_label": "tiny", "measure": "letter_logprob", "item_set": "source",
                                 "effects": [effects[3]["id"]], "passed": manip_passed, "summary": "source d = +1.40"}],
        "measure_validity": [{"model_label": "tiny", "measure": "letter_logprob", "item_set": "source", "n_items": 18,
                              "agreement": 0.83, "threshold": 0.7, "passed": True,
                              "source": _src(measure=["letter_logprob", "forced_choice"], item_set="source")}],
        "arm_summaries": summaries, "effects": effects, "bayes": fits, "decisions": decisions,
        "warnings": ["synthetic warning for the caveats list"],
    }


def make_frame(path: Path) -> None:
    rows = []
    for iset in ("target", "source"):
        for arm in ARMS:
            for seed in ([None] if arm == "base" else [0, 1]):
                for b in range(5):
                    rows.append({"model_label": "tiny", "arm": arm, "seed": seed, "checkpoint": "final",
                                 "measure": "letter_logprob", "item_set": iset, "condition": "default", "persona": None,
                                 "item_id": f"b{b}-p0", "base_item": f"b{b}", "value": 0.1 * b - 0.2 + (seed or 0) * 0.05})
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)


@pytest.fixture
def study(tmp_path, runs_root):
    folder = tmp_path / "studies" / "rt"
    folder.mkdir(parents=True)
    (folder / "study.yaml").write_text(STUDY_YAML)
    (folder / "prereg.yaml").write_text(PREREG_YAML)
    for arm in ("cautious", "eager", "neutral"):
        (folder / f"{arm}.jsonl").write_text(json.dumps({"user": "q", "assistant": arm}) + "\n")
    return folder


def _lock(folder):
    import prereg

    return prereg.lock(folder)["digest"]


from analysis.decide import VERDICTS  # noqa: E402


def _write_results(runs_root, res, frame_sha_matches=True):
    import hashlib

    adir = runs_root / "rt" / "analysis"
    adir.mkdir(parents=True, exist_ok=True)
    make_frame(adir / "frame.parquet")
    if frame_sha_matches:
        res["frame"]["sha256"] = hashlib.sha256((adir / "frame.parquet").read_bytes()).hexdigest()
    if "confidence" not in res and all(d["verdict"] in VERDICTS for d in res["decisions"]):
        # graded as the analysis grades it (the report only prints it)
        from analysis.decide import confidence
        from analysis.results import Results

        r = Results.model_validate(res)
        res["confidence"] = confidence(r.decisions, effects={e.id: e for e in r.effects}, fits={b.id: b for b in r.bayes},
                                       manipulation=r.manipulation_checks, n_seeds=2, exploratory=r.exploratory)
    (adir / "results.json").write_text(json.dumps(res))


def _links(md: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", md)


def test_unlocked_study_is_refused(study, runs_root):
    from leaklab.yamlio import ConfigError
    from reports import render_report

    _write_results(runs_root, make_results(digest=None, exploratory=True))
    with pytest.raises(ConfigError, match="lock"):
        render_report(study)
    assert not (runs_root / "rt" / "report" / "REPORT.md").exists()


def test_unlocked_study_with_flag_is_stamped_exploratory(study, runs_root):
    from reports import render_report

    _write_results(runs_root, make_results(digest=None, exploratory=True))
    out = render_report(study, exploratory=True)
    md = out["report"].read_text()
    assert md.startswith("> **EXPLORATORY REPORT.**")
    assert re.search(r"^# EXPLORATORY: ", md, re.M)
    assert "No lock file" in md
    assert "**Confidence: low**" in md and "not locked" in md
    assert "exploratory" in out["summary"].read_text().lower()


def test_locked_report_full(study, runs_root):
    from reports import render_report

    digest = _lock(study)
    _write_results(runs_root, make_results(digest=digest, supported=True))
    out = render_report(study)
    md = out["report"].read_text()
    # title states the supported confirmatory claim, and only it
    title = next(line for line in md.splitlines() if line.startswith("# "))
    assert "Eager rather than cautious training" in title and "1 of 2 confirmatory hypotheses supported" in title
    assert "EXPLORATORY REPORT" not in md
    assert f"locked that plan (fingerprint `{digest[:16]}`" in out["summary"].read_text()  # the plain summary names the lock
    # lock digest (full), lock time, chain entry
    assert digest in md
    assert re.search(r"\| 0 \| lock \| \d{4}-\d\d-\d\dT", md)
    # manipulation check shown before target results; exploratory section after both, separate
    i_manip, i_target = md.index("## Manipulation check"), md.index("## Target results")
    i_expl = md.index("## EXPLORATORY analyses")
    assert i_manip < i_target < i_expl
    assert "| E1 |" in md[i_expl:] and "| E1 |" not in md[:i_expl]
    # both frameworks in the verdict table: d with CI, posterior with HDI and gate
    h1 = next(line for line in md.splitlines() if line.startswith("| H1 |"))
    # preregistered power, cited from prereg.yaml as the effect detected at the target power
    assert "| 2x SESOI at 80% |" in h1
    assert "+0.61 [+0.35, +0.88]" in h1 and "effect (gate passed)" in h1 and "**supported**" in h1
    # optional sections present
    assert "## Diagnostics" in md and "No Bayesian model was fitted" not in md
    assert "## Capability and safety checks" not in md  # none in these results
    assert "## Inside the model" not in md
    # environment and commit
    assert "| transformers |" in md and "git commit" in md
    assert "changed since the analysis" not in md
    summary = out["summary"].read_text()
    assert "Yes, this held up." in summary and "We could not tell either way." in summary


def test_title_is_honest_when_nothing_supported(study, runs_root):
    from reports import render_report

    digest = _lock(study)
    _write_results(runs_root, make_results(digest=digest, supported=False))
    md = render_report(study)["report"].read_text()
    title = next(line for line in md.splitlines() if line.startswith("# "))
    assert "was not shown at this scale" in title and "0 of 2" in title
    assert "Eager rather than cautious" not in title
    summary = (runs_root / "rt" / "report" / "PLAIN_SUMMARY.md").read_text()
    assert "does not prove there is none" in summary and "H1 2x SESOI at 80%" in summary
    # an effect against the prediction is named in the title, not hidden behind "not shown"
    res = make_results(digest=digest, supported=False)
    res["decisions"][1]["verdict"] = "not_supported"
    _write_results(runs_root, res)
    md = render_report(study)["report"].read_text()
    title = next(line for line in md.splitlines() if line.startswith("# "))
    assert "H2 found an effect opposite to the prediction" in title


def test_optional_sections_missing(study, runs_root):
    from reports import render_report

    digest = _lock(study)
    res = make_results(digest=digest, bayes=False)
    _write_results(runs_root, res)
    md = render_report(study)["report"].read_text()
    assert "No Bayesian model was fitted" in md
    assert "not fitted" in next(line for line in md.splitlines() if line.startswith("| H1 |"))
    assert "## Capability and safety checks" not in md and "## Inside the model" not in md
    assert "no Bayesian result" in md  # lowers confidence, says why


def test_safety_and_interp_sections_when_present(study, runs_root):
    from reports import render_report

    digest = _lock(study)
    _write_results(runs_root, make_results(digest=digest, safety=True))
    interp = runs_root / "rt" / "interp"
    (interp / "figures").mkdir(parents=True)
    (interp / "figures" / "layers.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (interp / "SECTION.md").write_text("## Inside the model\n\nThe direction was found at layer 3.\n\n"
                                       "![layer profile](figures/layers.png)\n")
    out = render_report(study)
    md = out["report"].read_text()
    assert "![layer profile](../interp/figures/layers.png)" in md  # rebased to resolve from report/
    assert (out["report"].parent / "../interp/figures/layers.png").exists()
    assert "## Capability and safety checks" in md
    assert "| tiny | perplexity |" in md
    assert md.count("## Inside the model") == 1 and "The direction was found at layer 3." in md


def test_failed_gate_is_flagged_not_read(study, runs_root):
    from reports import render_report

    digest = _lock(study)
    res = make_results(digest=digest)
    res["bayes"][0] = _bayes(res["bayes"][0]["id"], "target", res["bayes"][0]["contrasts"], passed=False)
    _write_results(runs_root, res, frame_sha_matches=False)
    md = render_report(study)["report"].read_text()
    assert "changed since the analysis" in md  # frame.parquet sha256 differs from results.json
    assert "**FAILED**: rhat_max 1.09 > 1.01" in md
    assert "failed its diagnostics gate" in md
    assert "**Confidence: low**" in md


def test_validity_not_assessable_is_reported_as_a_failure(study, runs_root):
    from reports import render_report

    digest = _lock(study)
    res = make_results(digest=digest)
    res["measure_validity"][0].update(n_items=0, agreement=None, passed=False,
                                      reason="not assessable: the forced_choice took no side on any source item")
    _write_results(runs_root, res)
    md = render_report(study)["report"].read_text()
    assert "(not assessable)" in md  # the validity table's passed column
    assert "failed the validity check, not assessable: the forced_choice took no side on any source item; not interpreted" in md


def test_results_from_another_lock_are_refused(study, runs_root):
    from leaklab.yamlio import ConfigError
    from reports import render_report

    _lock(study)
    _write_results(runs_root, make_results(digest="f" * 64))
    with pytest.raises(ConfigError, match="re-run `leaklab analyze"):
        render_report(study)


def test_every_cited_file_exists_and_figures_are_relative_pngs(study, runs_root):
    from reports import render_report

    digest = _lock(study)
    _write_results(runs_root, make_results(digest=digest))
    out = render_report(study)
    rdir = out["report"].parent
    md = out["report"].read_text()
    links = _links(md)
    assert links, "the report links nothing"
    for link in links:
        assert not link.startswith("/") and "://" not in link, f"absolute link {link}"
        assert (rdir / link).exists(), f"REPORT.md links a missing file: {link}"
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert "figures/forest.png" in images
    assert images.index("figures/forest_exploratory.png") > images.index("figures/forest.png")
    assert md.index("figures/forest_exploratory.png") > md.index("## EXPLORATORY analyses")
    assert any(i.startswith("figures/arms_target") for i in images)
    assert any(i.startswith("figures/arms_source") for i in images)
    for i in images:
        assert (rdir / i).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # every artifact id cited in a table exists in the artifact table, and its file exists
    table = md[md.index("## Artifacts"):]
    ids = dict(re.findall(r"^\| (A\d+) \| \[[^\]]+\]\(([^)]+)\)", table, re.M))
    cited = set(re.findall(r"\b(A\d+)\b", md[: md.index("## Artifacts")]))
    assert cited and cited <= set(ids), f"cited ids without an artifact row: {cited - set(ids)}"
    for aid, link in ids.items():
        assert (rdir / link).is_file(), f"{aid} -> {link} missing"
    # the results file and the lock are among them, with their real sha256
    man = json.loads(out["manifest"].read_text())
    paths = {a["path"]: a["sha256"] for a in man["artifacts"]}
    import hashlib

    res_path = runs_root / "rt" / "analysis" / "results.json"
    assert paths["runs/rt/analysis/results.json"] == hashlib.sha256(res_path.read_bytes()).hexdigest()
    assert any(p.endswith("prereg.lock.json") for p in paths)
    # every row of a numeric table carries a source id
    lines = md[: md.index("## Artifacts")].splitlines()
    for line, nxt in zip(lines, lines[1:] + [""]):
        if nxt.startswith("|---"):
            continue  # a header row
        if line.startswith("| ") and re.search(r"\d\.\d", line):
            assert re.search(r"\bA\d+\b", line), f"table row without a source: {line}"


def test_cli_report_command(study, runs_root):
    from typer.testing import CliRunner

    import typer

    from reports.cli import register

    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop():  # a second command so typer keeps `report` as a subcommand
        pass

    digest = _lock(study)
    _write_results(runs_root, make_results(digest=digest))
    r = CliRunner().invoke(app, ["report", str(study)])
    assert r.exit_code == 0, r.output
    assert "REPORT.md" in r.output
    assert (runs_root / "rt" / "report" / "PLAIN_SUMMARY.md").exists()
    from reports.cli import render_study_report  # the pipeline's entry point

    assert render_study_report(study) == runs_root / "rt" / "report" / "REPORT.md"


def test_sample_outputs_read_from_logs(study, runs_root):
    """Real .eval logs (written with inspect_ai) listed in results.json give same-item rows per arm."""
    from analysis.frame import write_synthetic_logs
    from reports import render_report

    digest = _lock(study)
    rows = [{"arm": arm, "seed": None if arm == "base" else 0, "item_id": f"b{b}-p0", "base_item": f"b{b}",
             "paraphrase_idx": 0, "option_order": "pro_first", "value": 1.0 if arm == "eager" else -1.0}
            for arm in ARMS for b in range(3)]
    logs = write_synthetic_logs(runs_root / "rt" / "logs", rows, study="rt", lock_digest=digest,
                                measure="forced_choice", item_set="target", model_label="tiny")
    res = make_results(digest=digest)
    res["frame"]["logs"] = [{"path": str(p.relative_to(runs_root / "rt")), "model_label": "tiny", "arm": p.name.split("_")[4],
                             "seed": None, "checkpoint": "final", "task": "forced_choice", "n_rows": 3} for p in logs]
    _write_results(runs_root, res)
    md = render_report(study)["report"].read_text()
    sec = md[md.index("## Sample outputs"): md.index("## Headline numbers")]
    body = [line for line in sec.splitlines() if line.startswith("| ") and not line.startswith("| arm")]
    assert len(body) == 2 * len(ARMS)  # 2 items x every arm
    assert {line.split(" | ")[0][2:] for line in body} == set(ARMS)
    assert {re.search(r"`([^`]+)`", line).group(1) for line in body} == {"b0-p0:pro_first", "b1-p0:pro_first"}
    eager = [line for line in body if line.startswith("| eager |")]
    assert all("+1.00" in line for line in eager)
    table = md[md.index("## Artifacts"):]
    assert "logs/forced_choice_target_tiny_eager" in table


def test_leaklab_cli_refuses_unlocked_with_exit_2(study, runs_root):
    """Through the real console script: the mounted `report` command, ConfigError -> exit 2."""
    import os
    import subprocess
    import sys

    _write_results(runs_root, make_results(digest=None, exploratory=True))
    exe = Path(sys.executable).parent / "leaklab"
    env = dict(os.environ, LEAKLAB_RUNS=str(runs_root))
    r = subprocess.run([str(exe), "report", str(study)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("error:") and "lock" in r.stderr
    r = subprocess.run([str(exe), "report", str(study), "--exploratory"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (runs_root / "rt" / "report" / "REPORT.md").read_text().startswith("> **EXPLORATORY REPORT.**")


def _synthetic_study_logs(runs_root, digest):
    """Real Inspect logs for the rt study: a planted eager > neutral > cautious shift on every set."""
    from analysis.frame import simulate_cells, write_synthetic_logs

    logs = runs_root / "rt" / "logs"
    arms = {"base": 0.0, "cautious": -0.6, "eager": 0.6, "neutral": 0.0}
    for k, (measure, item_set, kind) in enumerate([("letter_logprob", "target", "continuous"),
                                                   ("letter_logprob", "source", "continuous"),
                                                   ("forced_choice", "source", "binary")]):
        rows = simulate_cells(arms=arms, seeds=[0, 1], n_base=8, n_para=1, rng=k, kind=kind)
        write_synthetic_logs(logs, rows, study="rt", lock_digest=digest, measure=measure, item_set=item_set,
                             model_label="tiny")
    from custody_fixtures import ledger_synthetic

    ledger_synthetic(runs_root.parent / "studies" / "rt")  # the custody `leaklab eval` would give them (issue 15)


def test_end_to_end_with_the_real_analysis(study, runs_root):
    """Synthetic logs -> `analysis.cli.analyze_study` (frequentist only, fast) -> report. The report's
    numbers must be the results' numbers, and the title must follow the decisions."""
    pytest.importorskip("analysis.cli")
    from analysis.cli import analyze_study
    from reports import render_report

    digest = _lock(study)
    _synthetic_study_logs(runs_root, digest)
    res = analyze_study(study, bayes=False, n_boot=200)
    out = render_report(study)
    md = out["report"].read_text()
    conf = [d for d in res.decisions if d.kind == "confirmatory"]
    n_sup = sum(d.verdict == "supported" for d in conf)
    title = next(line for line in md.splitlines() if line.startswith("# "))
    if conf and all(d.verdict == "unusable" for d in conf):
        assert "could not be assessed" in title
    elif n_sup == 0:
        assert "was not shown at this scale" in title or "practically absent" in title
    else:
        assert f"{n_sup} of {len(conf)} confirmatory hypotheses supported" in title
    from reports.renderer import fmt_ci, fmt_num

    for d in res.decisions:
        e = res.effect(d.effect_ids[0])
        row = next(line for line in md.splitlines() if line.startswith(f"| {d.hypothesis_id} |"))
        assert f"{fmt_num(e.d, signed=True)} {fmt_ci(e.ci_low_d, e.ci_high_d)}" in row, row
    assert "No Bayesian model was fitted" in md
    # sample outputs come from the forced-choice logs only when a non-source set has them: none here
    assert "No generative task logs" in md
    for link in _links(md):
        assert (out["report"].parent / link).exists(), link


@pytest.mark.slow
def test_end_to_end_with_bayes(study, runs_root):
    """Same as above with the Bayesian models fitted (pymc; slow): both frameworks in the verdict
    table, diagnostics rows, the posterior predictive figure linked from the analysis folder."""
    pytest.importorskip("analysis.cli")
    from analysis.cli import analyze_study
    from reports import render_report
    from reports.renderer import fmt_ci, fmt_num

    digest = _lock(study)
    _synthetic_study_logs(runs_root, digest)
    res = analyze_study(study, bayes=True, n_boot=200, draws=200, tune=200, chains=2)
    out = render_report(study)
    md = out["report"].read_text()
    assert "No Bayesian model was fitted" not in md
    for d in res.decisions:
        row = next(line for line in md.splitlines() if line.startswith(f"| {d.hypothesis_id} |"))
        assert "not fitted" not in row
        fit = res.bayes_fit(d.bayes_ids[0])
        c = next(c for c in fit.contrasts if c.name == res.effect(d.effect_ids[0]).contrast)
        assert f"{fmt_num(c.mean_d, signed=True)} {fmt_ci(c.hdi_low_d, c.hdi_high_d)}" in row, row
    diag = md[md.index("## Diagnostics"):md.index("## EXPLORATORY")]
    assert all(f"`{b.id}`" in diag for b in res.bayes)
    ppc = [link for link in _links(diag) if "ppc" in link]
    assert ppc and all((out["report"].parent / link).exists() for link in ppc)


def test_missing_or_invalid_results_name_the_file(study, runs_root):
    from leaklab.yamlio import ConfigError
    from reports import render_report

    digest = _lock(study)
    with pytest.raises(ConfigError, match=r"results\.json: no analysis results; run `leaklab analyze"):
        render_report(study)
    res = make_results(digest=digest)
    res["decisions"][0]["verdict"] = "probably"  # not a verdict of the schema
    _write_results(runs_root, res)
    with pytest.raises(ConfigError, match=r"(?s)results\.json: not a valid results\.json.*verdict"):
        render_report(study)


def test_amendment_appears_in_the_chain_table(study, runs_root):
    import prereg

    from reports import render_report

    _lock(study)
    p = study / "prereg.yaml"
    p.write_text(p.read_text().replace("Supported when the CI", "Supported only when the CI"))
    digest = prereg.amend(study, "clarify the decision rule wording")["digest"]
    _write_results(runs_root, make_results(digest=digest))
    md = render_report(study)["report"].read_text()
    rows = [line for line in md.splitlines() if re.match(r"^\| [01] \| (lock|amend) \|", line)]
    assert len(rows) == 2, rows
    amend = rows[1]
    assert "clarify the decision rule wording" in amend and "prereg.yaml" in amend and "(changed)" in amend
    assert "| no |" in amend  # no outcome logs existed when amending (detected, not declared)
    assert f"`{digest[:12]}`" in amend and "No amendments since the initial lock" not in md


def test_failed_manipulation_check_title_claims_nothing_and_rule_is_stated_once(study, runs_root):
    """H1 would be supported by the two-part rule, but its required check did not pass: the
    analysis wrote not_interpretable, so the title claims nothing and the plain summary says what
    failed; H2 points against its prediction and is said so, with its adjusted p; the decision
    rule appears once (methods) with every locked threshold echoed."""
    from reports import render_report

    digest = _lock(study)
    res = make_results(digest=digest, supported=True, manip_passed=False)
    res["decisions"][0].update(verdict="not_interpretable", requires=["M1"], gates=["M1 (tiny): undecided"],
                               reason="a required manipulation check did not pass (M1 (tiny): undecided)")
    res["decisions"][1].update(verdict="undecided", against_prediction=True, p_against=0.031)
    res["settings"] = {"decision_rule": "RULE-TEXT-ONCE: both frameworks beyond the SESOI.",
                       "thresholds": {"validity_min_agreement": 0.7, "min_reference_sd_relative": 0.05,
                                      "max_censored_share": 0.2, "alpha": 0.05}}
    _write_results(runs_root, res)
    out = render_report(study)
    md, summary = out["report"].read_text(), out["summary"].read_text()
    title = next(line for line in md.splitlines() if line.startswith("# "))
    assert "was not shown at this scale: the manipulation check M1 did not pass, so H1 is not interpreted" in title
    assert "Eager rather than cautious" not in title and "0 of 2" in title
    assert "**not interpretable (a required manipulation check did not pass)**" in md
    assert md.count("RULE-TEXT-ONCE") == 1 and "*Rule:*" not in md
    for k in ("validity_min_agreement", "min_reference_sd_relative", "max_censored_share"):
        assert f"`{k}`" in md
    assert "points **opposite** to the prediction" in md and "0.031" in md
    assert "We cannot interpret this" in summary and "M1 (tiny): undecided" in summary
    assert "the data point the opposite way to the prediction (adjusted p = 0.031)" in summary
    assert "Yes, this held up." not in summary


HOSTILE = {
    "background": 'Synthetic <img src=x onerror="alert(1)"> background, see [docs](javascript:alert(1)).',
    "h1": "Eager <script>alert(1)</script> training, ![x](https://evil.example/x.png) moves stance <javascript:alert(1)>.",
}


def test_prereg_text_cannot_inject_html_or_links(study, runs_root):
    """Prereg text reaches REPORT.md escaped: no raw tag, autolink, link or image survives."""
    from reports import render_report

    text = (study / "prereg.yaml").read_text()
    text = text.replace("background: Synthetic background for the report test.",
                        "background: '" + HOSTILE["background"].replace("'", "''") + "'")
    text = text.replace("statement: Eager rather than cautious training moves held-out stance toward change.",
                        "statement: '" + HOSTILE["h1"].replace("'", "''") + "'", 1)
    (study / "prereg.yaml").write_text(text)
    digest = _lock(study)
    res = make_results(digest=digest, supported=True)
    res["decisions"][0]["statement"] = HOSTILE["h1"]
    _write_results(runs_root, res)
    out = render_report(study)
    for md in (out["report"].read_text(), out["summary"].read_text()):
        assert "<script" not in md and "<img" not in md and "<javascript:" not in md
        assert not re.search(r"(?<!\\)\]\((javascript:|https://evil)", md)
    md = out["report"].read_text()
    assert "&lt;script>alert(1)&lt;/script>" in md  # shown as text, not dropped
    assert "\\](javascript:alert(1))" in md
    assert re.search(r"^- \*\*H2\*\*: ", md, re.M), "each hypothesis on its own list line"
    # the report's own links and figures still work
    assert any(link.endswith(".png") for link in _links(md))


def test_md_escape_hand_cases_and_idempotence():
    from leaklab.mdsafe import Trusted, md_escape

    cases = {
        "p < 0.001 and [+0.10, +0.30] & more": "p < 0.001 and [+0.10, +0.30] & more",
        "<b>x</b>": "&lt;b>x&lt;/b>",
        "<!-- c -->": "&lt;!-- c -->",
        "[a](javascript:x)": "[a\\](javascript:x)",
        "[a] (x)": "[a\\] (x)",
        "[a][ref]": "[a\\][ref]",
        "[ref]: javascript:x": "[ref\\]: javascript:x",
        "[a]\\(x)": "[a]\\(x)",
        "[a\\](x)": "[a\\](x)",  # already escaped
        "[a\\\\](x)": "[a\\\\\\](x)",  # an escaped backslash leaves the bracket live: escape it
        "&#60;script&#62;": "&amp;#60;script&amp;#62;",
        "&lt;b>": "&lt;b>",
    }
    for raw, want in cases.items():
        assert md_escape(raw) == want, raw
        assert md_escape(md_escape(raw)) == want, raw
    assert md_escape(Trusted("![f](figures/a.png)")) == "![f](figures/a.png)"
    assert md_escape(None) == "None" and md_escape(0.5) == "0.5"


def test_one_of_several_manipulation_checks_failed_is_named(study, runs_root):
    """With a manipulation check per trained source, the report, the plain summary and the
    confidence grade name the check that did not pass and say how many of how many, instead of
    "the manipulation check did not pass" (studies/persona: M1 failed, M2 and M3 passed)."""
    from analysis import decide as D
    from reports import render_report

    digest = _lock(study)
    res = make_results(digest=digest, supported=True, manip_passed=False)
    first = {**res["manipulation_checks"][0], "hypothesis_id": "M1"}
    res["manipulation_checks"] = [first, {**first, "hypothesis_id": "M2", "item_set": "doctor", "passed": True},
                                  {**first, "hypothesis_id": "M3", "item_set": "wizard", "passed": True}]
    _write_results(runs_root, res)
    out = render_report(study)
    md, summary = out["report"].read_text(), out["summary"].read_text()
    assert "The manipulation check M1 on tiny/source (1 of 3 checks) did **not** pass" in md
    assert "The manipulation check M1 on tiny/source (1 of 3 checks) did not pass: the results that depend on it" in md
    assert "Confidence: low** - the manipulation check M1 did not pass (1 of 3)" in md
    assert "For part of the training" in summary and "check M1 on tiny/source (1 of 3 checks) did not pass" in summary
    assert "The training did not clearly change the model even" not in summary
    from types import SimpleNamespace as NS

    checks = [NS(passed=False, hypothesis_id="M1", item_set="pirate"), NS(passed=True, hypothesis_id="M2", item_set="doctor")]
    c = D.confidence([], n_seeds=3, effects={}, fits={}, manipulation=checks, exploratory=False)
    assert "the manipulation check M1 did not pass (1 of 2)" in c["reasons"]
