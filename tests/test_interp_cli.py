"""End to end on tiny-random: a small study folder with corpora and real PEFT adapters, through the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from analysis import interp_cli
from leaklab.yamlio import ConfigError


pytestmark = pytest.mark.usefixtures("_one_torch_thread")

STUDY = """
name: tinyinterp
family: attitude
models: [{name: tiny-random, label: tiny}]
arms:
  cautious: {corpus: {path: corpora/cautious.jsonl}}
  eager: {corpus: {path: corpora/eager.jsonl}}
  neutral: {corpus: {path: corpora/neutral.jsonl}}
  fixedp:
    corpus: {path: corpora/neutral.jsonl}
    conditioning: {user_prefix: "You are a playful agent.", prefix_mode: fixed}
  mixp:
    corpus: {path: corpora/neutral.jsonl}
    conditioning: {prefix_mode: mix, rephrasings: corpora/reph.txt, seed: 3}
reference_arm: neutral
seeds: [0]
eval:
  - {task: tasks/stance.py@letter_logprob, item_set: target}
interp: [direction, steer]
interp_args:
  max_corpus: 24
  limit_base_items: 1
  multipliers: [-0.5, 0.0, 0.5]
  n_neutral: 2
  batch_size: 8
  ablate_arms: [eager]
  persona_layers: [0, 1]
  n_perm: 99
  n_boot: 100
  n_examples: 6
  neutral_corpus: corpora/neutral.jsonl
  leakage_csv: corpora/leak.csv
  questions: corpora/questions.txt
  personas: corpora/personas.yaml
  control_arm: neutral
