"""`leaklab prereg calibrate` and the small-seed refusal of `prereg check`; power counts the
multiplicity family as the analysis does and simulates the analysis' CI method."""

from __future__ import annotations

import pytest

from tests.toy_study import PREREG, write_toy_study


@pytest.fixture
def toy(tmp_path, monkeypatch, runs_root):
    folder = write_toy_study(tmp_path / "toy")
    text = PREREG.replace("ci: hierarchical_bootstrap", "ci: cluster_se")
    text += "power:\n  n_sims: 40\n  seed: 3\n  noise: {seed_sd: 0.3, item_sd: 0.7, residual_sd: 0.6, item_arm_sd: 0.2}\n"
    (folder / "prereg.yaml").write_text(text)
    return folder


def test_check_refuses_the_bootstrap_with_two_seeds_unless_coverage_is_accepted(toy):
    from leaklab.study import load_study
    from prereg.calibrate import small_seed_problems
    from prereg.schema import load_prereg

    assert small_seed_problems(load_prereg(toy), load_study(toy)) == []  # cluster_se: fine with 2 seeds
    text = (toy / "prereg.yaml").read_text().replace("ci: cluster_se", "ci: hierarchical_bootstrap")
    (toy / "prereg.yaml").write_text(text)
    (msg,) = small_seed_problems(load_prereg(toy), load_study(toy))
    assert "frequentist.ci" in msg and "H1" in msg and "85-87%" in msg and "accepted_coverage" in msg
    (toy / "prereg.yaml").write_text(text.replace("test: minimum_effect,", "test: minimum_effect, accepted_coverage: 0.86,"))
    assert small_seed_problems(load_prereg(toy), load_study(toy)) == []
    (toy / "study.yaml").write_text((toy / "study.yaml").read_text().replace("seeds: [0, 1]", "seeds: [0, 1, 2]"))
    (toy / "prereg.yaml").write_text(text)
    assert small_seed_problems(load_prereg(toy), load_study(toy)) == []


