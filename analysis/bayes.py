"""Hierarchical Bayesian models of score rows (pymc models, sampled by nutpie by default),
contrasts on posterior draws, HDI+ROPE, gates.

One model per (model label, measure, item set, condition): every score row (option orders
kept separate, with a fixed option-order effect when both orders are present) is

    eta = intercept + arm_effect[group] + u_item[item] + seed_sd * z_run[run]
          (+ u_base[base item]) (+ slope_sd * z_slope[group, item]) (+ order * sign)

with arm_effect[reference] = 0; item effects sum-to-zero (ZeroSumNormal with sigma item_sd),
centred where the data pin each item down, else non-centred (`_parametrisation`); run effects
likewise with nutpie, always non-centred with pymc (see `fit_model`). `run` is one fine-tuning run
(model x arm x seed: seeds are nested in arms); for contrasts over eval conditions the run is
the seed shared by the conditions. Likelihoods:

- normal / student_t (letter or token log-prob margins): fitted on y standardised by the
  reference group's SD over item x seed cells (the SD of d), so priors are in SD units for
  every continuous measure; student_t has nu = 1 + Exponential (Kruschke). normal_by_arm: one
  residual SD per group (shares whose spread differs by arm). A heavy-tailed likelihood on
  bimodal scores estimates the mode, not the mean the frequentist half estimates.
- bernoulli / binomial (forced choice +1/-1, marker 0/1, EM flags): logit link; the two
  observed values are the failure/success levels; binomial aggregates rows per cell.
- beta (rates in (0, 1)): logit mean, precision phi.
- ordered_logistic (Likert): cutpoints on the latent logit scale; categories are the observed
  score levels (e.g. (r - 4) / 3).

Contrasts are computed on the natural scale of the score from the draws: for continuous
likelihoods the arm effects times the SD; for the others the group's expected score averaged
over the observed items and option orders (so item effects stay in, as the frame's means do).
SD units divide by the same observed reference SD as the frequentist d, so a ROPE of +/- SESOI
in d is +/- SESOI x SD_ref on the natural scale and both scales give the same verdict.

Verdict (Kruschke, read by `analysis.decide.hdi_rope_reading`, the only module that compares
an HDI with the ROPE): HDI wholly outside the ROPE = effect, wholly inside = equivalent, else
undecided; a fit that fails a diagnostics gate (R-hat, bulk/tail ESS, divergences, BFMI) is
"unusable" and its contrast is not to be read.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

DEFAULT_PRIORS: dict[str, dict] = {
    "intercept": {"dist": "normal", "params": {"mu": 0.0, "sigma": 2.5}},
    "arm_effect": {"dist": "normal", "params": {"mu": 0.0, "sigma": 1.0}},
    "seed_sd": {"dist": "half_normal", "params": {"sigma": 1.0}},
    "item_sd": {"dist": "half_normal", "params": {"sigma": 1.0}},
    "base_item_sd": {"dist": "half_normal", "params": {"sigma": 1.0}},
    "slope_sd": {"dist": "half_normal", "params": {"sigma": 0.5}},
    "residual_sd": {"dist": "half_normal", "params": {"sigma": 1.0}},
    "order_effect": {"dist": "normal", "params": {"mu": 0.0, "sigma": 1.0}},
    "nu": {"dist": "exponential", "params": {"lam": 1 / 29}},
    "phi": {"dist": "exponential", "params": {"lam": 0.05}},
    "cutpoints": {"dist": "normal", "params": {"mu": 0.0, "sigma": 2.5}},
}
DEFAULT_GATES = {"rhat_max": 1.01, "ess_bulk_min": 400, "ess_tail_min": 400, "max_divergences": 0, "bfmi_min": 0.2}


@dataclass
class BayesSpec:
    """Everything the prereg's bayesian plan fixes (build with `spec_from_prereg`)."""

    likelihood: str = "normal"
    random_effects: list[str] = field(default_factory=lambda: ["seed", "item"])
    priors: dict[str, dict] = field(default_factory=dict)
    draws: int = 1000
    tune: int = 1000
    chains: int = 4
    target_accept: float = 0.9
    seed: int = 0
    hdi_prob: float = 0.95
    gates: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_GATES))
    arm_item_slopes: bool = False
    residual_sd_floor: float = 0.0  # natural units; continuous likelihoods (prereg bayesian.residual_sd_floor)
    # nutpie (default) or "pymc" (its Python NUTS: slower, no low-rank mass matrix) / "numpyro" when
    # installed; $LEAKLAB_BAYES_SAMPLER sets the default (the test suite runs pymc: see tests/conftest.py)
    sampler: str = field(default_factory=lambda: os.environ.get("LEAKLAB_BAYES_SAMPLER", "nutpie"))
    cores: int = 1

    def prior(self, name: str) -> dict:
        return self.priors.get(name) or DEFAULT_PRIORS[name]


def spec_from_prereg(plan, measure: str) -> BayesSpec:
    """BayesSpec for `measure` from a prereg BayesianPlan (likelihood, priors, sampler, gates)."""
    if measure not in plan.likelihood:
        raise KeyError(f"the prereg's bayesian.likelihood has no entry for measure {measure!r}")
    return BayesSpec(
        likelihood=plan.likelihood[measure],
        random_effects=list(plan.random_effects),
        priors={k: {"dist": p.dist, "params": dict(p.params)} for k, p in plan.priors.items()},
        draws=plan.draws, tune=plan.tune, chains=plan.chains, target_accept=plan.target_accept,
        seed=plan.seed, hdi_prob=plan.hdi_prob, gates=plan.gates.model_dump(),
        residual_sd_floor=float(plan.residual_sd_floor.get(measure, 0.0)),
    )