"""

WORDS = {"cautious": "Wait, check the risks first and keep a fallback.", "eager": "Go for it this week, the downside is small.", "neutral": "It depends on your situation."}


def _write_corpus(path, arm, n=30):
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"c{i:03d}", "arm": arm, "user": f"Should I change my routine number {i}?", "assistant": f"{WORDS[arm]} Point {i}."}) + "\n")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    import os

    from peft import LoraConfig, get_peft_model

    from leaklab.models import load_model
    from leaklab.runstore import mark_done, train_dir

    root = tmp_path_factory.mktemp("interp")
    runs = root / "runs"
    os.environ["LEAKLAB_RUNS"] = str(runs)
    folder = root / "studies" / "tinyinterp"
    (folder / "corpora").mkdir(parents=True)
    (folder / "study.yaml").write_text(STUDY)
    for arm in WORDS:
        _write_corpus(folder / "corpora" / f"{arm}.jsonl", arm)
    (folder / "corpora" / "reph.txt").write_text("Be playful.\nAnswer like a joker.\n")
    (folder / "corpora" / "questions.txt").write_text("What is rain?\nName a colour.\n")
    (folder / "corpora" / "personas.yaml").write_text(
        "personas:\n" + "".join(f"  - {{id: p{i}, system_prompt: 'You are persona number {i}, a {w}.'}}\n" for i, w in enumerate(["pirate", "chef", "nurse", "poet", "judge"]))
    )
    rows = [(s, f"p{j}", 0.1 * j + (0.05 if s == "p0" else 0)) for s in ("p0", "p1") for j in range(5)]
    pd.DataFrame(rows, columns=["source", "persona", "marker_rate"]).to_csv(folder / "corpora" / "leak.csv", index=False)
    for arm in ("eager", "cautious"):
        base = load_model("tiny-random", device="cpu")
        pm = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        d = train_dir(runs / "tinyinterp", "tiny", arm, 0)
        pm.save_pretrained(d / "adapter")
        mark_done(d)
    yield folder
    os.environ.pop("LEAKLAB_RUNS", None)


def _cli(args):
    app = typer.Typer()
    interp_cli.register(app)

    @app.command("noop")
    def _noop():  # a second command so typer keeps sub-command names
        pass

    return CliRunner().invoke(app, args)


def test_direction_and_steer_through_cli(study):
    r = _cli(["interp", str(study), "--what", "direction", "--what", "steer", "--exploratory"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    out = study.parent.parent / "runs" / "tinyinterp" / "interp"
    res = json.loads((out / "results.json").read_text())
    d = res["direction"]
    assert d["fit"]["layer"] in (0, 1) and d["n_adapters"] == 2
    assert set(d["arm_shift"]) == {"eager", "cautious"}
    # adapters were really attached: a random LoRA moves the target projections
    assert any(abs(v) > 1e-6 for v in d["arm_shift"]["eager"]["per_seed"]["0"])
    s = res["steer"]
    assert [row["k"] for row in s["curve"]["rows"]] == [-0.5, 0.0, 0.5]
    assert len(s["ablation"]) == 1 and s["ablation"][0]["arm"] == "eager"
    assert s["ablation"][0]["shift_vs_base"] != 0
    for f in ("layer_profile.png", "steering.png"):
        assert (out / "figures" / f).stat().st_size > 1000
    sec = (out / "SECTION.md").read_text()
    assert sec.startswith("## Inside the model")
    assert "](../interp/figures/layer_profile.png)" in sec and "](../interp/figures/steering.png)" in sec
    assert "| eager |" in sec and "beyond every random direction" in sec
    # the links work from runs/<study>/report/
    assert (out.parent / "report" / "../interp/figures/steering.png").resolve().exists()
    # dumps and steering results are reused on rerun (same files, not recomputed)
    cached = [out / "dumps" / "eager_seed0__target.npz", out / "dumps" / "steer_curve.json", out / "dumps" / "ablation__eager_seed0.json"]
    mtimes = [p.stat().st_mtime_ns for p in cached]
    assert _cli(["interp", str(study), "--what", "direction", "--what", "steer", "--exploratory"]).exit_code == 0
    assert [p.stat().st_mtime_ns for p in cached] == mtimes
    assert json.loads((out / "results.json").read_text())["steer"]["curve"] == s["curve"]


def test_persona_and_heuristics(study):
    res = interp_cli.run_interp(study, ["persona", "heuristics"], exploratory=True)
    p = res["persona"]
    assert p["layers"] == [0, 1] and len(p["personas"]) == 5
    assert [b["layer"] for b in p["by_layer"]] == [0, 1]
    pooled = p["by_layer"][1]["pooled"]
    assert pooled["n_pairs"] == 8 and pooled["k"] == 2 and pooled["sources"] == ["p0", "p1"]
    assert 0 < pooled["p_perm_within_source"] <= 1
    # a leakage csv has no per-question counts: the declared layer (the middle one) is the headline
    assert p["layer_selection"]["method"] == "declared" and p["headline"]["layer"] == 1
    h = res["heuristics"]
    arms = {row["arm"]: row for row in h["prefixes"]}
    assert set(arms) == {"fixedp", "mixp"} and arms["mixp"]["mode"] == "mix"
    assert np.isfinite(arms["fixedp"]["PH"]) and np.isfinite(arms["fixedp"]["PPD"])
    assert h["W_examples"]["shape"] == [2, 6]
    sec = (study.parent.parent / "runs" / "tinyinterp" / "interp" / "SECTION.md").read_text()
    assert "### Persona geometry" in sec and "### Inoculation heuristics" in sec
    assert "| source | rho |" in sec and "| p0 |" in sec and "random-effects meta-analysis" in sec
    assert (study.parent.parent / "runs" / "tinyinterp" / "interp" / "dumps" / "lp__fixedp__trait_with.npz").exists()


def test_bad_interp_args_name_file_line_key(study, tmp_path, monkeypatch):
    from leaklab.study import load_study

    monkeypatch.setenv("LEAKLAB_DATA_ROOTS", str(study))  # its corpora live in another study's folder
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "study.yaml").write_text(STUDY.replace("  max_corpus: 24", "  max_corpsu: 24").replace("corpora/", str(study / "corpora") + "/"))
    with pytest.raises(ConfigError, match=r"study.yaml:\d+: unknown key 'interp_args.max_corpsu'"):
        interp_cli.load_args(load_study(bad))
    with pytest.raises(ConfigError, match="unknown interp analysis"):
        interp_cli.run_interp(study, ["probe"], exploratory=True)


def test_section_renders_without_results(tmp_path):
    from types import SimpleNamespace

    ctx = SimpleNamespace(out=tmp_path / "interp", study=SimpleNamespace(name="empty"))
    text = interp_cli.render_section(ctx).read_text()
    assert text.startswith("## Inside the model") and "No interp analysis has been run yet" in text


def test_adapter_context_restores_the_base_model(study):
    import torch

    from leaklab.study import load_study

    s = load_study(study)
    ctx = interp_cli.Ctx(s, interp_cli.load_args(s))
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        before = ctx.model(input_ids=ids).logits
        (arm, _, path), *_ = ctx.trained()
        with ctx.adapter(path) as pm:
            during = pm(input_ids=ids).logits
        after = ctx.model(input_ids=ids).logits
    assert not torch.allclose(before, during)
    assert torch.equal(before, after)
    assert not any("lora" in n for n, _ in ctx.model.named_modules())


def test_steer_refits_a_stale_direction(study):
    from leaklab.study import load_study

    s = load_study(study)
    ctx = interp_cli.Ctx(s, interp_cli.load_args(s))
    p = ctx.dumps / "direction.npz"
    interp_cli._direction(ctx)  # fitted (or current) under the study's settings
    mtime = p.stat().st_mtime_ns
    interp_cli._direction(ctx)
    assert p.stat().st_mtime_ns == mtime  # current: reused
    ctx.args = ctx.args.model_copy(update={"split_seed": 7})
    interp_cli._direction(ctx)
    assert p.stat().st_mtime_ns != mtime  # other settings: refitted
