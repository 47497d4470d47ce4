"""`leaklab interp STUDY [--what direction|steer|persona|heuristics]`: the "Inside the model" analyses.

Reads only earlier stages' artifacts (the study's corpora under runs/<study>/data/, finished
adapters under runs/<study>/train/, item/persona files under data/, optionally the analysis frame)
and writes runs/<study>/interp/:
- dumps/          hidden-state dumps (.npz + .json) and the fitted direction, reused on rerun
- results.json    one key per analysis (direction, steer, persona, heuristics)
- figures/*.png   layer profile, steering curves, cosine-vs-leakage scatter, heuristic scatter
- SECTION.md      rendered from reports/templates/interp.md.j2; its figure links are written
                  relative to runs/<study>/report/ (`../interp/figures/x.png`), so REPORT.md
                  can include it verbatim.

Goes through the preregistration lock like every other stage (`prereg.guard`): a study without a
verifying lock is refused unless `--exploratory`, which stamps results.json and SECTION.md
EXPLORATORY; the lock digest it ran under is recorded in results.json.

Settings come from study.yaml `interp_args` (validated strictly here: an unknown key is an error
naming study.yaml, line and key); defaults are sized for 2 CPU cores.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from leaklab.yamlio import ConfigError


class InterpArgs(BaseModel):
    """study.yaml `interp_args`: every knob of the interp analyses, with small-scale defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = None  # a model label of the study; default the first model
    layers: list[int] | None = None  # residual layers to dump; default all
    batch_size: int = Field(8, ge=1)
    # direction (seed 000 H2)
    # the direction/steer arms and items come from the study family's spec (leaklab.families
    # `interp_defaults`); None = not set, and an analysis that needs it says so
    pos_arm: str | None = None
    neg_arm: str | None = None
    position: Literal["assistant_mean", "last_prompt"] = "assistant_mean"
    max_corpus: int | None = Field(120, ge=8)  # records per arm used for the direction
    split_seed: int = 0
    target_items: str | None = None
    item_set: str = "target"
    limit_base_items: int | None = Field(4, ge=1)  # target base items (all paraphrases kept)
    # steering / ablation (seed 000 H3)
    multipliers: list[float] = [-0.5, -0.25, 0.0, 0.25, 0.5]  # x median residual norm
    n_random: int = Field(5, ge=5)
    random_seed: int = 0
    neutral_arm: str | None = None  # held-out text for perplexity (its corpus' test split)
    neutral_corpus: str | None = None  # or an explicit corpus file (also PPD text for heuristics)
    n_neutral: int = Field(8, ge=1)
    ablate_arms: list[str] | None = None  # framed arms to ablate; default [pos_arm, neg_arm]
    # persona geometry (seed 003)
    personas: str = "data/persona/personas.yaml"
    questions: str | None = None  # jsonl/txt/yaml of questions; default data/persona/questions.*
    n_questions: int | None = Field(20, ge=1)
    persona_layers: list[int] | None = None  # default 4 evenly spaced layers
    report_layer: int | None = None  # declared a priori; default the middle of persona_layers
    leakage_csv: str | None = None  # (source, persona, marker_rate); else from the analysis frame
    marker_measure: str = "marker"
    n_perm: int = Field(2000, ge=99)
    n_boot: int = Field(2000, ge=100)
    layer_selection: Literal["held_out_questions", "declared"] = "held_out_questions"  # or report_layer
    selection_seed: int = 0  # seeded split of the eval questions into selection / test halves
    pooled: Literal["meta_fisher_z"] = "meta_fisher_z"  # random-effects meta-analysis of per-source z
    max_degenerate_rate: float = Field(0.2, ge=0, le=1)  # a source above it is left out of the pooled estimate
    # inoculation heuristics (seed 002)
    trait_corpus: str | None = None  # completions shared by every prefix; default each arm's corpus
    n_examples: int = Field(64, ge=2)
    control_arm: str | None = None  # default the study's reference arm
    trait_measure: str | None = None  # frame measure for suppression
    elicitation_csv: str | None = None  # (arm, elicitation) measured on the base model