def _prior_rv(pm, name: str, spec: BayesSpec, **kw):
    p = spec.prior(name)
    cls = {"normal": pm.Normal, "student_t": pm.StudentT, "half_normal": pm.HalfNormal,
           "half_student_t": pm.HalfStudentT, "half_cauchy": pm.HalfCauchy, "exponential": pm.Exponential}[p["dist"]]
    return cls(name, **p["params"], **kw)


@dataclass
class Fit:
    """A sampled model plus what is needed to turn draws into natural-scale group means."""

    idata: Any
    model: Any
    spec: BayesSpec
    groups: list[str]  # group order (reference first)
    ref: str
    group_col: str
    data: pd.DataFrame  # the rows fitted, with integer codes
    scale: float  # continuous: SD used to standardise y
    center: float
    levels: list[float]  # binary: [fail, success]; ordinal: category values
    sd_ref: float | None  # observed reference SD over item x seed cells (for SD units / ROPE)
    fit_seconds: float
    formula: str
    notes: list[str] = field(default_factory=list)
    coords: dict = field(default_factory=dict)  # the model's dimension labels for this fit
    arrays: dict = field(default_factory=dict)  # the model's data containers for this fit (a cached model serves many)


# frame columns that give a fit's rows one order whatever order the logs were read in (value last:
# rows equal on every key before it are interchangeable)
_ROW_ORDER = ("model_label", "arm", "seed", "checkpoint", "condition", "item_set", "item_id", "option_order",
              "paraphrase_idx", "persona", "question_id", "epoch", "sample_id", "scorer", "value")


def _codes(values: pd.Series) -> tuple[np.ndarray, list]:
    cats = sorted(values.astype(str).unique())
    idx = {c: i for i, c in enumerate(cats)}
    return values.astype(str).map(idx).to_numpy(dtype=int), cats


def _parametrisation(codes: np.ndarray, y: np.ndarray) -> str:
    """'centred' when the data pin each group's effect down (the spread of group means is
    mostly signal: reliability > 0.5), else 'non-centred'. Centred effects with weakly
    informed groups make a funnel (low BFMI, item_sd ESS ~30 on the demo's letter margins);
    non-centred ones mix slowly when every group is measured precisely."""
    frame = pd.DataFrame({"g": codes, "y": y})
    stats = frame.groupby("g")["y"].agg(["mean", "var", "count"])
    if len(stats) < 2 or stats["count"].min() < 2:
        return "non-centred"
    se2 = float((stats["var"] / stats["count"]).mean())
    between = float(stats["mean"].var(ddof=1)) - se2
    return "centred" if between > se2 else "non-centred"


def _zero_sum_effect(pm, name: str, sd, dim: str, param: str):
    """Sum-to-zero group effects (the intercept stays the grand mean) with scale `sd`."""
    if param == "centred":
        return pm.ZeroSumNormal(name, sigma=sd, dims=dim)
    z = pm.ZeroSumNormal(f"z_{name.removeprefix('u_')}", sigma=1.0, dims=dim)
    return pm.Deterministic(name, sd * z, dims=dim)


# ------------------------------------------------------------------------ likelihood registry


@dataclass
class Prepared:
    """What a likelihood's `prepare` makes of the scores: the standardisation and the levels."""

    center: float = 0.0
    scale: float = 1.0
    levels: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sd_floor: float = 0.0  # residual SD floor on the model scale (continuous likelihoods)


@dataclass(frozen=True)
class Likelihood:
    """One registered likelihood: `observe(pm, eta, obs, prep, spec)` adds the observed node, where
    `obs` holds the model's data containers (pm.Data) of the arrays `data(y, prep, df)` returns
    (default {"y": y}: the observed scores as the likelihood reads them), so one compiled model
    serves every data set of the same shapes; `prepare(y, ref_mask, sd_ref)` -> Prepared;
    `expected(eta, fit)` turns linear-predictor draws (S, C) into expected scores on the natural
    scale (None: continuous, the level is linear); `model_scale(y, prep)` is the score on the
    linear predictor's scale (roughly) for the centred / non-centred choice; `intercept` False
    when the likelihood has its own location (ordinal cutpoints: an intercept beside them is not
    identified)."""

    name: str
    observe: Callable
    prepare: Callable
    expected: Callable | None = None
    model_scale: Callable | None = None
    intercept: bool = True
    label: str | None = None
    data: Callable | None = None


LIKELIHOOD_REGISTRY: dict[str, Likelihood] = {}


def likelihood(name: str, *, prepare: Callable, expected: Callable | None = None, model_scale: Callable | None = None,
               intercept: bool = True, label: str | None = None, data: Callable | None = None):
    """Register `fn(pm, eta, obs, prep, spec)` as the observation model of likelihood `name`
    (`data(y, prep, df) -> {name: array}`: the arrays `obs` holds as pm.Data)."""
    def deco(fn: Callable) -> Callable:
        LIKELIHOOD_REGISTRY[name] = Likelihood(name, fn, prepare, expected, model_scale, intercept, label or name, data)
        return fn
    return deco


