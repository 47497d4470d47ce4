"""`leaklab analyze` end to end on real Inspect logs with a planted effect: guard, frame, effects,
validity, decisions, results.json. The Bayesian part runs in the slow variant only (pytensor
compilation); the fast one uses --no-bayes and checks that decisions then stay undecided."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from analysis.frame import simulate_cells, write_synthetic_logs
from custody_fixtures import ledger_synthetic
from toy_study import write_synth_study

def make_study(root: Path, **kw) -> Path:
    return write_synth_study(root, **kw)


def write_logs(runs_root: Path, digest: str | None, n_base: int = 24) -> None:
    """Planted: letter_logprob eager +0.6 / cautious -0.6 (SD ~1) on target and source; the
    token measure is the letter one with its sign flipped on source (fails validity); forced
    choice = sign of the letter latent."""
    logs = runs_root / "synth" / "logs"
    arms = {"neutral": 0.0, "eager": 0.6, "cautious": -0.6, "base": 0.0}
    for item_set, rng in (("target", 1), ("source", 2)):
        rows = simulate_cells(arms=arms, seeds=[0, 1, 2], n_base=n_base, sd_item=0.8, sd_seed=0.1, sd_resid=0.4, rng=rng)
        write_synthetic_logs(logs, rows, study="synth", lock_digest=digest, measure="letter_logprob", item_set=item_set,
                             model_label="tiny", nan_every=25)
        fc = [{**r, "value": 1.0 if r["value"] > 0 else -1.0} for r in rows]
        write_synthetic_logs(logs, fc, study="synth", lock_digest=digest, measure="forced_choice", item_set=item_set,
                             model_label="tiny")
        sign = -1.0 if item_set == "source" else 1.0
        tok = [{**r, "value": sign * r["value"]} for r in rows]
        write_synthetic_logs(logs, tok, study="synth", lock_digest=digest, measure="token_logprob", item_set=item_set,
                             model_label="tiny")
    ledger_synthetic(runs_root.parent / "studies" / "synth")  # the custody `leaklab eval` would give them


@pytest.fixture(scope="module")
def locked_study(tmp_path_factory):
    import os

    import prereg

    root = tmp_path_factory.mktemp("an")
    old = os.environ.get("LEAKLAB_RUNS")
    os.environ["LEAKLAB_RUNS"] = str(root / "runs")
    try:
        folder = make_study(root)
        prereg.lock(folder)
        digest = prereg.guard(folder).digest
        write_logs(root / "runs", digest)
        yield folder, root / "runs"
    finally:
        if old is None:
            os.environ.pop("LEAKLAB_RUNS", None)
        else:
            os.environ["LEAKLAB_RUNS"] = old


def test_unlocked_study_refused_and_exploratory_stamped(tmp_path, monkeypatch):
    import prereg
    from analysis.cli import analyze_study
    from analysis.results import load_results

    monkeypatch.setenv("LEAKLAB_RUNS", str(tmp_path / "runs"))
    folder = make_study(tmp_path)
    write_logs(tmp_path / "runs", None, n_base=8)
    with pytest.raises(prereg.PreregError, match="lock"):
        analyze_study(folder, bayes=False)
    res = analyze_study(folder, exploratory=True, bayes=False, n_boot=200)
    assert res.stamp == "EXPLORATORY" and res.exploratory and res.lock_digest is None
    assert all(d.exploratory_stamp for d in res.decisions)
    on_disk = load_results(tmp_path / "runs" / "synth" / "analysis" / "results.json")
    assert on_disk.stamp == "EXPLORATORY"


def test_pipeline_frequentist(locked_study, monkeypatch):
    import pandas as pd

    from analysis.cli import analyze_study
    from analysis.results import load_results

    folder, runs = locked_study
    monkeypatch.setenv("LEAKLAB_RUNS", str(runs))
    res = analyze_study(folder, bayes=False)
    out = runs / "synth" / "analysis"
    assert (out / "frame.parquet").exists()
    res2 = load_results(out / "results.json")
    assert res2.stamp == "CONFIRMATORY" and res2.lock_digest and len(res2.lock_digest) == 64
    frame = pd.read_parquet(out / "frame.parquet")
    assert len(frame) == res.frame.n_rows
    # NaN scores (every 25th row of letter_logprob logs) are counted and excluded, never 0
    assert res.frame.n_missing > 0
    assert (frame.loc[frame["value"].isna(), "excluded"] == "unparsed").all()

    h1 = res.effect("H1/tiny")
    assert h1.contrast == "combined_directional" and h1.arms[-1] == "neutral"
    # planted combined effect 0.6 on the natural scale
    assert 0.35 < h1.estimate < 0.85 and h1.ci_low < 0.6 < h1.ci_high
    assert h1.d > 0.2 and h1.ci_low_d > 0.2 and h1.p_min_effect < 0.05
    # traceability: the Source filters select exactly the rows counted
    sel = frame
    for k, v in h1.source.filters.items():
        sel = sel[sel[k].isin(v)] if isinstance(v, list) else sel[sel[k] == v]
    assert len(sel) == h1.source.n_rows and int(sel["value"].isna().sum()) == h1.source.n_missing == 0
    assert h1.source.n_excluded > 0  # the NaN rows, removed by the 'unparsed' exclusion
    # Holm within per_arm: adjusted >= raw
    h2, h3 = res.effect("H2/tiny"), res.effect("H3/tiny")
    assert h2.p_adjusted >= h2.p_min_effect and h3.p_adjusted >= h3.p_min_effect
    assert "holm" in h2.multiplicity_family
    # validity: the token measure is sign-flipped on source -> fails; the letter measure passes
    val = {v.measure: v for v in res.measure_validity}
    assert val["letter_logprob"].passed is True and val["letter_logprob"].agreement > 0.9
    assert val["token_logprob"].passed is False and val["token_logprob"].agreement < 0.1
    # decisions: without Bayes the two-part rule cannot decide, so the manipulation check M1 is
    # undecided (not passed) and every hypothesis that requires it (default: same model, same
    # measure family) is not_interpretable, whatever its own reading; manipulation check first
    dec = {d.hypothesis_id: d for d in res.decisions}
    assert res.decisions[0].hypothesis_id == "M1" and dec["M1"].verdict == "undecided" and dec["M1"].requires == []
    assert dec["H1"].verdict == "not_interpretable" and dec["H1"].frequentist_reading == "effect"
    assert dec["H1"].requires == ["M1"] and dec["H1"].gates == ["M1 (tiny): undecided"]
    assert dec["E1"].verdict == "unusable" and "validity" in dec["E1"].reason  # a data gate wins
    # the analysis is a loop of named steps; its state says how far it got
    state = json.loads((out / "state.json").read_text())
    assert [s["step"] for s in state["steps"]][:3] == ["frame", "exclusions", "missingness"]
    assert res2.settings["thresholds"]["validity_min_agreement"] == 0.7 and "decision_rule" in res2.settings
    assert res.manipulation_checks and res.manipulation_checks[0].effects == ["M1/tiny"]
    # descriptive per-arm effects exist, including base vs reference
    assert any(e.id == "tiny/letter_logprob/target/default/base-neutral" for e in res.effects)
    summ = [s for s in res.arm_summaries if s.measure == "letter_logprob" and s.item_set == "target" and s.arm == "eager"][0]
    assert summ.n_seeds == 3 and summ.n_items == 24 and summ.ci_low < summ.mean < summ.ci_high


def test_cli_refuses_unlocked_via_console(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from leaklab.cli import _mount, app

    monkeypatch.setenv("LEAKLAB_RUNS", str(tmp_path / "runs"))
    folder = make_study(tmp_path)
    write_logs(tmp_path / "runs", None, n_base=6)
    _mount()
    r = CliRunner().invoke(app, ["analyze", str(folder), "--no-bayes", "--n-boot", "200"])
    assert r.exit_code != 0
    r = CliRunner().invoke(app, ["analyze", str(folder), "--no-bayes", "--n-boot", "200", "--exploratory"])
    assert r.exit_code == 0, r.output
    assert "EXPLORATORY" in r.output
    data = json.loads((tmp_path / "runs" / "synth" / "analysis" / "results.json").read_text())
    assert data["stamp"] == "EXPLORATORY"


@pytest.mark.slow
def test_pipeline_with_bayes(locked_study, monkeypatch):
    from analysis.cli import analyze_study

    folder, runs = locked_study
    monkeypatch.setenv("LEAKLAB_RUNS", str(runs))
    res = analyze_study(folder, bayes=True, draws=300, tune=300)
    fit = res.bayes_fit("tiny/letter_logprob/target/default")
    assert (runs / "synth" / fit.netcdf).exists() and (runs / "synth" / fit.ppc_figure).exists()
    c = {x.name: x for x in fit.contrasts}["combined_directional"]
    assert c.hdi_low < 0.6 < c.hdi_high
    dec = {d.hypothesis_id: d for d in res.decisions}
    if fit.usable:
        assert dec["H1"].verdict == "supported", dec["H1"].reason
    else:
        assert dec["H1"].verdict == "unusable"
    assert not math.isnan(c.mean)
    assert np.isfinite(fit.diagnostics.rhat_max)