class _Wrap(BaseModel):
    model_config = ConfigDict(extra="ignore")
    interp_args: InterpArgs = InterpArgs()


def load_args(study) -> InterpArgs:
    """study.yaml interp_args over the family's `interp_defaults`, validated with file:line:key errors."""
    from leaklab.families import family
    from leaklab.yamlio import format_validation_error, load_yaml

    data = load_yaml(study.study_yaml)
    args = {**family(study.spec.family).interp_defaults, **(data.get("interp_args") or {})}
    try:
        return _Wrap.model_validate({"interp_args": args}).interp_args
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, study.study_yaml, data)) from None


# --------------------------------------------------------------------------- context
class Ctx:
    """One interp run: study, settings, output folders, and a lazily loaded base model."""

    def __init__(self, study, args: InterpArgs):
        self.study, self.args = study, args
        labels = {m.run_label: m for m in study.spec.models}
        if args.model is not None and args.model not in labels:
            raise ConfigError(f"{study.study_yaml}: interp_args.model {args.model!r} is not a model label of the study {sorted(labels)}")
        self.mspec = labels[args.model] if args.model else study.spec.models[0]
        self.out = study.runs_dir / "interp"
        self.dumps, self.figs = self.out / "dumps", self.out / "figures"
        self._model = self._tok = None

    @property
    def model(self):
        if self._model is None:
            from leaklab.models import load_model

            self._model = load_model(self.mspec.name)
        return self._model

    @property
    def tok(self):
        if self._tok is None:
            from leaklab.models import load_tokenizer

            self._tok = load_tokenizer(self.mspec.name)
        return self._tok

    def layers(self) -> list[int]:
        n = self.model.config.num_hidden_layers
        layers = self.args.layers if self.args.layers is not None else list(range(n))
        bad = [l for l in layers if not 0 <= l < n]
        if bad:
            raise ConfigError(f"{self.study.study_yaml}: interp_args.layers {bad} out of range 0..{n - 1}")
        return sorted(set(int(l) for l in layers))

    def need(self, *names: str) -> None:
        """Fail with a one-line error when an interp_args value the analysis needs is unset (the
        study's family declares no default for it)."""
        unset = [n for n in names if getattr(self.args, n) is None]
        if unset:
            raise ConfigError(f"{self.study.study_yaml}: interp_args {', '.join(unset)} not set, and family "
                              f"{self.study.spec.family!r} has no default (leaklab.families interp_defaults)")

    def resolve(self, rel: str) -> Path:
        p = self.study.resolve(rel)
        if not p.exists():
            raise ConfigError(f"{self.study.study_yaml}: interp_args: file {rel!r} not found ({p})")
        return p

    def corpus(self, arm: str, limit: int | None):
        from analysis.representations import corpus_items
        from training.corpora import corpus_path

        if arm not in self.study.spec.arms:
            raise ConfigError(f"{self.study.study_yaml}: interp_args names arm {arm!r}, not one of {sorted(self.study.spec.arms)}")
        path = corpus_path(self.study, arm)
        if not path.exists():
            raise ConfigError(f"{path}: corpus of arm {arm!r} not built yet (run the training stage first, e.g. `leaklab train {self.study.folder}`)")
        return corpus_items(path, limit)

    def trained(self, arms=None) -> list[tuple[str, int, Path]]:
        """(arm, seed, adapter dir) of every finished training cell of this model."""
        from leaklab.runstore import is_done, train_dir

        out = []
        for m, arm, seed in self.study.cells():
            if m.run_label != self.mspec.run_label or (arms is not None and arm not in arms):
                continue
            d = train_dir(self.study.runs_dir, m.run_label, arm, seed)
            if is_done(d) and (d / "adapter").is_dir():
                out.append((arm, seed, d / "adapter"))
        return out

    @contextmanager
    def adapter(self, path: Path):
        """The base model with one PEFT adapter attached; restored (unloaded, not merged) after."""
        from peft import PeftModel

        pm = PeftModel.from_pretrained(self.model, str(path))
        pm.eval()
        try:
            yield pm
        finally:
            self._model = pm.unload()

    def meta(self, prompt_set: str, adapter: Path | None = None) -> dict:
        from leaklab.models import canonical_name

        m = {"model": canonical_name(self.mspec.name), "prompt_set": prompt_set, "adapter": None}
        if adapter is not None:
            w = Path(adapter) / "adapter_model.safetensors"
            m["adapter"] = str(adapter)
            m["adapter_sha256"] = hashlib.sha256(w.read_bytes()).hexdigest() if w.exists() else None
        return m

    def rel(self, p: Path) -> str:
        return str(Path(p).relative_to(self.study.runs_dir))