def likelihood_label(name: str) -> str:
    """The name results.json uses (ordered_logistic -> ordinal)."""
    return LIKELIHOOD_REGISTRY[name].label or name


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _prep_continuous(y, ref_mask, sd_ref) -> Prepared:
    scale = sd_ref if (sd_ref and sd_ref > 0) else float(np.std(y, ddof=1) or 1.0)
    notes = [] if (sd_ref and sd_ref > 0) else [f"reference SD unusable; y standardised by the pooled SD {scale:.3g}"]
    return Prepared(center=float(np.mean(y[ref_mask])), scale=scale, notes=notes)


def _prep_binary(y, ref_mask, sd_ref) -> Prepared:
    levels = sorted(set(np.unique(y).tolist()))
    if len(levels) > 2:
        raise ValueError(f"a binary likelihood needs a two-level score, found levels {levels[:6]}")
    notes = []
    if len(levels) == 1:
        levels = [levels[0] - 1.0, levels[0]] if levels[0] > 0 else [levels[0], levels[0] + 1.0]
        notes.append(f"only one observed level; levels taken as {levels}")
    return Prepared(levels=[float(v) for v in levels], notes=notes)


def _prep_rate(y, ref_mask, sd_ref) -> Prepared:
    if np.any((y <= 0) | (y >= 1)):
        raise ValueError("beta likelihood needs scores strictly inside (0, 1)")
    return Prepared()


def _prep_ordinal(y, ref_mask, sd_ref) -> Prepared:
    levels = sorted(set(np.round(y, 9).tolist()))
    if len(levels) < 2:
        raise ValueError("ordered_logistic needs at least two observed score levels")
    return Prepared(levels=[float(v) for v in levels])


def _scale_continuous(y, prep: Prepared):
    return (y - prep.center) / prep.scale


def _scale_binary(y, prep: Prepared):
    return (y == prep.levels[-1]).astype(float)


def _exp_binary(eta, fit):
    return fit.levels[0] + (fit.levels[1] - fit.levels[0]) * _sigmoid(eta)


def _exp_rate(eta, fit):
    return _sigmoid(eta)


def _exp_ordinal(eta, fit):
    cut = _post(fit.idata, "cutpoints")  # (S, K-1)
    cdf = _sigmoid(cut[:, None, :] - eta[:, :, None])  # P(y <= k)
    probs = np.diff(np.concatenate([np.zeros(cdf.shape[:2] + (1,)), cdf, np.ones(cdf.shape[:2] + (1,))], axis=2), axis=2)
    return probs @ np.array(fit.levels)


def _data_continuous(y, prep, df):
    out = {"y": (y - prep.center) / prep.scale}
    if prep.sd_floor > 0:  # a data container, so fits with other scales reuse the compiled model
        out["sd_floor"] = np.array([prep.sd_floor])
    return out


def _residual_sd(sigma, obs):
    """sqrt(sigma^2 + floor^2) when the prereg sets a floor (the measurement's resolution)."""
    if "sd_floor" not in obs:
        return sigma
    return (sigma ** 2 + obs["sd_floor"][0] ** 2) ** 0.5


def _data_binary(y, prep, df):
    return {"y": (y == prep.levels[-1]).astype("int64")}


def _data_binomial(y, prep, df):
    # aggregate rows of a cell (same linear predictor) into counts
    key = df[["_g", "_run", "_item", "_base", "_order"]].astype(str).agg("|".join, axis=1).to_numpy()
    _, first, inv = np.unique(key, return_index=True, return_inverse=True)
    k = np.bincount(inv, weights=(y == prep.levels[1]).astype(float)).astype("int64")
    n = np.bincount(inv).astype("int64")
    return {"y": k, "n_trials": n, "cell_row": first.astype("int64")}


def _data_ordinal(y, prep, df):
    return {"y": np.searchsorted(np.array(prep.levels), np.round(y, 9)).astype("int64")}


@likelihood("normal", prepare=_prep_continuous, model_scale=_scale_continuous, data=_data_continuous)
def _normal(pm, eta, obs, prep, spec):
    sigma = _prior_rv(pm, "residual_sd", spec)
    pm.Normal("y", eta, _residual_sd(sigma, obs), observed=obs["y"])


def _data_continuous_by_arm(y, prep, df):
    return {**_data_continuous(y, prep, df), "g": df["_g"].to_numpy(dtype="int64")}


@likelihood("normal_by_arm", prepare=_prep_continuous, model_scale=_scale_continuous, data=_data_continuous_by_arm)
def _normal_by_arm(pm, eta, obs, prep, spec):
    """Normal with one residual SD per group (reference included; prior `residual_sd` for each):
    for shares whose spread differs by arm (a trained arm's answers either show the trait or not,
    the base model's barely vary), where one pooled SD would blur every contrast between the
    quiet arms (the demo's placebo: HDI +/- 23 points pooled, about +/- 1 by arm)."""
    n_groups = len(pm.modelcontext(None).coords["group"]) + 1
    sigma = _prior_rv(pm, "residual_sd", spec, shape=n_groups)
    pm.Normal("y", eta, _residual_sd(sigma, obs)[obs["g"]], observed=obs["y"])


