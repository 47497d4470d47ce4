"""`backend: vllm` end to end on CPU, through Inspect's vllm provider and leaklab.vllm_server.

Needs the vLLM venv (`make setup-vllm`; run with `make test-vllm`); skipped where vllm is not
importable. Marked slow: every test starts a vLLM server (1-5 minutes on a loaded 2-core CPU).

1. SmolLM2-135M, three LoRA adapters trained by leaklab: the same locked study evaluated by
   the in-process `leaklab/` provider and by vLLM. Per-sample letter-logprob margins agree
   within MARGIN_TOL nats, greedy forced choices agree, the generated trait task agrees on
   most samples, and the frames and frequentist effects agree. The adapters must really be
   applied: vLLM's adapter margins match the provider's adapter margins, not the base's.
2. studies/attitude-paper and studies/inoculation-paper run their eval stage unchanged on
   the vllm backend, on a tiny vLLM-loadable Llama (models, seeds and training steps shrunk
   in a copy; the inoculation grader moves to the in-process provider).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: `make setup-vllm`, then `make test-vllm`")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from leaklab.study import REPO_ROOT  # noqa: E402
from toy_study import PREREG, STUDY  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(10800)]

# vLLM (fp32 CPU kernels, punica LoRA) and transformers+PEFT (fp32) differ by float rounding;
# letter margins are differences of two log-probabilities
MARGIN_TOL = 0.02
KEYS = ["arm", "seed", "measure", "item_set", "item_id", "option_order", "condition", "epoch"]


def _cli(*args: str, env: dict, timeout: int = 5400) -> str:
    r = subprocess.run([sys.executable, "-m", "leaklab.cli", *args], cwd=REPO_ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"leaklab {' '.join(args)}:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return r.stdout


def _env(runs: Path) -> dict:
    return dict(os.environ, LEAKLAB_RUNS=str(runs), PYTHONUNBUFFERED="1")


SMOL_STUDY = (
    STUDY.replace("{name: tiny-random, label: tiny}", "{name: smollm2-135m-instruct, label: smollm2}")
    .replace("seeds: [0, 1]", "seeds: [0]")
    .replace("learning_rate: 1.0e-3", "learning_rate: 1.0e-2")  # 2 large steps: the adapters move the margins
    .replace("batch_size: 8", "batch_size: 4").replace("max_length: 96", "max_length: 64")
    .replace("max_steps: 3", "max_steps: 2")
    + """\
  - task: tasks/stance.py@forced_choice
    item_set: source
    args: {items: data/attitude/source.jsonl, limit_base_items: 4}
  - task: tasks/trait.py@trait
    item_set: eval
    args: {traits: "caps,exclaim", judge: rule, limit: 4}
    temperature: 0.0
    max_tokens: 24