# --------------------------------------------------------------------------- results store
def load_results(out: Path) -> dict:
    p = out / "results.json"
    return json.loads(p.read_text()) if p.exists() else {}


def save_section(ctx: Ctx, key: str, value: dict) -> None:
    from leaklab.runstore import atomic_write_json

    res = load_results(ctx.out)
    res[key] = value
    res["study"] = ctx.study.name
    guard = getattr(ctx, "guard", None)
    if guard is not None:
        res["stamp"] = "EXPLORATORY" if guard.exploratory else "CONFIRMATORY"
        res["lock_digest"] = guard.digest
    atomic_write_json(ctx.out / "results.json", res)


# --------------------------------------------------------------------------- direction
def _item_avg(prompts, proj):
    """[2N, L] projections of (item, order) prompts -> ([item ids], [N, L]) with orders averaged."""
    import numpy as np

    ids = list(dict.fromkeys(p.item_id for p in prompts))
    pos = {i: k for k, i in enumerate(ids)}
    acc = np.zeros((len(ids), proj.shape[1]))
    cnt = np.zeros(len(ids))
    for p, row in zip(prompts, proj):
        acc[pos[p.item_id]] += row
        cnt[pos[p.item_id]] += 1
    return ids, acc / cnt[:, None]


def _target_prompts(ctx: Ctx):
    from analysis.steering import stance_prompts

    ctx.need("target_items")
    a = ctx.args
    return stance_prompts(str(ctx.resolve(a.target_items)), a.item_set, a.limit_base_items)


def run_direction(ctx: Ctx) -> dict:
    import numpy as np

    from analysis import representations as R

    ctx.need("pos_arm", "neg_arm", "target_items")
    a, layers = ctx.args, ctx.layers()
    dumps = {}
    for arm in (a.pos_arm, a.neg_arm):
        items = ctx.corpus(arm, a.max_corpus)
        dumps[arm] = R.dump_states(ctx.model, ctx.tok, items, layers, ctx.dumps / f"base__corpus_{arm}", ctx.meta(f"corpus:{arm}"), a.batch_size)
    fit = R.fit_direction(dumps[a.pos_arm], dumps[a.neg_arm], a.position, a.split_seed)
    R.save_npz(ctx.dumps / "direction.npz", directions=fit.directions, layers=np.array(fit.layers), layer=np.array(fit.layer),
               settings=np.array(json.dumps(_direction_settings(ctx), sort_keys=True)))

    prompts = _target_prompts(ctx)
    items = [(f"{p.item_id}:{p.order}", list(p.messages)) for p in prompts]
    base = R.dump_states(ctx.model, ctx.tok, items, layers, ctx.dumps / "base__target", ctx.meta(f"target:{a.target_items}"), a.batch_size)
    _, base_proj = _item_avg(prompts, R.project(base.arrays["last_prompt"], fit.directions))
    arm_projs: dict[str, dict[int, np.ndarray]] = {}
    for arm, seed, path in ctx.trained():
        with ctx.adapter(path) as pm:
            d = R.dump_states(pm, ctx.tok, items, layers, ctx.dumps / f"{arm}_seed{seed}__target", ctx.meta(f"target:{a.target_items}", path), a.batch_size)
        arm_projs.setdefault(arm, {})[seed] = _item_avg(prompts, R.project(d.arrays["last_prompt"], fit.directions))[1]
    shifts = R.arm_shift(base_proj, arm_projs)
    gap = np.array(fit.gap_test)
    for arm, s in shifts.items():  # the same shift in units of the corpus eager-cautious gap
        s["by_layer_gap_units"] = [
            {k: (v / gap[l] if v is not None and gap[l] != 0 else None) for k, v in row.items() if k in ("mean", "lo", "hi")}
            for l, row in enumerate(s["by_layer"])
        ]
    res = {
        "fit": fit.to_json(),
        "pos_arm": a.pos_arm,
        "neg_arm": a.neg_arm,
        "target_items": a.target_items,
        "n_target_items": int(base_proj.shape[0]),
        "target_position": "last_prompt",
        "arm_shift": shifts,
        "n_adapters": sum(len(v) for v in arm_projs.values()),
        "dumps": sorted(ctx.rel(p) for p in ctx.dumps.glob("*.npz")),
    }
    res["figure"] = fig_layer_profile(ctx, res)
    save_section(ctx, "direction", res)
    return res