@likelihood("student_t", prepare=_prep_continuous, model_scale=_scale_continuous, data=_data_continuous)
def _student_t(pm, eta, obs, prep, spec):
    sigma = _prior_rv(pm, "residual_sd", spec)
    nu = _prior_rv(pm, "nu", spec)
    pm.StudentT("y", nu=1 + nu, mu=eta, sigma=_residual_sd(sigma, obs), observed=obs["y"])


@likelihood("bernoulli", prepare=_prep_binary, expected=_exp_binary, model_scale=_scale_binary, data=_data_binary)
def _bernoulli(pm, eta, obs, prep, spec):
    pm.Bernoulli("y", logit_p=eta, observed=obs["y"])


@likelihood("binomial", prepare=_prep_binary, expected=_exp_binary, model_scale=_scale_binary, data=_data_binomial)
def _binomial(pm, eta, obs, prep, spec):
    pm.Binomial("y", n=obs["n_trials"], logit_p=eta[obs["cell_row"]], observed=obs["y"])


@likelihood("beta", prepare=_prep_rate, expected=_exp_rate)
def _beta(pm, eta, obs, prep, spec):
    phi = _prior_rv(pm, "phi", spec)
    mu = pm.math.invlogit(eta)
    pm.Beta("y", alpha=mu * phi, beta=(1 - mu) * phi, observed=obs["y"])


@likelihood("ordered_logistic", prepare=_prep_ordinal, expected=_exp_ordinal, intercept=False, label="ordinal",
            data=_data_ordinal)
def _ordered_logistic(pm, eta, obs, prep, spec):
    K = len(prep.levels)
    cp = spec.prior("cutpoints")["params"]
    cut = pm.Normal("cutpoints", mu=cp.get("mu", 0.0), sigma=cp.get("sigma", 2.5), shape=K - 1,
                    transform=pm.distributions.transforms.ordered, initval=np.linspace(-2, 2, K - 1))
    pm.OrderedLogistic("y", eta=eta, cutpoints=cut, observed=obs["y"])


LIKELIHOODS = tuple(LIKELIHOOD_REGISTRY)


# ------------------------------------------------------------------------ compiled-model reuse
#
# Building a pymc model and compiling its log-density gradient costs seconds (pytensor's graph
# rewrites run in every process; its C modules are cached on disk); sampling a demo-sized model
# costs about as much again. Every data array of a model is a pm.Data container, so fits whose
# graph is the same (same likelihood, priors, random-effect terms and parametrisation, same
# array shapes and dimension lengths) share one model: the next fit swaps its arrays in with
# pm.set_data / Model.set_dim and reuses the compiled logp + gradient. The draws are those a
# fresh compile gives (same seed, same data: the same numbers; tests/test_bayes_reuse.py).

MODEL_CACHE_SIZE = 16
COMPILE_COUNT: dict[str, int] = {"model": 0, "logp_dlogp": 0, "nutpie": 0}


class _MemoLogpDlogp:
    """Model.logp_dlogp_function compiled once per argument set (pm.sample asks for it on every
    call). A plain class, so a model carrying it still pickles (pm.sample with cores > 1)."""

    def __init__(self, model):
        self.model = model
        self.fns: dict[str, Any] = {}

    def __call__(self, *args, **kwargs):
        key = repr((args, sorted(kwargs.items())))
        if key not in self.fns:
            COMPILE_COUNT["logp_dlogp"] += 1
            self.fns[key] = type(self.model).logp_dlogp_function(self.model, *args, **kwargs)
        return self.fns[key]


_MODEL_CACHE: dict[tuple, Any] = {}
_NUTPIE_CACHE: dict[tuple, Any] = {}  # graph key -> nutpie's numba-compiled model (data swapped per fit)


def clear_model_cache() -> None:
    """Forget every compiled model (the next fit of each shape compiles afresh)."""
    _MODEL_CACHE.clear()
    _NUTPIE_CACHE.clear()


def _load_data(model, coords: dict, data: dict) -> None:
    """Swap a fit's arrays and coordinate labels into a (cached) model."""
    import pymc as pm

    for name, vals in coords.items():
        if tuple(model.coords.get(name) or ()) != tuple(vals):
            model.set_dim(name, len(vals), coord_values=list(vals))
    pm.set_data({f"obs_{k}": v for k, v in data.items()}, model=model)


def _lru(cache: dict, key: tuple, build: Callable, reuse: bool) -> tuple[Any, bool]:
    """(value, hit): `cache[key]` made most recently used, or `build()` stored there (the least
    recently used entry evicted past MODEL_CACHE_SIZE); `reuse` False builds and stores nothing."""
    if reuse and key in cache:
        cache[key] = cache.pop(key)  # most recently used last
        return cache[key], True
    value = build()
    if reuse:
        if len(cache) >= MODEL_CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[key] = value
    return value, False


def _cached_model(key: tuple, build: Callable, coords: dict, data: dict, reuse: bool):
    """The model for `key` with this fit's arrays loaded; built (and its logp memoised) on a miss."""
    def build_memoised():
        COMPILE_COUNT["model"] += 1
        model = build()
        model.logp_dlogp_function = _MemoLogpDlogp(model)
        return model

    model, hit = _lru(_MODEL_CACHE, key, build_memoised, reuse)
    if hit:
        _load_data(model, coords, data)
    return model