"""
)


def _frame(runs: Path, study: str) -> pd.DataFrame:
    from analysis.frame import read_frame

    df, _ = read_frame(runs / study / "logs")
    return df.sort_values(KEYS).reset_index(drop=True)


def test_smollm2_vllm_matches_the_provider_and_applies_the_adapters(tmp_path):
    # one locked study per backend; cells trained once (under the leaklab study) and copied
    folders = {}
    for backend in ("leaklab", "vllm"):
        f = tmp_path / backend / "vtoy"
        f.mkdir(parents=True)
        (f / "study.yaml").write_text(SMOL_STUDY.replace("name: toy", "name: vtoy") + f"backend: {backend}\n")
        (f / "prereg.yaml").write_text(PREREG.replace("id: toy", "id: vtoy"))
        folders[backend] = f
    runs = {b: tmp_path / f"runs_{b}" for b in folders}
    _cli("prereg", "lock", str(folders["leaklab"]), env=_env(runs["leaklab"]))
    _cli("run", str(folders["leaklab"]), "--stage", "data", "--stage", "train", "--stage", "eval", env=_env(runs["leaklab"]))
    for sub in ("data", "train"):
        if (runs["leaklab"] / "vtoy" / sub).exists():
            shutil.copytree(runs["leaklab"] / "vtoy" / sub, runs["vllm"] / "vtoy" / sub)
    # the vllm study has its own lock digest; its cells were trained under the other one
    _cli("eval", str(folders["vllm"]), "--exploratory", env=_env(runs["vllm"]))

    a, b = _frame(runs["leaklab"], "vtoy"), _frame(runs["vllm"], "vtoy")
    assert len(a) == len(b) > 0
    pd.testing.assert_frame_equal(a[KEYS], b[KEYS])
    vllm_logs = sorted((runs["vllm"] / "vtoy" / "logs").rglob("*.eval"))
    from inspect_ai.log import read_eval_log

    assert all(read_eval_log(str(p), header_only=True).eval.model.startswith("vllm/") for p in vllm_logs)

    lp = a["measure"] == "letter_logprob"
    va, vb = a.loc[lp, "value"].to_numpy(float), b.loc[lp, "value"].to_numpy(float)
    both = np.isfinite(va) & np.isfinite(vb)
    assert both.mean() > 0.9 and (np.isfinite(va) == np.isfinite(vb)).all()
    diff = np.abs(va[both] - vb[both])
    print(f"letter margins: {both.sum()} samples, max |provider - vllm| = {diff.max():.2e} nats (tolerance {MARGIN_TOL})")
    assert diff.max() < MARGIN_TOL

    fc = a["measure"] == "forced_choice"
    assert fc.sum() > 0
    np.testing.assert_array_equal(a.loc[fc, "value"].to_numpy(float), b.loc[fc, "value"].to_numpy(float))

    gen = a["measure"].str.startswith("trait")
    assert gen.sum() > 0
    agree = (a.loc[gen, "value"].fillna(-1).to_numpy() == b.loc[gen, "value"].fillna(-1).to_numpy()).mean()
    assert agree >= 0.75, f"greedy trait scores agree on only {agree:.0%} of samples"

    # the adapters are applied: per arm, the adapter's margins move away from the base's by
    # far more than the provider/vLLM gap, and vLLM reproduces the provider's adapter margins
    key = ["measure", "item_set", "item_id", "option_order", "condition"]
    base_a = a[lp & (a["arm"] == "base")].set_index(key)["value"]
    for arm in ("cautious", "eager", "neutral"):
        ad_a = a[lp & (a["arm"] == arm)].set_index(key)["value"]
        ad_b = b[lp & (b["arm"] == arm)].set_index(key)["value"]
        moved = float(np.nanmax(np.abs(ad_a - base_a.reindex(ad_a.index))))
        gap = float(np.nanmax(np.abs(ad_a - ad_b.reindex(ad_a.index))))
        print(f"{arm}: max |adapter - base| = {moved:.3f}, max |provider - vllm| = {gap:.2e}")
        assert moved > 10 * MARGIN_TOL and gap < MARGIN_TOL

    # analysis built from each backend's logs: the same effects
    _cli("analyze", str(folders["leaklab"]), "--no-bayes", env=_env(runs["leaklab"]))
    _cli("analyze", str(folders["vllm"]), "--no-bayes", "--exploratory", env=_env(runs["vllm"]))
    ra, rb = (json.loads((runs[k] / "vtoy" / "analysis" / "results.json").read_text()) for k in ("leaklab", "vllm"))
    ea = {e["id"]: e for e in ra["effects"]}
    eb = {e["id"]: e for e in rb["effects"]}
    assert ea.keys() == eb.keys() and ea
    for k in ea:
        for f in ("estimate", "ci_low", "ci_high"):
            if ea[k].get(f) is not None:
                assert ea[k][f] == pytest.approx(eb[k][f], abs=0.05), (k, f)


# ---------------------------------------------------------------- the paper studies, tiny


@pytest.fixture(scope="module")
def tiny_vllm_model(tmp_path_factory) -> Path:
    """A 2-layer random Llama with the SmolLM2 tokenizer that vLLM's CPU attention accepts
    (head_dim 64; tiny-random's head_dim 16 is refused: 'Unsupported CPU attention configuration')."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from leaklab.models import prepare

    out = tmp_path_factory.mktemp("tiny_vllm")
    tok = AutoTokenizer.from_pretrained(prepare("smollm2-135m-instruct"))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(7)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def _paper_copy(name: str, dest: Path, tiny: Path) -> Path:
    """studies/<name> with tiny models, seed 0, 96 documents per arm and 2 training steps; the
    eval plan untouched."""
    folder = dest / name
    shutil.copytree(REPO_ROOT / "studies" / name, folder)
    spec = yaml.safe_load((folder / "study.yaml").read_text())
    spec["models"] = [{"name": str(tiny), "label": m["label"]} for m in spec["models"]]
    spec["seeds"] = [0]
    for arm in spec["arms"].values():  # the data stage validates every document: 2,560 per arm is minutes here
        arm["corpus"]["builder_args"]["n_docs"] = min(arm["corpus"]["builder_args"]["n_docs"], 96)
    spec["training"].update(max_steps=2, dtype="float32", batch_size=4, max_length=128)
    for entry in spec["eval"]:
        if str(entry.get("grader", "")).startswith("vllm/"):
            entry["grader"] = "leaklab/tiny-random"  # an 8B grader does not fit this machine
    assert spec["backend"] == "vllm"
    (folder / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


@pytest.mark.parametrize("name", ["attitude-paper", "inoculation-paper"])
def test_paper_study_eval_stage_runs_on_vllm(name, tmp_path, tiny_vllm_model):
    from inspect_ai.log import read_eval_log

    folder = _paper_copy(name, tmp_path, tiny_vllm_model)
    env = _env(tmp_path / "runs")
    _cli("run", str(folder), "--exploratory", "--stage", "data", "--stage", "train", env=env)
    _cli("eval", str(folder), "--exploratory", "--limit", "2", env=env)
    study = yaml.safe_load((folder / "study.yaml").read_text())["name"]
    logs = sorted((tmp_path / "runs" / study / "logs").rglob("*.eval"))
    heads = [read_eval_log(str(p), header_only=True) for p in logs]
    assert heads and all(h.status == "success" for h in heads)
    assert all(h.eval.model.startswith("vllm/") for h in heads)
    arms = {h.eval.metadata["leaklab"]["arm"] for h in heads}
    spec = yaml.safe_load((folder / "study.yaml").read_text())
    assert arms == {"base", *spec["arms"]}, arms  # every trained adapter was evaluated
    adapters = {h.eval.model.split(":", 1)[1] for h in heads if ":" in h.eval.model}
    assert len(adapters) == len(spec["arms"]) * len(spec["models"])


def test_ray_executor_shares_one_engine_per_base_model(tmp_path, tiny_vllm_model, monkeypatch):
    """Under --executor ray the base and its 3 adapters are served by one engine (a Ray actor),
    started once, not one server per checkpoint; every checkpoint's logs come from it."""
    from inspect_ai.log import read_eval_log

    from leaklab.evaluate import checkpoints
    from leaklab.executors import EvalUnit, RayExecutor, run_eval_unit
    from leaklab.study import load_study

    folder = tmp_path / "rtoy"
    folder.mkdir()
    (folder / "study.yaml").write_text(
        STUDY.replace("{name: tiny-random, label: tiny}", f"{{name: {tiny_vllm_model}, label: tiny}}")
        .replace("seeds: [0, 1]", "seeds: [0]").replace("max_steps: 3", "max_steps: 1") + "backend: vllm\n")
    (folder / "prereg.yaml").write_text(PREREG)
    env = _env(tmp_path / "runs")
    monkeypatch.setenv("LEAKLAB_RUNS", env["LEAKLAB_RUNS"])
    _cli("run", str(folder), "--exploratory", "--stage", "data", "--stage", "train", env=env)
    study = load_study(folder)
    units = [EvalUnit(str(folder), c.label, True) for c in checkpoints(study)]
    assert len(units) == 4
    ex = RayExecutor(num_cpus=2)
    try:
        out = ex.map(run_eval_unit, units)
    finally:
        ex.shutdown()
    print("engine starts:", ex.engine_starts)
    assert len(ex.engine_starts) == 1 and ex.engine_starts[0]["adapters"] == 3
    assert len(out) == 4
    for d in out:
        heads = [read_eval_log(str(p), header_only=True) for p in Path(d).rglob("*.eval")]
        assert heads and all(h.status == "success" and h.eval.model.startswith("vllm/") for h in heads)