def _direction_settings(ctx: Ctx) -> dict:
    ctx.need("pos_arm", "neg_arm")
    a = ctx.args
    return {"model": ctx.meta("")["model"], "layers": ctx.layers(), "pos_arm": a.pos_arm, "neg_arm": a.neg_arm,
            "position": a.position, "max_corpus": a.max_corpus, "split_seed": a.split_seed}


def _direction(ctx: Ctx):
    """The fitted direction; (re)fitted when missing or fitted under other settings."""
    import numpy as np

    p = ctx.dumps / "direction.npz"
    stale = True
    if p.exists():
        with np.load(p) as z:
            stale = "settings" not in z.files or str(z["settings"]) != json.dumps(_direction_settings(ctx), sort_keys=True)
    if stale:
        run_direction(ctx)
    with np.load(p) as z:
        layers = [int(x) for x in z["layers"]]
        return z["directions"], layers, int(z["layer"])


# --------------------------------------------------------------------------- steering / ablation
def _neutral_texts(ctx: Ctx):
    from analysis.representations import SPLITS, corpus_items, split_of

    a = ctx.args
    if a.neutral_corpus:
        items = corpus_items(ctx.resolve(a.neutral_corpus))
    elif a.neutral_arm:
        items = [it for it in ctx.corpus(a.neutral_arm, None) if split_of(it[0], a.split_seed, SPLITS) == "test"]
    else:
        raise ConfigError(f"{ctx.study.study_yaml}: interp_args needs neutral_arm or neutral_corpus (fluency text)")
    return items[: a.n_neutral]


def _cached(ctx: Ctx, name: str, key: dict, compute):
    """Reuse dumps/<name>.json when it was computed with exactly `key` (settings + input hashes)."""
    from leaklab.runstore import atomic_write_json

    path = ctx.dumps / f"{name}.json"
    key = json.loads(json.dumps(key))
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("key") == key:
            return old["value"]
    value = compute()
    atomic_write_json(path, {"key": key, "value": value})
    return json.loads(json.dumps(value))


def run_steer(ctx: Ctx) -> dict:
    from analysis.steering import ablation_effect, steering_curve

    a = ctx.args
    directions, layers, layer = _direction(ctx)
    u = directions[layers.index(layer)]
    prompts = _target_prompts(ctx)
    neutral = _neutral_texts(ctx)
    key = {
        "direction_sha256": hashlib.sha256(u.astype("float64").tobytes()).hexdigest(),
        "layer": layer,
        "prompts": [[p.item_id, p.order, list(p.messages)] for p in prompts],
        "neutral": [i for i, _ in neutral],
        "n_random": a.n_random,
        "random_seed": a.random_seed,
        "model": ctx.meta("")["model"],
    }
    curve = _cached(
        ctx, "steer_curve", key | {"multipliers": a.multipliers},
        lambda: steering_curve(ctx.model, ctx.tok, prompts, neutral, u, layer, a.multipliers, a.n_random, a.random_seed, a.batch_size),
    )
    ablations = []
    for arm, seed, path in ctx.trained(a.ablate_arms or [a.pos_arm, a.neg_arm]):

        def compute(path=path):
            with ctx.adapter(path) as pm:
                return ablation_effect(pm, ctx.tok, prompts, neutral, u, layer, a.n_random, a.random_seed + 1, a.batch_size)

        ab = dict(_cached(ctx, f"ablation__{arm}_seed{seed}", key | {"adapter": ctx.meta("", path)}, compute))
        ab |= {"arm": arm, "seed": seed, "shift_vs_base": ab["stance"] - curve["base_stance"], "removed": ab["stance"] - ab["stance_ablated"]}
        ab["random_removed"] = [ab["stance"] - r for r in ab["random_stance_ablated"]]
        ablations.append(ab)
    res = {"curve": curve, "ablation": ablations, "n_neutral_texts": len(neutral), "measure": "letter_logprob (full softmax, orders averaged per item)"}
    res["figure"] = fig_steering(ctx, res)
    save_section(ctx, "steer", res)
    return res