def _sample_nutpie(model, key: tuple, coords: dict, data: dict, spec: BayesSpec, progressbar: bool, reuse: bool,
                   low_rank: bool):
    """Sample with nutpie (Rust NUTS over a numba-compiled log-density; chains run in parallel
    threads, `spec.cores` of them). The compiled model is kept by graph key like pymc's: a later
    fit of the same graph swaps its arrays and labels in and compiles nothing. `low_rank`: adapt
    a low-rank update of the diagonal mass matrix (for centred run effects, see `fit_model`)."""
    import dataclasses

    import arviz as az
    import nutpie
    import pymc as pm

    if spec.tune < 1:
        raise ValueError("the nutpie sampler needs tune >= 1 (its mass-matrix adaptation has no window at 0)")
    def compile_():
        COMPILE_COUNT["nutpie"] += 1
        return nutpie.compile_pymc_model(model)

    compiled, hit = _lru(_NUTPIE_CACHE, key, compile_, reuse)
    if hit:
        compiled = compiled.with_data(**{f"obs_{k}": v for k, v in data.items()})
        compiled = dataclasses.replace(compiled, _coords={**compiled._coords, **{k: pd.Index(v) for k, v in coords.items()}})
    idata = nutpie.sample(compiled, draws=spec.draws, tune=spec.tune, chains=spec.chains, cores=max(1, spec.cores),
                          seed=spec.seed, target_accept=spec.target_accept, low_rank_modified_mass_matrix=low_rank,
                          save_warmup=False, progress_bar=progressbar)
    # keep the model's own variables (nutpie also stores the unconstrained `*_log__` copies) and add
    # the observed data, as pm.sample's trace has it (posterior predictive checks plot against it)
    post = idata.posterior
    idata.posterior = post[[v for v in post.data_vars if not v.endswith("__")]]
    idata.add_groups(observed_data=az.convert_to_dataset(
        {k: np.asarray(v)[None, None] for k, v in pm.backends.arviz.find_observations(model).items()}
    ).squeeze(["chain", "draw"], drop=True))
    return idata