def test_check_command_refuses_in_one_line(toy, capsys, monkeypatch):
    import sys

    from leaklab import cli

    (toy / "prereg.yaml").write_text((toy / "prereg.yaml").read_text().replace("ci: cluster_se", "ci: hierarchical_bootstrap"))
    monkeypatch.setattr(sys, "argv", ["leaklab", "prereg", "check", str(toy)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and "accepted_coverage" in err and "Traceback" not in err


def test_calibrate_frequentist_half_and_write(toy):
    from prereg.calibrate import calibrate
    from prereg.power import write_results
    from prereg.schema import CalibrationResult, load_prereg

    block = calibrate(toy, n_sims=60, bayes=False)
    res = CalibrationResult(**block)
    assert set(res.hypotheses) == {"H1", "M1"} and res.ci == "cluster_se" and res.n_sims_bayes == 0
    for hid, pts in res.hypotheses.items():
        assert [p.scenario for p in pts] == ["zero", "sesoi", "expected"]
        assert [p.effect for p in pts] == pytest.approx([0.0, 0.2, 0.4])  # 2 x SESOI when power.expected is absent
        for p in pts:
            assert p.n_sims == 60 and 0.85 <= p.coverage <= 1.0 and p.p_supported is None
        assert pts[0].p_freq_effect <= 0.05  # no effect: no false claims at this scale
    assert "2 x SESOI" in res.notes
    write_results(toy, None, key="calibration", block=block)
    pr = load_prereg(toy)
    assert pr.power.calibration is not None and pr.power.calibration.hypotheses["H1"][1].scenario == "sesoi"
    # a second write replaces the block (no duplicate key)
    write_results(toy, None, key="calibration", block=block)
    assert (toy / "prereg.yaml").read_text().count("  calibration:") == 1


def test_calibrate_uses_the_declared_expected_effect_and_raw_units(toy):
    from prereg.calibrate import calibrate

    text = (toy / "prereg.yaml").read_text().replace("  seed: 3\n", "  seed: 3\n  expected: {H1: 0.9}\n")
    (toy / "prereg.yaml").write_text(text)
    block = calibrate(toy, n_sims=30, bayes=False)
    h1 = {p["scenario"]: p for p in block["hypotheses"]["H1"]}
    assert h1["expected"]["effect"] == pytest.approx(0.9)
    assert h1["expected"]["p_freq_effect"] > h1["sesoi"]["p_freq_effect"]


def test_power_family_counts_hypothesis_model_pairs(toy):
    from leaklab.study import load_study
    from prereg.power import family_size, run_power
    from prereg.schema import load_prereg

    text = (toy / "prereg.yaml").read_text().replace("primary: none", "primary: holm")
    text = text.replace("    family: manipulation", "    family: primary")
    (toy / "prereg.yaml").write_text(text)
    pr, st = load_prereg(toy), load_study(toy)
    # H1 and M1 (one model each) in a Holm family: 2 tests, exploratory ones counted as the analysis counts them
    assert family_size(pr, st, pr.hypothesis("H1")) == 2
    (r, _m) = run_power(toy, n_sims=20, multiples=[0.0, 3.0])
    assert r.alpha == pytest.approx(0.025) and r.ci == "cluster_se" and "alpha/2" in r.scope
    assert all(p.p_upper is not None and p.p_upper >= p.p_effect for p in r.curve)


@pytest.mark.slow
def test_calibrate_bayesian_half_runs_the_analysis_model(toy):
    from prereg.calibrate import calibrate

    block = calibrate(toy, n_sims=2, n_sims_bayes=1, draws=100, tune=100)
    h1 = block["hypotheses"]["H1"]
    assert block["n_sims_bayes"] == 1 and all(p["n_sims_bayes"] == 1 for p in h1)
    assert all(p["p_supported"] is not None and p["hdi_coverage"] is not None for p in h1)
    assert block["hypotheses"]["M1"][0]["n_sims_bayes"] == 0  # exploratory: no fit of its own
    assert "overridden" in block["notes"]


def test_report_states_the_bound_calibration(tmp_path, runs_root):
    """The calibration `--write` binds into the prereg appears in REPORT.md's verdict section."""
    import json

    from prereg.power import write_results
    from reports import render_report
    from tests.test_report_render import PREREG_YAML, STUDY_YAML, _lock, _write_results, make_results

    folder = tmp_path / "studies" / "rt"
    folder.mkdir(parents=True)
    (folder / "study.yaml").write_text(STUDY_YAML)
    (folder / "prereg.yaml").write_text(PREREG_YAML.replace("frequentist: {n_resamples: 1000, seed: 1}",
                                                            "frequentist: {n_resamples: 1000, seed: 1, accepted_coverage: 0.86}"))
    for arm in ("cautious", "eager", "neutral"):
        (folder / f"{arm}.jsonl").write_text(json.dumps({"user": "q", "assistant": arm}) + "\n")
    pt = dict(scenario="sesoi", effect=0.2, coverage=0.957, coverage_mcse=0.012, p_freq_effect=0.021,
              p_freq_effect_mcse=0.008, p_freq_equivalent=0.0, p_supported=0.0, p_supported_mcse=0.0, p_equivalent=0.0,
              hdi_coverage=1.0, n_sims=300, n_sims_bayes=5)
    block = {"computed_at": "2026-12-02T05:00:00Z", "ci": "cluster_se", "alpha": 0.05, "n_sims": 300, "n_sims_bayes": 5,
             "noise": {"seed_sd": 0.3, "item_sd": 0.7, "item_arm_sd": 0.0, "residual_sd": 0.6},
             "notes": "300 simulated studies per scenario", "hypotheses": {"H1": [pt]}}
    write_results(folder, None, key="calibration", block=block)
    digest = _lock(folder)
    _write_results(runs_root, make_results(digest=digest, supported=True))
    md = render_report(folder)["report"].read_text()
    assert "*Calibration of the preregistered analysis*" in md and "300 simulated studies per true effect" in md
    assert "| H1 | sesoi (+0.20) | 95.7 (1.2) | 2.1 (0.8) | 0 (0) | 100 |" in md
    assert "accepts a measured coverage of 86% for its cluster_se CI at nominal 95%" in md