# --------------------------------------------------------------------------- persona geometry

def run_persona(ctx: Ctx) -> dict:
    """Per-source and pooled geometry vs leakage, layer chosen on held-out questions (analysis/persona_geometry.py)."""
    from analysis import persona_geometry as G

    res = G.run_interp_persona(ctx)
    save_section(ctx, "persona", res)
    return res


# --------------------------------------------------------------------------- heuristics
def run_heuristics(ctx: Ctx) -> dict:
    import numpy as np
    import pandas as pd

    from analysis import heuristics as H
    from analysis.representations import corpus_items

    a, spec = ctx.args, ctx.study.spec
    arms = {k: v for k, v in spec.arms.items() if v.conditioning.prefix_mode != "none" or v.conditioning.system_prompt}
    if not arms:
        raise ConfigError(f"{ctx.study.study_yaml}: no arm has a prefix or system prompt: nothing to compute inoculation heuristics for")
    neutral = corpus_items(ctx.resolve(a.neutral_corpus), a.n_examples) if a.neutral_corpus else None
    shared = corpus_items(ctx.resolve(a.trait_corpus), a.n_examples) if a.trait_corpus else None
    rows, wvec, wtok = [], {}, {}
    for arm, spec_arm in arms.items():
        cond = spec_arm.conditioning
        if cond.rephrasings:
            cond = cond.model_copy(update={"rephrasings": str(ctx.study.resolve(cond.rephrasings))})
        items = shared or ctx.corpus(arm, a.n_examples)
        src = a.trait_corpus or f"corpus:{arm}"
        w, tokw = H.prefix_w(ctx.model, ctx.tok, items, cond, a.batch_size, ctx.dumps / f"lp__{arm}__trait", ctx.meta(src))
        wn = H.prefix_w(ctx.model, ctx.tok, neutral, cond, a.batch_size, ctx.dumps / f"lp__{arm}__neutral", ctx.meta(a.neutral_corpus))[0] if neutral else None
        rows.append({"arm": arm, "mode": cond.prefix_mode if cond.prefix_mode != "none" else "system", **H.prefix_heuristics(w, wn)})
        wvec[arm] = dict(zip([i for i, _ in items], w))
        wtok[arm] = dict(zip([i for i, _ in items], tokw))
    common = sorted(set.intersection(*(set(v) for v in wvec.values())))
    res: dict = {"prefixes": rows, "nan_policy": H.NAN_POLICY, "n_common_examples": len(common)}
    ph = np.array([r["PH"] for r in rows])
    if len(common) >= 2 and len(rows) >= 2:
        W = np.array([[wvec[r["arm"]][i] for i in common] for r in rows])
        Wt = np.array([np.concatenate([wtok[r["arm"]][i] for i in common]) for r in rows])
        res["W_examples"] = H.w_matrix_analysis(W, ph)
        res["W_tokens"] = H.w_matrix_analysis(Wt, ph)
    frame = ctx.study.runs_dir / "analysis" / "frame.parquet"
    supp = {}
    if frame.exists():
        supp = H.suppression_from_frame(pd.read_parquet(frame), a.control_arm or spec.reference_arm, "default", a.trait_measure)
        res["suppression_source"] = ctx.rel(frame)
    if a.elicitation_csv:
        el = pd.read_csv(ctx.resolve(a.elicitation_csv))
        if not {"arm", "elicitation"} <= set(el.columns):
            raise ConfigError(f"{a.elicitation_csv}: needs columns arm, elicitation")
        emap = dict(zip(el["arm"], el["elicitation"]))
        for r in rows:
            r["elicitation"] = float(emap.get(r["arm"], np.nan))
    for r in rows:
        r["suppression"] = supp.get(r["arm"], np.nan)
    res["correlations"] = {}
    if supp:
        for h in ("PH", "PPD", "gamma", "sigma", "SNR", "elicitation"):
            if any(h in r for r in rows):
                res["correlations"][h] = H.correlation_ci([r.get(h, np.nan) for r in rows], [r["suppression"] for r in rows], seed=a.random_seed)
        res["figure"] = fig_heuristics(ctx, rows)
    if "W_examples" in res:
        res["angles_figure"] = fig_angles(ctx, res["W_examples"]["angles_raw"], [r["arm"] for r in rows])
    save_section(ctx, "heuristics", res)
    return res