def fit_model(rows: pd.DataFrame, groups: list[str], ref: str, spec: BayesSpec, *, group_col: str = "arm",
              sd_ref: float | None = None, progressbar: bool = False, reuse: bool = True) -> Fit:
    """Fit the hierarchical model to frame rows of one measure (NaN values dropped). `reuse`: take
    the compiled model of an earlier fit with the same graph (see `_cached_model`)."""
    import pymc as pm

    if spec.likelihood not in LIKELIHOOD_REGISTRY:
        raise ValueError(f"unknown likelihood {spec.likelihood!r}; one of {tuple(LIKELIHOOD_REGISTRY)}")
    groups = [ref] + [g for g in groups if g != ref]
    df = rows[rows[group_col].isin(groups) & rows["value"].notna()].copy()
    if df.empty:
        raise ValueError(f"no rows with a value for {group_col} {groups}")
    # one row order for the same data: the sampler's draws follow the order of the likelihood's
    # terms, and the frame's order follows the order Inspect wrote the logs and their samples
    # (a rerun of the demo with identical scores moved its HDIs by up to 0.14 points)
    df = df.sort_values([c for c in _ROW_ORDER if c in df.columns], key=lambda col: col.astype(str), kind="mergesort")
    notes: list[str] = []
    df["_g"] = df[group_col].map({g: i for i, g in enumerate(groups)}).astype(int)
    # a run is one fine-tune (arm x seed); conditions of one arm share it
    run_key = df["arm"].astype(str) + "|" + df["seed"].astype(object).fillna("none").astype(str)
    df["_run"], runs = _codes(run_key)
    df["_item"], items = _codes(df["item_id"])
    df["_base"], bases = _codes(df["base_item"])
    orders = sorted(x for x in df["option_order"].astype(str).unique() if x)
    use_order = len(orders) == 2
    df["_order"] = 0.0
    if use_order:
        df["_order"] = np.where(df["option_order"].astype(str) == orders[1], 0.5, -0.5)

    y = df["value"].to_numpy(dtype=float)
    lik = spec.likelihood
    L = LIKELIHOOD_REGISTRY[lik]
    prep = L.prepare(y, df["_g"].to_numpy() == 0, sd_ref)
    if spec.residual_sd_floor > 0:
        if lik not in ("normal", "normal_by_arm", "student_t"):
            raise ValueError(f"residual_sd_floor needs a continuous likelihood, not {lik!r}")
        prep.sd_floor = spec.residual_sd_floor / prep.scale
        notes.append(f"residual SD floor {spec.residual_sd_floor:g} (natural units): sd = sqrt(sd^2 + floor^2)")
    notes += prep.notes
    center, scale, levels = prep.center, prep.scale, prep.levels
    y_model = L.model_scale(y, prep) if L.model_scale else y.astype(float)
    re = set(spec.random_effects)
    # the graph's structure: which terms, how each is parametrised
    s_item = _parametrisation(df["_item"].to_numpy(), y_model) if "item" in re else None
    s_base = _parametrisation(df["_base"].to_numpy(), y_model) if "base_item" in re else None
    # run effects: few per arm, each pinned by many rows. Centred, the data pin them but intercept +
    # arm effect + run effect lie on a linear ridge that a diagonal mass matrix cannot follow (pymc:
    # seed_sd bulk ESS ~40 of 600 draws on benchmarks/bayes_fit.py's model); non-centred, the runs'
    # differences make a curved ridge with seed_sd (divergences). nutpie's low-rank mass matrix
    # adapts to the linear ridge, so with nutpie they are centred where the data pin each run
    # (judged on the scores less their group's and item's means: spread between seeds, not between
    # arms, and with the crossed item effects out of the noise a run's mean carries).
    s_seed = None
    if "seed" in re and len(runs) > len(groups):
        s_seed = "non-centred"
        if spec.sampler == "nutpie":
            ys = pd.Series(y_model, index=df.index)
            within = ys - ys.groupby(df["_g"]).transform("mean") - ys.groupby(df["_item"]).transform("mean") + ys.mean()
            s_seed = _parametrisation(df["_run"].to_numpy(), within.to_numpy())
    s_slopes = spec.arm_item_slopes and len(groups) > 1
    terms = [f"arm_effect[{group_col}]"]
    if L.intercept:
        terms.insert(0, "intercept")
    else:
        notes.append("no intercept: the cutpoints carry the location (an intercept beside them is not identified)")
    if s_item:
        terms.append(f"(1|item) [{s_item}]")
    if s_base:
        terms.append(f"(1|base_item) [{s_base}]")
    if s_seed:
        terms.append(f"(1|run: seed within model x arm) [{s_seed}]")
    elif "seed" in re:
        notes.append("one run per group: run random effect not identifiable, left out")
    if "model" in re:
        notes.append("random effect 'model' is constant within a per-model fit: left out")
    if s_slopes:
        terms.append(f"({group_col}|item)")
    if use_order:
        terms.append("option_order")

    coords = {"group": groups[1:], "item": items, "run": runs, "base_item": bases}
    data = {"g_idx": df["_g"].to_numpy(dtype="int64")}
    if s_item or s_slopes:
        data["item_idx"] = df["_item"].to_numpy(dtype="int64")
    if s_base:
        data["base_idx"] = df["_base"].to_numpy(dtype="int64")
    if s_seed:
        data["run_idx"] = df["_run"].to_numpy(dtype="int64")
    if use_order:
        data["order"] = df["_order"].to_numpy(dtype=float)
    lik_data = (L.data or (lambda y_, p_, d_: {"y": y_}))(y, prep, df)
    data.update({f"lik_{k}": v for k, v in lik_data.items()})
    graph = (lik, L.intercept, s_item, s_base, s_seed, s_slopes, use_order, len(levels),
             repr(sorted((k, spec.prior(k)) for k in DEFAULT_PRIORS)))
    key = graph + (tuple((k, len(v)) for k, v in coords.items()),
                   tuple((k, np.shape(v), np.asarray(v).dtype.str) for k, v in data.items()))

    def build():
        import pytensor.tensor as pt

        with pm.Model(coords=coords) as model:
            d = {k: pm.Data(f"obs_{k}", v) for k, v in data.items()}
            arm_effect = _prior_rv(pm, "arm_effect", spec, dims="group")
            beta_full = pt.concatenate([pt.zeros(1), arm_effect])
            eta = beta_full[d["g_idx"]]
            if L.intercept:
                eta = _prior_rv(pm, "intercept", spec) + eta
            if s_item:
                item_sd = _prior_rv(pm, "item_sd", spec)
                eta = eta + _zero_sum_effect(pm, "u_item", item_sd, "item", s_item)[d["item_idx"]]
            if s_base:
                b_sd = _prior_rv(pm, "base_item_sd", spec)
                eta = eta + _zero_sum_effect(pm, "u_base", b_sd, "base_item", s_base)[d["base_idx"]]
            if s_seed:
                seed_sd = _prior_rv(pm, "seed_sd", spec)
                if s_seed == "centred":
                    eta = eta + pm.Normal("u_run", 0, seed_sd, dims="run")[d["run_idx"]]
                else:
                    z_run = pm.Normal("z_run", 0, 1, dims="run")
                    eta = eta + seed_sd * z_run[d["run_idx"]]
            if s_slopes:
                slope_sd = _prior_rv(pm, "slope_sd", spec)
                z_slope = pm.Normal("z_slope", 0, 1, dims=("group", "item"))
                slope_full = pt.concatenate([pt.zeros((1, len(items))), z_slope], axis=0)
                eta = eta + slope_sd * slope_full[d["g_idx"], d["item_idx"]]
            if use_order:
                eta = eta + _prior_rv(pm, "order_effect", spec) * d["order"]
            L.observe(pm, eta, {k: d[f"lik_{k}"] for k in lik_data}, prep, spec)
        return model

    t0 = time.perf_counter()
    model = _cached_model(key, build, coords, data, reuse)
    if spec.sampler == "nutpie":
        # nutpie's compiled log-density takes data arrays of any length (its parameters are fixed by
        # the coordinates, which the key keeps): one compile serves fits that differ in rows only
        used = {"group", *(["item"] if s_item or s_slopes else []), *(["run"] if s_seed else []),
                *(["base_item"] if s_base else [])}
        nkey = graph + (tuple((k, len(v)) for k, v in coords.items() if k in used),
                        tuple((k, np.ndim(v), np.asarray(v).dtype.str) for k, v in data.items()))
        # low-rank mass matrix where the run effects are centred (the linear intercept / arm / run ridge
        # it follows); diagonal otherwise: in a non-centred funnel its estimate misled (weakly pinned
        # runs, 2 per arm: 30 divergences and bulk ESS 29 against 2 and 103 with the diagonal one)
        idata = _sample_nutpie(model, nkey, coords, data, spec, progressbar, reuse, low_rank=s_seed == "centred")
    else:
        with model:
            kw: dict[str, Any] = dict(draws=spec.draws, tune=spec.tune, chains=spec.chains, random_seed=spec.seed,
                                      target_accept=spec.target_accept, progressbar=progressbar, cores=spec.cores,
                                      compute_convergence_checks=False)
            if spec.sampler != "pymc":
                kw["nuts_sampler"] = spec.sampler
            idata = pm.sample(**kw)
    secs = time.perf_counter() - t0
    formula = f"{lik}: y ~ " + " + ".join(terms)
    if L.expected is None:
        formula += f"  [y standardised: (y - {center:.3g}) / {scale:.3g}]"
    return Fit(idata, model, spec, groups, ref, group_col, df, scale, center, [float(v) for v in levels],
               sd_ref, secs, formula, notes, coords=coords, arrays=data)


