"""Executors: a local Ray cluster trains the toy matrix with 2 workers and gives the same
artifacts as the local executor; a worker killed mid-cell is retried without loss or duplication.
`leaklab run --executor ray` end to end (train and eval on Ray) is a slow test."""

import json

import pytest
import torch
from safetensors.torch import load_file

from leaklab.executors import LocalExecutor, RayExecutor, TrainUnit, make_executor, run_train_unit
from leaklab.runstore import train_dir
from leaklab.study import load_study
from toy_study import write_toy_study

import ray  # noqa: E402  (in the test extra: the Ray path is tested in CI, never skipped)


def _units(study):
    return [TrainUnit(str(study.folder), m.run_label, arm, seed, exploratory=True) for m, arm, seed in study.cells()]


def _weights(cell):
    return load_file(str(cell / "adapter" / "adapter_model.safetensors"))


@pytest.mark.long_running
@pytest.mark.timeout(900)
def test_ray_matches_local_and_survives_a_killed_worker(tmp_path, monkeypatch):
    from training.matrix import prepare_data

    # local executor, reference artifacts
    monkeypatch.setenv("LEAKLAB_RUNS", str(tmp_path / "runs_local"))
    local = load_study(write_toy_study(tmp_path / "local" / "toy", seeds=(0,)))
    prepare_data(local)
    LocalExecutor().map(run_train_unit, _units(local))

    # Ray executor on a local 2-CPU cluster; every unit's worker dies once before training
    monkeypatch.setenv("LEAKLAB_RUNS", str(tmp_path / "runs_ray"))
    monkeypatch.setenv("LEAKLAB_TEST_CRASH_ONCE", str(tmp_path / "crash_markers"))
    remote = load_study(write_toy_study(tmp_path / "ray" / "toy", seeds=(0,)))
    prepare_data(remote)
    ex = RayExecutor(num_cpus=2, max_retries=2)
    try:
        out = ex.map(run_train_unit, _units(remote))
    finally:
        ex.shutdown()
    crashed = sorted(p.name for p in (tmp_path / "crash_markers").glob("*.crashed"))
    assert len(crashed) == 3, crashed  # every unit lost its worker once and was retried

    assert len(out) == 3
    for m, arm, seed in remote.cells():
        a = train_dir(local.runs_dir, m.run_label, arm, seed)
        b = train_dir(remote.runs_dir, m.run_label, arm, seed)
        assert (b / "DONE").exists()
        wa, wb = _weights(a), _weights(b)
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)
        la = [json.loads(x)["loss"] for x in (a / "loss.jsonl").read_text().splitlines()]
        lb = [json.loads(x)["loss"] for x in (b / "loss.jsonl").read_text().splitlines()]
        assert la == pytest.approx(lb, abs=1e-5)  # no duplicated steps after the retry


def test_make_executor_rejects_unknown():
    assert make_executor("local").name == "local"
    with pytest.raises(ValueError, match="unknown executor"):
        make_executor("slurm")


@pytest.mark.slow  # a second whole toy pipeline (~130 s on 2 cores); the Ray training test above stays in make test
@pytest.mark.timeout(1500)
def test_leaklab_run_on_ray_gives_the_same_results_as_local(tmp_path, toy_run):
    """`leaklab run --executor ray` end to end (train + eval units on Ray) reproduces the local
    run's scores, effects, posteriors and decisions exactly (the local run: the session's
    `toy_run`, tests/conftest.py)."""
    import pandas as pd
    from conftest import leaklab_cli

    assert toy_run.resumed.returncode == 0, toy_run.resumed.stderr[-3000:]
    results = {}
    for name in ("local", "ray"):
        if name == "ray":
            study = write_toy_study(tmp_path / name / "toy")
            for args in (["prereg", "lock", str(study)], ["run", str(study), "--executor", "ray"]):
                r = leaklab_cli(args, tmp_path / "runs_ray", timeout=1200)
                assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
        runs = (tmp_path / "runs_ray" if name == "ray" else toy_run.runs) / "toy"
        frame = pd.read_parquet(runs / "analysis" / "frame.parquet")
        keys = ["arm", "seed", "measure", "item_set", "item_id", "option_order"]
        results[name] = (
            frame.sort_values(keys)[keys + ["value"]].reset_index(drop=True),
            json.loads((runs / "analysis" / "results.json").read_text()),
        )
    (f_local, r_local), (f_ray, r_ray) = results["local"], results["ray"]
    pd.testing.assert_frame_equal(f_local, f_ray, check_exact=False, atol=1e-6)
    eff = lambda r: {e["id"]: (e["estimate"], e["ci_low"], e["ci_high"]) for e in r["effects"]}  # noqa: E731
    assert eff(r_local).keys() == eff(r_ray).keys()
    for k, v in eff(r_local).items():
        assert v == pytest.approx(eff(r_ray)[k], abs=1e-6), k
    verdicts = lambda r: {(d["hypothesis_id"], d["model_label"]): d["verdict"] for d in r["decisions"]}  # noqa: E731
    assert verdicts(r_local) == verdicts(r_ray)