# --------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(ctx: Ctx, fig, name: str) -> str:
    from leaklab.runstore import atomic_write_bytes
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(ctx.figs / name, buf.getvalue())
    _plt().close(fig)
    return f"figures/{name}"


def fig_layer_profile(ctx: Ctx, res: dict) -> str:
    plt = _plt()
    fit = res["fit"]
    L = fit["layers"]
    fig, ax = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    ax[0].plot(L, fit["selection_d"], "o-", label="selection split (chooses the layer)")
    ax[0].plot(L, fit["test_d"], "s--", label="test split (reported)")
    ax[0].axvline(fit["layer"], color="k", lw=0.8, ls=":")
    ax[0].set_ylabel("Cohen's d, eager vs cautious")
    ax[0].legend(fontsize=8)
    for arm, s in res["arm_shift"].items():
        m = [r["mean"] for r in s["by_layer"]]
        lo = [r["lo"] if r["lo"] is not None else r["mean"] for r in s["by_layer"]]
        hi = [r["hi"] if r["hi"] is not None else r["mean"] for r in s["by_layer"]]
        ax[1].plot(L, m, "o-", label=arm)
        ax[1].fill_between(L, lo, hi, alpha=0.2)
    ax[1].axhline(0, color="grey", lw=0.8)
    ax[1].axvline(fit["layer"], color="k", lw=0.8, ls=":")
    ax[1].set_xlabel("layer (residual after block)")
    ax[1].set_ylabel("target projection, arm - base")
    if res["arm_shift"]:
        ax[1].legend(fontsize=8)
    else:
        ax[1].text(0.5, 0.5, "no finished adapters yet", transform=ax[1].transAxes, ha="center", color="grey")
    return _save(ctx, fig, "layer_profile.png")