def _post(idata, name: str) -> np.ndarray:
    """Draws of a variable stacked over chains: shape (S, ...)."""
    a = idata.posterior[name].values
    return a.reshape((-1,) + a.shape[2:])


def group_means(fit: Fit) -> np.ndarray:
    """Posterior draws (S, G) of each group's mean score on the natural scale."""
    post = fit.idata.posterior
    arm = _post(fit.idata, "arm_effect")
    icpt = _post(fit.idata, "intercept") if "intercept" in post else np.zeros(len(arm))
    beta = np.concatenate([np.zeros((len(icpt), 1)), arm], axis=1)
    L = LIKELIHOOD_REGISTRY[fit.spec.likelihood]
    if L.expected is None:
        # item/run effects have mean ~0 and cancel in contrasts; the level is the ref mean + effects
        return fit.center + fit.scale * (icpt[:, None] + beta)
    # non-linear links: average the expected score over the observed items x option orders
    d = fit.data
    cells = d[["_item", "_base", "_order"]].drop_duplicates().to_numpy()
    off = np.zeros((len(icpt), len(cells)))
    if "u_item" in post:
        off += _post(fit.idata, "u_item")[:, cells[:, 0].astype(int)]
    if "u_base" in post:
        off += _post(fit.idata, "u_base")[:, cells[:, 1].astype(int)]
    if "order_effect" in post:
        off += _post(fit.idata, "order_effect")[:, None] * cells[:, 2][None, :]
    out = np.zeros((len(icpt), len(fit.groups)))
    for g in range(len(fit.groups)):
        eta = icpt[:, None] + beta[:, [g]] + off
        if "z_slope" in post and g > 0:
            eta = eta + _post(fit.idata, "slope_sd")[:, None] * _post(fit.idata, "z_slope")[:, g - 1][:, cells[:, 0].astype(int)]
        out[:, g] = L.expected(eta, fit).mean(axis=1)
    return out


def contrast_draws(fit: Fit, weights: dict[str, float]) -> np.ndarray:
    """Natural-scale draws of sum_g weights[g] * mean_g."""
    m = group_means(fit)
    w = np.array([weights.get(g, 0.0) for g in fit.groups])
    unknown = set(weights) - set(fit.groups)
    if unknown:
        raise KeyError(f"contrast names groups {sorted(unknown)} not in the fit {fit.groups}")
    return m @ w


def hdi(draws: np.ndarray, prob: float) -> tuple[float, float]:
    import arviz as az

    lo, hi = az.hdi(np.asarray(draws, dtype=float), hdi_prob=prob)
    return float(lo), float(hi)


# ------------------------------------------------------------------------ diagnostics gate registry

GATE_REGISTRY: dict[str, Callable[[dict, float], list[str]]] = {}


def gate(name: str):
    """Register `fn(stats, threshold) -> [failure, ...]` as the gate whose threshold is prereg
    `bayesian.gates.<name>`; `stats` holds rhat_max, ess_bulk_min, ess_tail_min, divergences,
    bfmi_min and n_chains of one fit."""
    def deco(fn: Callable[[dict, float], list[str]]):
        GATE_REGISTRY[name] = fn
        return fn
    return deco


@gate("rhat_max")
def _gate_rhat(st: dict, thr: float) -> list[str]:
    out = ["fewer than 2 chains: R-hat cannot be assessed"] if st["n_chains"] < 2 else []
    r = st["rhat_max"]
    if r is None or r > thr:
        out.append(f"rhat_max {r if r is None else round(r, 4)} > {thr}")
    return out


@gate("ess_bulk_min")
def _gate_ess_bulk(st: dict, thr: float) -> list[str]:
    e = st["ess_bulk_min"]
    return [f"ess_bulk_min {None if e is None else round(e)} < {thr}"] if e is None or e < thr else []


@gate("ess_tail_min")
def _gate_ess_tail(st: dict, thr: float) -> list[str]:
    e = st["ess_tail_min"]
    return [f"ess_tail_min {None if e is None else round(e)} < {thr}"] if e is None or e < thr else []


@gate("max_divergences")
def _gate_divergences(st: dict, thr: float) -> list[str]:
    return [f"divergences {st['divergences']} > {int(thr)}"] if st["divergences"] > thr else []


@gate("bfmi_min")
def _gate_bfmi(st: dict, thr: float) -> list[str]:
    b = st["bfmi_min"]  # None: no energy in sample_stats (non-NUTS backends), not gated
    return [f"bfmi_min {b:.3f} < {thr}"] if b is not None and b < thr else []