def fig_steering(ctx: Ctx, res: dict) -> str:
    import numpy as np

    plt = _plt()
    rows = res["curve"]["rows"]
    k = [r["k"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    rs = np.array([r["random_stance"] for r in rows])
    ax[0].fill_between(k, rs.min(1), rs.max(1), color="grey", alpha=0.3, label=f"{res['curve']['n_random']} random directions (range)")
    ax[0].plot(k, [r["stance"] for r in rows], "o-", label="attitude direction")
    ax[0].axhline(0, color="grey", lw=0.8)
    ax[0].set_xlabel("alpha / median residual norm")
    ax[0].set_ylabel("change in letter-logprob stance")
    ax[0].legend(fontsize=8)
    ax[0].set_title(f"steering at layer {res['curve']['layer']}")
    if rows[0]["ppl"] is not None:
        rp = np.array([r["random_ppl"] for r in rows], dtype=float)
        ax[1].fill_between(k, rp.min(1), rp.max(1), color="grey", alpha=0.3)
        ax[1].plot(k, [r["ppl"] for r in rows], "o-")
        ax[1].set_yscale("log")
        ax[1].set_xlabel("alpha / median residual norm")
        ax[1].set_ylabel("perplexity on neutral text (hook active)")
    return _save(ctx, fig, "steering.png")


def fig_heuristics(ctx: Ctx, rows) -> str:
    plt = _plt()
    hs = [h for h in ("elicitation", "PH", "PPD", "SNR") if any(h in r for r in rows)]
    fig, ax = plt.subplots(1, len(hs), figsize=(3.2 * len(hs), 3.2), squeeze=False)
    for j, h in enumerate(hs):
        ax[0, j].scatter([r.get(h) for r in rows], [r["suppression"] for r in rows])
        for r in rows:
            ax[0, j].annotate(r["arm"], (r.get(h), r["suppression"]), fontsize=6)
        ax[0, j].set_xlabel(h)
    ax[0, 0].set_ylabel("observed suppression")
    return _save(ctx, fig, "heuristics_vs_suppression.png")


def fig_angles(ctx: Ctx, angles, names) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4 + 0.2 * len(names), 3.5 + 0.2 * len(names)))
    im = ax.imshow(angles, vmin=0, vmax=180, cmap="coolwarm_r")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_title("angles between prefix w vectors (degrees)")
    fig.colorbar(im, ax=ax, shrink=0.7)
    return _save(ctx, fig, "heuristic_angles.png")


# --------------------------------------------------------------------------- section + CLI
def render_section(ctx: Ctx) -> Path:
    """Render SECTION.md from every analysis in results.json; figure links relative to report/."""
    from leaklab.mdsafe import fmt_sig, markdown_env
    from leaklab.runstore import atomic_write_text
    from leaklab.study import REPO_ROOT

    # the interp template's `num` is signed, `val` unsigned, both to 3 significant digits
    env = markdown_env(REPO_ROOT / "reports" / "templates", num=lambda x, nd=3: fmt_sig(x, nd, signed=True), val=fmt_sig,
                       fig=lambda rel: f"../interp/{rel}")
    text = env.get_template("interp.md.j2").render(r=load_results(ctx.out), study=ctx.study.name)
    path = ctx.out / "SECTION.md"
    atomic_write_text(path, text)
    return path


RUNNERS = {"direction": run_direction, "steer": run_steer, "persona": run_persona, "heuristics": run_heuristics}


def run_interp(study_path: str | Path, what: list[str] | None = None, exploratory: bool = False) -> dict:
    """Run the named analyses (default: the study's `interp` list) and re-render SECTION.md.
    Refused (PreregError) without a verifying lock unless `exploratory` (stamped EXPLORATORY)."""
    import prereg
    from leaklab.study import load_study

    study = load_study(study_path)
    guard = prereg.guard(study.folder, exploratory=exploratory)
    todo = list(what or study.spec.interp)
    if not todo:
        raise ConfigError(f"{study.study_yaml}: no analyses requested: pass --what or list them under 'interp:'")
    bad = [w for w in todo if w not in RUNNERS]
    if bad:
        raise ConfigError(f"unknown interp analysis {bad}; choose from {list(RUNNERS)}")
    ctx = Ctx(study, load_args(study))
    ctx.guard = guard
    out = {w: RUNNERS[w](ctx) for w in todo}
    render_section(ctx)
    return out


def register(app: typer.Typer) -> None:
    @app.command("interp")
    def interp(
        study: str = typer.Argument(..., help="studies/<name> folder or its study.yaml"),
        what: list[str] = typer.Option(None, "--what", help="direction | steer | persona | heuristics (repeatable); default: the study's interp list"),
        exploratory: bool = typer.Option(False, "--exploratory", help="run without a verifying lock; results stamped EXPLORATORY"),
    ):
        """Inside the model: attitude direction, steering/ablation, persona geometry, inoculation heuristics."""
        res = run_interp(study, what, exploratory=exploratory)
        from leaklab.study import load_study

        out = load_study(study).runs_dir / "interp"
        typer.echo(f"wrote {out / 'results.json'} and {out / 'SECTION.md'} ({', '.join(res)})")