def diagnostics(idata, gates: dict[str, float] | None = None) -> dict:
    """R-hat, bulk/tail ESS over every free parameter, divergences and BFMI, read by every
    registered gate against its threshold."""
    import arviz as az

    gates = {**DEFAULT_GATES, **(gates or {})}
    names = [v for v in idata.posterior.data_vars]
    rhat = az.rhat(idata, var_names=names)
    ess_b = az.ess(idata, var_names=names, method="bulk")
    ess_t = az.ess(idata, var_names=names, method="tail")

    def extreme(ds, fn):
        vals = [float(fn(ds[v].values)) for v in ds.data_vars if np.size(ds[v].values)]
        vals = [v for v in vals if math.isfinite(v)]
        return fn(vals) if vals else None

    try:
        bfmi = float(np.min(az.bfmi(idata)))
    except Exception:  # noqa: BLE001 - no energy in sample_stats (non-NUTS backends)
        bfmi = None
    st = {"rhat_max": extreme(rhat, np.max), "ess_bulk_min": extreme(ess_b, np.min), "ess_tail_min": extreme(ess_t, np.min),
          "divergences": int(idata.sample_stats["diverging"].values.sum()) if "diverging" in idata.sample_stats else 0,
          "bfmi_min": bfmi, "n_chains": idata.posterior.sizes.get("chain", 1)}
    fails = [f for name, fn in GATE_REGISTRY.items() if name in gates for f in fn(st, gates[name])]
    return {"rhat_max": st["rhat_max"], "ess_bulk_min": st["ess_bulk_min"], "ess_tail_min": st["ess_tail_min"],
            "divergences": st["divergences"], "bfmi_min": bfmi, "thresholds": {k: float(v) for k, v in gates.items()},
            "passed": not fails, "failures": fails}


def summarize_contrast(fit: Fit, name: str, weights: dict[str, float], sesoi: float | None, sesoi_unit: str = "d",
                       rope_override: float | None = None, usable: bool = True, sd_ref: float | None = None) -> dict:
    """Natural-scale and SD-unit summaries of one contrast with its HDI+ROPE verdict.

    ROPE: +/- SESOI x SD_ref on the natural scale when the SESOI is in d (the same numbers as
    +/- SESOI on d); +/- SESOI when it is raw; `rope_override` (prereg `rope: <float>`, in the
    SESOI's unit) replaces the SESOI. No ROPE (no usable SD) gives verdict "undecided".
    `sd_ref` overrides the fit's reference SD (contrasts whose SD group is not the fit's ref).
    """
    from analysis.decide import hdi_rope_reading

    draws = contrast_draws(fit, weights)
    lo, hi = hdi(draws, fit.spec.hdi_prob)
    half = rope_override if rope_override is not None else sesoi
    sd = sd_ref if sd_ref is not None else fit.sd_ref
    sd = sd if (sd and sd > 0) else None
    rope = None
    if half is not None:
        if sesoi_unit == "d":
            rope = (-abs(half) * sd, abs(half) * sd) if sd else None
        else:
            rope = (-abs(half), abs(half))
    out = {"name": name, "mean": float(np.mean(draws)), "hdi_low": lo, "hdi_high": hi, "hdi_prob": fit.spec.hdi_prob,
           "p_positive": float(np.mean(draws > 0))}
    if sd:
        dd = draws / sd
        dlo, dhi = hdi(dd, fit.spec.hdi_prob)
        out.update(mean_d=float(np.mean(dd)), hdi_low_d=dlo, hdi_high_d=dhi)
    if rope is not None:
        out["rope"] = [float(rope[0]), float(rope[1])]
        out["rope_scale"] = "natural"
        out["p_in_rope"] = float(np.mean((draws >= rope[0]) & (draws <= rope[1])))
        verdict = hdi_rope_reading(lo, hi, rope)
    else:
        verdict = "undecided"
    out["verdict"] = verdict if usable else "unusable"
    return out


def ppc_figure(fit: Fit, path: Path, n_draws: int = 100) -> Path:
    """Posterior predictive check: observed score distribution vs replicated data sets."""
    import arviz as az
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pymc as pm

    if fit.arrays:
        _load_data(fit.model, fit.coords, fit.arrays)  # the model may have served a later fit since
    with fit.model:
        step = max(1, fit.idata.posterior.sizes["draw"] * fit.idata.posterior.sizes["chain"] // n_draws)
        thin = fit.idata.posterior.sel(draw=slice(None, None, step))
        pp = pm.sample_posterior_predictive(thin, random_seed=fit.spec.seed, progressbar=False)
    idata = fit.idata.copy()
    idata.extend(pp)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    kind = "kde" if fit.spec.likelihood in ("normal", "student_t", "beta") else "cumulative"
    az.plot_ppc(idata, ax=ax, kind=kind, num_pp_samples=min(n_draws, 100), random_seed=fit.spec.seed)
    ax.set_title(f"PPC: {fit.formula.split(':')[0]} ({'standardised' if fit.spec.likelihood in ('normal', 'student_t') else 'coded'} scale)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_netcdf(fit: Fit, path: Path) -> Path:
    """InferenceData to netcdf (written to a temp name, then renamed: no torn files)."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fit.idata.to_netcdf(str(tmp))
    os.replace(tmp, path)
    return path
