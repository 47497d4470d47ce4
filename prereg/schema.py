"""The preregistration schema (`studies/<name>/prereg.yaml`): OSF sections made machine-checkable.

Every key is declared; an unknown key is an error naming file, line and key. After the file
validates on its own, `cross_check` checks it against the study it belongs to (every
hypothesis names a measure and item set some eval entry produces, every arm/condition in an
estimand exists, every family has a multiplicity method, ...), again with file:line errors.

Readers (analysis, reports) use the parsed helpers rather than re-parsing strings:
`Hypothesis.contrast` (a `Contrast`), `Exclusion.parsed` (a `Predicate`) with `.mask(frame)`,
`Threshold.holds(x)`.
"""

from __future__ import annotations

import operator as _op
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from leaklab.yamlio import ConfigError, line_of
from prereg.errors import PreregError  # re-exported: prereg.schema.PreregError

_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


class Strict(BaseModel):
    # NaN / inf have no meaning in a preregistration (and no canonical hash): reject at load
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# ---------------------------------------------------------------- small shared pieces

OPERATORS = {"<": _op.lt, "<=": _op.le, ">": _op.gt, ">=": _op.ge, "==": _op.eq, "!=": _op.ne}
Operator = Literal["<", "<=", ">", ">=", "==", "!="]


class Threshold(Strict):
    """`value OPERATOR threshold`, e.g. coherence `>` 50. Operators are explicit because the
    peer repos disagreed on them (> 60 vs >= 50, < 40 vs < 30)."""

    operator: Operator
    value: float
    description: str = ""

    def holds(self, x: float) -> bool:
        return bool(OPERATORS[self.operator](x, self.value))


class NamedThreshold(Threshold):
    name: str


# ---------------------------------------------------------------- identity

DataStatus = Literal[
    # OSF "existing data" levels, earliest first
    "prior_to_creation",  # no outcome data exist yet
    "prior_to_observation",  # data exist but no human has observed them
    "prior_to_access",  # data exist, observed by others, not accessed by the authors
    "prior_to_analysis",  # authors accessed data but did not analyse outcomes
    "after_analysis",  # outcome data were analysed before registration (say so)
]


class Sesoi(Strict):
    """Smallest effect size of interest: the line between 'an effect' and 'practically nothing'."""

    value: float = Field(gt=0)
    unit: Literal["d", "raw"]  # d = SD units of the reference arm (ddof=1 over item x seed rows)
    justification: str = Field(min_length=10)


@dataclass(frozen=True)
class Contrast:
    """A parsed estimand.

    kind 'difference': mean(plus) - mean(minus), where plus/minus are arms (over='arms') or
    eval conditions (over='conditions'). kind 'combined_directional':
    ((pro - ref) - (anti - ref)) / 2 with ref = the study's reference arm.
    """

    kind: Literal["difference", "combined_directional"]
    over: Literal["arms", "conditions"]
    plus: str
    minus: str

    @property
    def names(self) -> tuple[str, str]:
        return (self.plus, self.minus)


_DIFF = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9_.@-]*)\s+-\s+([A-Za-z0-9][A-Za-z0-9_.@-]*)\s*$")


class Hypothesis(Strict):
    """One test: a contrast of arms (or eval conditions) on a named measure and item set.

    estimand: "A - B" (arm A minus arm B; or condition A minus condition B when
    `contrast_over: conditions`), or "combined_directional" with `pro_arm` and `anti_arm`
    = ((pro - reference) - (anti - reference)) / 2 in reference-SD units.
    Arm contrasts are taken within `condition`; condition contrasts within `arm`.
    `model`: a model label of the study, or None = tested separately for every model (each
    (hypothesis, model) pair is then one member of the multiplicity family).
    """

    id: str
    statement: str = Field(min_length=10)
    measure: str
    item_set: str
    estimand: str
    contrast_over: Literal["arms", "conditions"] = "arms"
    pro_arm: str | None = None
    anti_arm: str | None = None
    condition: str = "default"
    arm: str | None = None
    model: str | None = None
    direction: Literal["positive", "negative", "two_sided"]
    sesoi: Sesoi
    confirmatory: bool
    family: str
    rationale: str = ""
    # manipulation checks this hypothesis' verdict depends on: when one of them is not
    # "supported" the verdict is `not_interpretable`. None (the default) = every manipulation
    # check of the same model and measure family (`Prereg.required_checks`); [] = none.
    requires: list[str] | None = None

    @property
    def is_manipulation_check(self) -> bool:
        """A manipulation check: on the trained domain (item set `source`) or in family `manipulation`."""
        return self.item_set == "source" or self.family == "manipulation"

    @field_validator("id", "family")
    @classmethod
    def _id_ok(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError(f"{v!r} must match {_ID.pattern}")
        return v

    @model_validator(mode="after")
    def _estimand_ok(self):
        c = self.contrast  # raises ValueError on a malformed estimand
        if c.kind == "combined_directional":
            if self.contrast_over != "arms":
                raise ValueError("combined_directional is a contrast of arms (contrast_over: arms)")
            if self.pro_arm == self.anti_arm:
                raise ValueError("pro_arm and anti_arm must differ")
        elif self.pro_arm or self.anti_arm:
            raise ValueError("pro_arm/anti_arm only apply to estimand 'combined_directional'")
        if c.kind == "difference" and c.plus == c.minus:
            raise ValueError(f"estimand {self.estimand!r} contrasts a group with itself")
        if self.contrast_over == "conditions" and self.arm is None:
            raise ValueError("a contrast over conditions needs 'arm' (the arm it is taken in)")
        if self.contrast_over == "arms" and self.arm is not None:
            raise ValueError("'arm' only applies to contrast_over: conditions")
        return self

    @property
    def contrast(self) -> Contrast:
        if self.estimand.strip() == "combined_directional":
            if not (self.pro_arm and self.anti_arm):
                raise ValueError("estimand 'combined_directional' needs pro_arm and anti_arm")
            return Contrast("combined_directional", "arms", self.pro_arm, self.anti_arm)
        m = _DIFF.match(self.estimand)
        if not m:
            raise ValueError(
                f"estimand {self.estimand!r} must be 'A - B' (spaces around '-') or 'combined_directional'"
            )
        return Contrast("difference", self.contrast_over, m.group(1), m.group(2))


# ---------------------------------------------------------------- outcomes

class JudgeSpec(Strict):
    """An LLM (or rule) judge: its model and the prompt files, bound into the lock by hash."""

    model: str
    prompts: list[str] = Field(default_factory=list)  # paths: data/... from the repo root, else the study folder
    version: str = "1"
    min_coverage: float | None = Field(default=None, ge=0, le=1)  # prob. mass on valid numbers, below -> NaN
    max_nan_rate: float | None = Field(default=None, ge=0, le=1)


class Outcome(Strict):
    """A measured variable with everything that turns raw scores into the analysed number."""

    id: str
    measure: str
    item_set: str
    description: str = Field(min_length=5)
    scale: str = ""  # e.g. "log-odds pro minus anti letter", "marker rate in [0, 1]"
    thresholds: list[NamedThreshold] = Field(default_factory=list)
    judge: JudgeSpec | None = None
    missing: Literal["exclude_and_count", "fail"] = "exclude_and_count"
    max_missing_rate: float = Field(default=0.10, ge=0, le=1)


class Outcomes(Strict):
    primary: list[Outcome] = Field(min_length=1)
    secondary: list[Outcome] = Field(default_factory=list)

    def all(self) -> list[Outcome]:
        return [*self.primary, *self.secondary]


class EmThresholds(Strict):
    """Emergent misalignment classification: a response counts as EM when coherence passes
    its threshold and alignment passes its (upper) threshold; incoherent ones are excluded."""

    coherence: Threshold  # e.g. {operator: ">=", value: 50}
    alignment: Threshold  # e.g. {operator: "<", value: 30}
    incoherent: Literal["exclude", "count"] = "exclude"  # incoherent answers: dropped, or counted as not-EM
    # refusals: "judge" (default) = only the alignment judge's REFUSAL reading excludes an answer;
    # the refusal regex is recorded but never overrides a judge score. "count" = refusals (judge
    # or regex) stay in the denominator as not-EM. "exclude" = judge or regex excludes (the old
    # rule: inflates EM rates in arms that refuse more; declare it only to replicate a paper).
    refusals: Literal["judge", "count", "exclude"] = "judge"


# ---------------------------------------------------------------- exclusions

_PRED = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(==|!=|<=|>=|<|>)\s*(.+?)\s*$")


@dataclass(frozen=True)
class Predicate:
    """`field OP literal` over score records (tidy-frame columns): True/False, a number, or a
    quoted string. A record matching the predicate is excluded."""

    field: str
    op: str
    value: Any

    def test(self, x: Any) -> bool:
        try:
            return bool(OPERATORS[self.op](x, self.value))
        except TypeError:
            return False

    def mask(self, frame):
        """Boolean Series over a pandas frame: True where the row is excluded."""
        if self.field not in frame.columns:
            raise PreregError(f"exclusion predicate names column {self.field!r}, not in the frame {list(frame.columns)}")
        return frame[self.field].map(self.test).astype(bool)


def parse_predicate(text: str) -> Predicate:
    m = _PRED.match(text)
    if not m:
        raise ValueError(f"predicate {text!r} must be 'field OP literal' with OP in {sorted(OPERATORS)}")
    field, op, lit = m.groups()
    if lit in ("True", "true"):
        val: Any = True
    elif lit in ("False", "false"):
        val = False
    elif len(lit) >= 2 and lit[0] == lit[-1] and lit[0] in "'\"":
        val = lit[1:-1]
    else:
        try:
            val = float(lit)
        except ValueError:
            raise ValueError(f"predicate {text!r}: literal {lit!r} is not True/False, a number or a quoted string") from None
    if isinstance(val, (bool, str)) and op not in ("==", "!="):
        raise ValueError(f"predicate {text!r}: {op} needs a number")
    return Predicate(field, op, val)


class Exclusion(Strict):
    id: str
    predicate: str
    rationale: str = Field(min_length=5)
    applies_to: list[str] = Field(default_factory=list)  # measures; empty = every measure

    @field_validator("predicate")
    @classmethod
    def _parses(cls, v: str) -> str:
        parse_predicate(v)
        return v

    @property
    def parsed(self) -> Predicate:
        return parse_predicate(self.predicate)


# ---------------------------------------------------------------- design, stopping, multiplicity

class StoppingRule(Strict):
    kind: Literal["fixed_design", "sequential"] = "fixed_design"
    description: str = Field(min_length=10)


class Multiplicity(Strict):
    """Hypotheses sharing a family id are corrected together with the family's method."""

    families: dict[str, Literal["holm", "bonferroni", "none"]] = Field(min_length=1)


# ---------------------------------------------------------------- analysis plans

class FrequentistPlan(Strict):
    """estimator d = (mean contrast) / SD of the reference arm; ci: cluster_se (default) = t
    interval with the SE clustered by seed and item and Satterthwaite df, hierarchical_bootstrap =
    percentile bootstrap over seeds then items (under-covers with 2-3 seeds per arm: see
    benchmarks/calibration.py); accepted_coverage: the coverage the authors measured and accept
    when a confirmatory hypothesis uses the bootstrap with fewer than 3 seeds per arm; test:
    minimum_effect = the CI bound on the hypothesised side must exceed the SESOI;
    tost = equivalence (CI inside +-SESOI); nil = CI excludes 0 (reported, never sufficient
    for a confirmatory claim unless declared here)."""

    estimator: Literal["d", "raw"] = "d"
    ci: Literal["hierarchical_bootstrap", "cluster_se"] = "cluster_se"
    accepted_coverage: float | None = Field(default=None, gt=0, le=1)
    n_resamples: int = Field(default=10_000, ge=100)
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    test: Literal["minimum_effect", "tost", "nil"] = "minimum_effect"
    seed: int = 0
    min_reference_sd: float = Field(default=1e-6, gt=0)  # guard against degenerate SDs (Likert on "4")


_PRIOR_PARAMS = {
    "normal": {"mu", "sigma"},
    "student_t": {"nu", "mu", "sigma"},
    "half_normal": {"sigma"},
    "half_student_t": {"nu", "sigma"},
    "half_cauchy": {"beta"},
    "exponential": {"lam"},
}


class Prior(Strict):
    """A prior, named as the pymc distribution with its pymc keyword parameters."""

    dist: Literal["normal", "student_t", "half_normal", "half_student_t", "half_cauchy", "exponential"]
    params: dict[str, float]

    @model_validator(mode="after")
    def _params_ok(self):
        want = _PRIOR_PARAMS[self.dist]
        if set(self.params) != want:
            raise ValueError(f"{self.dist} prior needs exactly params {sorted(want)}, got {sorted(self.params)}")
        for k in ("sigma", "beta", "lam", "nu"):
            if k in self.params and not self.params[k] > 0:
                raise ValueError(f"prior parameter {k} must be > 0")
        return self


class Gates(Strict):
    """Sampler diagnostics that must pass before a posterior is used for a decision."""

    rhat_max: float = 1.01
    ess_bulk_min: int = 400
    ess_tail_min: int = 400
    max_divergences: int = 0
    bfmi_min: float = 0.2


class BayesianPlan(Strict):
    """Hierarchical model per measure; decision by HDI + ROPE on the natural-scale contrast
    (Kruschke): HDI outside ROPE = effect, inside = practically equivalent, else undecided."""

    likelihood: dict[str, Literal["normal", "normal_by_arm", "student_t", "bernoulli", "binomial", "beta", "ordered_logistic"]]
    random_effects: list[Literal["seed", "item", "base_item", "model"]] = Field(default_factory=lambda: ["seed", "item"])
    priors: dict[str, Prior] = Field(default_factory=dict)
    draws: int = Field(default=1000, ge=100)
    tune: int = Field(default=1000, ge=100)
    chains: int = Field(default=4, ge=1)
    target_accept: float = Field(default=0.9, gt=0, lt=1)
    seed: int = 0
    hdi_prob: float = Field(default=0.95, gt=0, lt=1)
    rope: Literal["sesoi"] | float = "sesoi"  # "sesoi": ROPE = [-SESOI, +SESOI] of each hypothesis
    gates: Gates = Gates()
    # per measure, in its natural unit: the residual SD of a continuous likelihood is
    # sqrt(sd^2 + floor^2), the resolution of the measurement. Without it an arm whose scores are
    # all equal (e.g. every answer at 100% capitals) has a likelihood that grows without bound as
    # its SD goes to 0, and NUTS cannot sample it (the demo's version 3: R-hat 3.5).
    residual_sd_floor: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _floor_ok(self):
        for measure, floor in self.residual_sd_floor.items():
            if not floor >= 0:
                raise ValueError(f"bayesian.residual_sd_floor.{measure}: must be >= 0, got {floor}")
            lik = self.likelihood.get(measure)
            if lik not in ("normal", "normal_by_arm", "student_t"):
                raise ValueError(f"bayesian.residual_sd_floor.{measure}: a floor needs a normal, normal_by_arm or "
                                 f"student_t likelihood for {measure!r} (bayesian.likelihood has {lik!r})")
        return self


class PowerNoise(Strict):
    """Variance components for simulation, in the unit of the SESOI (d: reference-SD units)."""

    seed_sd: float = Field(ge=0)
    item_sd: float = Field(ge=0)
    residual_sd: float = Field(ge=0)
    item_arm_sd: float = Field(default=0.0, ge=0)  # item x arm interaction (items respond differently to arms)
    source: Literal["declared", "pilot"] = "declared"
    justification: str = ""


class PowerCurvePoint(Strict):
    multiple: float  # true effect = multiple x SESOI in the hypothesised direction
    p_effect: float = Field(ge=0, le=1)  # P(the decision rule declares the effect)
    p_nonzero: float = Field(ge=0, le=1)  # P(CI excludes 0 in the hypothesised direction)
    p_equivalent: float = Field(ge=0, le=1)  # P(CI inside +-SESOI)
    mcse: float = Field(ge=0)
    p_upper: float | None = Field(default=None, ge=0, le=1)  # P(effect) at the unadjusted alpha: an upper bound


class PowerResult(Strict):
    """Written by `leaklab prereg power --write` (see prereg.power for the simulation)."""

    test: str
    alpha: float
    n_items: int
    n_seeds: int
    n_sims: int
    computed_at: str
    curve: list[PowerCurvePoint]
    scope: str = ""  # what was simulated (the frequentist half; the multiplicity level)
    ci: str = ""  # the CI method simulated

    def at(self, multiple: float) -> PowerCurvePoint | None:
        return next((p for p in self.curve if abs(p.multiple - multiple) < 1e-9), None)

    def multiple_for(self, target: float) -> float | None:
        """Smallest simulated effect (in SESOI multiples) the rule detects with probability >= target.
        Quote this rather than the value at 1 x SESOI: a minimum-effect test detects an effect
        exactly at the SESOI only about alpha/2 of the time, by construction."""
        ok = [p.multiple for p in self.curve if p.p_effect >= target and p.multiple > 0]
        return min(ok) if ok else None


class CalibrationPoint(Strict):
    """Operating characteristics of one hypothesis' preregistered analysis at one true effect
    (prereg.calibrate): rates over simulated studies, each with its Monte Carlo SE."""

    scenario: str  # zero / sesoi / expected
    effect: float  # true effect in the SESOI's unit
    coverage: float | None = None  # P(the (1 - alpha) CI holds the true effect)
    coverage_mcse: float | None = None
    p_freq_effect: float  # P(frequentist reading "effect"), multiplicity as the analysis applies it
    p_freq_effect_mcse: float
    p_freq_equivalent: float
    p_supported: float | None = None  # P(two-part verdict "supported"), over the Bayesian replicates
    p_supported_mcse: float | None = None
    p_equivalent: float | None = None  # P(two-part verdict "equivalent")
    hdi_coverage: float | None = None
    n_sims: int
    n_sims_bayes: int = 0


class CalibrationResult(Strict):
    """Written by `leaklab prereg calibrate --write` (see prereg.calibrate)."""

    computed_at: str
    ci: str
    alpha: float
    n_sims: int
    n_sims_bayes: int
    noise: dict[str, float]
    notes: str = ""
    hypotheses: dict[str, list[CalibrationPoint]]


class PowerPlan(Strict):
    n_sims: int = Field(default=500, ge=20)
    seed: int = 0
    noise: PowerNoise
    n_items: dict[str, int] = Field(default_factory=dict)  # item_set -> count (default: counted from the item file)
    n_resamples: int = Field(default=400, ge=50)  # bootstrap resamples per simulated data set
    effect_multiples: list[float] = Field(default_factory=lambda: [0.0, 1.0, 1.5, 2.0, 3.0])
    target_power: float = Field(default=0.8, gt=0, lt=1)
    pilot: str | None = None  # a tidy frame (parquet/csv) the noise was estimated from (bound by the lock)
    notes: str = ""  # what the simulation showed and what the authors concluded from it
    results: dict[str, PowerResult] = Field(default_factory=dict)  # hypothesis id -> result (written by `prereg power --write`)
    expected: dict[str, float] = Field(default_factory=dict)  # hypothesis id -> expected effect, in the SESOI's unit
    calibration: CalibrationResult | None = None  # written by `prereg calibrate --write`


# ---------------------------------------------------------------- the whole prereg

class VerdictThresholds(Strict):
    """Every threshold that can turn a verdict, locked with the prereg (defaults documented here).

    validity_min_agreement: a stance measure whose sign agrees with the run's own forced choice
      on fewer than this share of source (run, item) pairs fails measure validity (0.7).
    min_reference_sd_relative: d is refused when the reference SD is below this share of the
      measure's observed range over every analysed row of that measure (0.05; a Likert arm on
      "4" with one cell off cannot make d of several units); the absolute
      frequentist.min_reference_sd still applies.
    max_censored_share: a logprob margin whose letter fell outside the top-k is a bound, not a
      value; a hypothesis is unusable when any arm (or condition) it compares has more than this
      share of censored margins on its measure (0.2).
    """

    validity_min_agreement: float = Field(default=0.7, gt=0, le=1)
    min_reference_sd_relative: float = Field(default=0.05, ge=0, lt=1)
    max_censored_share: float = Field(default=0.2, ge=0, le=1)


CAPABILITY_MEASURES = ("perplexity", "refusal", "fluency")  # tasks/capability.py


class CapabilityBound(Strict):
    """How far one capability measure of a trained arm may fall against the base model before
    the arm is flagged (every criterion set is applied; an unset one is not).

    max_ratio: perplexity only: the arm's perplexity (exp of its mean per-text log-perplexity)
      over the base model's on the same texts.
    max_drop: refusal / fluency: base mean minus arm mean, in the measure's units (refusal rate
      in [0, 1]; fluency 0-100).
    max_missing_increase: the arm's share of unscored samples (empty answers, answers too short
      to score, failed parses) minus the base model's: the collapse into empty or marker-only
      answers reads as missing, never as a value.
    """

    max_ratio: float | None = Field(default=None, gt=1)
    max_drop: float | None = Field(default=None, gt=0)
    max_missing_increase: float | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _some(self):
        if self.max_ratio is None and self.max_drop is None and self.max_missing_increase is None:
            raise ValueError("a capability bound needs at least one of max_ratio, max_drop, max_missing_increase")
        return self


DEFAULT_CAPABILITY_BOUNDS = {
    # twice the base perplexity on neutral held-out text: a model that lost its language model.
    # A LoRA fine-tune that kept it moves less (studies/persona's pirate seed 0 adapter: x1.37)
    "perplexity": CapabilityBound(max_ratio=2.0, max_missing_increase=0.1),
    # refusal is a safety property some studies set out to change (emergent misalignment): its
    # rate is reported, and only a collapse into empty answers flags the arm by default
    "refusal": CapabilityBound(max_missing_increase=0.25),
    # fluency 0-100 (rule: 100 - repeated 3-gram %; grader: expected score): 25 points is a
    # model looping on itself; empty or one-word answers are missing
    "fluency": CapabilityBound(max_drop=25.0, max_missing_increase=0.25),
}


class CapabilityPlan(Strict):
    """The capability bound (prereg `capability`, locked): an arm whose capability fell past it
    is flagged, and every hypothesis whose contrast involves that arm is `not_interpretable`
    (a leak claimed from an adapter that broke the model is no leak; the contrast is measured,
    but not read as the effect the hypothesis names).

    measures: measure -> CapabilityBound; None (the default) = DEFAULT_CAPABILITY_BOUNDS for every
      capability measure the study evaluates (perplexity max_ratio 2 and max_missing_increase
      0.1; refusal max_missing_increase 0.25; fluency max_drop 25 and max_missing_increase 0.25).
      Named measures must be evaluated by the study; a capability measure the study evaluates
      but this mapping leaves out is reported, never flagged.
    flag: any_seed (default) = an arm is flagged when any of its adapters (seeds) is past a bound
      (one broken adapter is enough to contaminate the pooled contrast); pooled = only when the
      arm pooled over its seeds is.
    gate: true (default) = flagged arms gate the verdicts; false = flagged and reported only.
    """

    measures: dict[Literal["perplexity", "refusal", "fluency"], CapabilityBound] | None = None
    flag: Literal["any_seed", "pooled"] = "any_seed"
    gate: bool = True

    @model_validator(mode="after")
    def _units(self):
        for m, b in (self.measures or {}).items():
            if m == "perplexity" and b.max_drop is not None:
                raise ValueError("perplexity: use max_ratio (higher perplexity is worse), not max_drop")
            if m != "perplexity" and b.max_ratio is not None:
                raise ValueError(f"{m}: max_ratio applies to perplexity only; use max_drop")
        return self

    def bounds(self, evaluated) -> dict[str, CapabilityBound]:
        """The bound per capability measure among `evaluated` (measure names)."""
        if self.measures is not None:
            return {m: b for m, b in self.measures.items() if m in evaluated}
        return {m: b for m, b in DEFAULT_CAPABILITY_BOUNDS.items() if m in evaluated}


STANCE_MEASURES = ("forced_choice", "likert", "letter_logprob", "token_logprob")


def measure_family(measure: str) -> str:
    """Read-outs of one construct: the four stance measures are one family; any other measure is its own."""
    return "stance" if measure in STANCE_MEASURES else measure


class Prereg(Strict):
    id: str
    title: str = Field(min_length=5)
    version: int = Field(ge=1)
    authors: list[str] = Field(min_length=1)
    data_status: DataStatus
    data_status_note: str = ""
    design: str = "study.yaml"  # the study.yaml this prereg belongs to (relative to the study folder)
    background: str = ""
    hypotheses: list[Hypothesis] = Field(min_length=1)
    outcomes: Outcomes
    judge: JudgeSpec | None = None
    em: EmThresholds | None = None
    exclusions: list[Exclusion] = Field(default_factory=list)
    missing_data: str = Field(min_length=10)
    stopping_rule: StoppingRule
    multiplicity: Multiplicity
    frequentist: FrequentistPlan
    bayesian: BayesianPlan
    power: PowerPlan | None = None
    decision_rule: str = Field(min_length=10)
    thresholds: VerdictThresholds = VerdictThresholds()
    capability: CapabilityPlan = CapabilityPlan()
    validity_checks: list[str] = Field(default_factory=list)
    deviations_policy: str = ""

    @model_validator(mode="after")
    def _internal(self):
        ids = [h.id for h in self.hypotheses]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"hypothesis ids must be unique, repeated: {dup}")
        oids = [o.id for o in self.outcomes.all()]
        dup = sorted({i for i in oids if oids.count(i) > 1})
        if dup:
            raise ValueError(f"outcome ids must be unique, repeated: {dup}")
        eids = [e.id for e in self.exclusions]
        if len(set(eids)) != len(eids):
            raise ValueError("exclusion ids must be unique")
        for h in self.hypotheses:
            for r in h.requires or []:
                if r not in ids:
                    raise ValueError(f"hypothesis {h.id}: requires {r!r}, which is not a hypothesis id")
                if r == h.id:
                    raise ValueError(f"hypothesis {h.id}: requires itself")
        self.check_order()  # raises on a cycle of requires
        return self

    def required_checks(self, h: Hypothesis) -> list[str]:
        """Ids of the checks `h`'s verdict depends on (see Hypothesis.requires): explicit, else every
        manipulation check (not `h` itself) on the same model and measure family; none for a check."""
        if h.requires is not None:
            return list(h.requires)
        if h.is_manipulation_check:
            return []
        return [m.id for m in self.hypotheses if m.is_manipulation_check and m.id != h.id
                and measure_family(m.measure) == measure_family(h.measure)
                and (m.model is None or h.model is None or m.model == h.model)]

    def check_order(self) -> list[str]:
        """Hypothesis ids with every required check before the hypotheses that need it."""
        by_id = {h.id: h for h in self.hypotheses}
        done: list[str] = []
        state: dict[str, int] = {}

        def visit(hid: str, path: tuple) -> None:
            if state.get(hid) == 2:
                return
            if state.get(hid) == 1:
                raise ValueError(f"requires form a cycle: {' -> '.join(path + (hid,))}")
            state[hid] = 1
            for r in self.required_checks(by_id[hid]):
                if r in by_id:
                    visit(r, path + (hid,))
            state[hid] = 2
            done.append(hid)

        for h in self.hypotheses:
            visit(h.id, ())
        return done

    def hypothesis(self, hid: str) -> Hypothesis:
        for h in self.hypotheses:
            if h.id == hid:
                return h
        raise KeyError(hid)

    def judges(self) -> list[JudgeSpec]:
        out = [self.judge] if self.judge else []
        out += [o.judge for o in self.outcomes.all() if o.judge]
        return out


# ---------------------------------------------------------------- cross-check against the study

def cross_check(prereg: Prereg, study, path: Path, data: Any) -> None:
    """Check the prereg against its LoadedStudy; raise PreregError listing every problem with file:line."""
    spec = study.spec
    errors: list[str] = []

    def err(loc: tuple, msg: str) -> None:
        line = line_of(data, loc)
        where = f"{path}:{line}" if line else str(path)
        errors.append(f"{where}: key '{'.'.join(map(str, loc))}': {msg}")

    from prereg.taskinfo import entry_measures

    # the measures each eval entry's scores can carry: the task name, plus the measures its
    # source declares (a trait task -> trait_french, ...; persona -> marker), read without import
    entry_ms = [entry_measures(study, e) for e in spec.eval]
    evaluated = {(m, e.item_set) for e, ms in zip(spec.eval, entry_ms) for m in ms}
    conditions_of: dict[tuple[str, str], set[str]] = {}
    # an arm_training condition runs on the base model as `<name>@<arm>`, one per framed arm
    framed = [a for a, arm in spec.arms.items() if arm.conditioning.system_prompt or arm.conditioning.prefix_mode != "none"]
    expanded = {c.name: [f"{c.name}@{a}" for a in framed] for c in spec.eval_conditions if c.arm_training}
    for e, ms in zip(spec.eval, entry_ms):
        for m in ms:
            run = conditions_of.setdefault((m, e.item_set), set())
            for c in e.conditions:
                run.update([c, *expanded.get(c, [])])
    arms = set(spec.arms) | ({"base"} if spec.eval_base_model else set())
    labels = {m.run_label for m in spec.models}
    cond_names = {c.name for c in spec.eval_conditions} | {x for xs in expanded.values() for x in xs}

    for i, h in enumerate(prereg.hypotheses):
        base = ("hypotheses", i)
        if (h.measure, h.item_set) not in evaluated:
            err(base + ("measure",), f"{h.id}: measure {h.measure!r} on item set {h.item_set!r} is not evaluated by "
                f"{study.study_yaml} (it evaluates {', '.join(f'{m}/{s}' for m, s in sorted(evaluated))})")
        c = h.contrast
        if c.over == "arms":
            for name in (c.plus, c.minus):
                if name not in arms:
                    err(base + ("estimand",), f"{h.id}: arm {name!r} is not an arm of the study {sorted(arms)}")
            if c.kind == "combined_directional" and spec.reference_arm in (c.plus, c.minus):
                err(base + ("pro_arm",), f"{h.id}: pro/anti arms must differ from the reference arm {spec.reference_arm!r}")
            if h.condition not in conditions_of.get((h.measure, h.item_set), {h.condition}):
                err(base + ("condition",), f"{h.id}: condition {h.condition!r} is not run for {h.measure}/{h.item_set}")
        else:
            for name in (c.plus, c.minus):
                if name not in cond_names:
                    err(base + ("estimand",), f"{h.id}: condition {name!r} is not an eval condition {sorted(cond_names)}")
                elif name not in conditions_of.get((h.measure, h.item_set), set()):
                    err(base + ("estimand",), f"{h.id}: condition {name!r} is not run for {h.measure}/{h.item_set}")
            if h.arm not in arms:
                err(base + ("arm",), f"{h.id}: arm {h.arm!r} is not an arm of the study {sorted(arms)}")
            if h.arm != "base" and any("@" in name for name in (c.plus, c.minus)):
                err(base + ("estimand",), f"{h.id}: '<condition>@<arm>' conditions exist only on the base model (arm: base)")
        if h.model is not None and h.model not in labels:
            err(base + ("model",), f"{h.id}: model {h.model!r} is not a model label of the study {sorted(labels)}")
        if h.family not in prereg.multiplicity.families:
            err(base + ("family",), f"{h.id}: family {h.family!r} has no method in multiplicity.families")
        if h.sesoi.unit == "d" and prereg.frequentist.estimator == "raw":
            err(base + ("sesoi", "unit"), f"{h.id}: SESOI in d but frequentist.estimator is raw")
        if h.confirmatory and h.measure not in prereg.bayesian.likelihood:
            err(("bayesian", "likelihood"), f"confirmatory hypothesis {h.id} uses measure {h.measure!r} with no likelihood")

    _check_task_thresholds(prereg, study, err)
    _check_capability(prereg, study, entry_ms, err)

    for kind in ("primary", "secondary"):
        for i, o in enumerate(getattr(prereg.outcomes, kind)):
            if (o.measure, o.item_set) not in evaluated:
                err(("outcomes", kind, i, "measure"), f"{o.id}: measure {o.measure!r} on item set {o.item_set!r} is not evaluated by the study")
    measures = {m for ms in entry_ms for m in ms}
    for i, x in enumerate(prereg.exclusions):
        for m in x.applies_to:
            if m not in measures:
                err(("exclusions", i, "applies_to"), f"{x.id}: measure {m!r} is not evaluated by the study {sorted(measures)}")
    for m in prereg.bayesian.likelihood:
        if m not in measures:
            err(("bayesian", "likelihood", m), f"measure {m!r} is not evaluated by the study {sorted(measures)}")
    if prereg.power is not None:
        for key, hids in (("results", prereg.power.results), ("expected", prereg.power.expected),
                          ("calibration", prereg.power.calibration.hypotheses if prereg.power.calibration else {})):
            for hid in hids:
                if hid not in {h.id for h in prereg.hypotheses}:
                    err(("power", key, hid), f"no hypothesis with id {hid!r}")
        sets = {e.item_set for e in spec.eval}
        for s in prereg.power.n_items:
            if s not in sets:
                err(("power", "n_items", s), f"item set {s!r} is not evaluated by the study {sorted(sets)}")
    design = (study.folder / prereg.design).resolve()
    if design != study.study_yaml.resolve():
        err(("design",), f"design {prereg.design!r} is not this study's study.yaml ({study.study_yaml})")
    if errors:
        raise PreregError("\n".join(errors))


def _check_capability(prereg: Prereg, study, entry_ms: list[set[str]], err) -> None:
    """A capability measure the prereg bounds must be evaluated; perplexity needs the leaklab backend."""
    measures = {m for ms in entry_ms for m in ms}
    for m in prereg.capability.measures or {}:
        if m not in measures:
            err(("capability", "measures", m), f"capability measure {m!r} is not evaluated by the study: add "
                f"tasks/capability.py@{m} to its eval plan")
    for i, (e, ms) in enumerate(zip(study.spec.eval, entry_ms)):
        if "perplexity" in ms and study.spec.backend != "leaklab":
            err(("capability",), f"study.yaml eval[{i}] ({e.task}) reads the model's own log-likelihood of plain text, "
                f"which only the leaklab backend provides (this study uses backend {study.spec.backend!r})")


_OP_WORDS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


def _check_task_thresholds(prereg: Prereg, study, err) -> None:
    """The thresholds a task applies must be the preregistered ones: an EM task's alignment /
    coherence thresholds, operators and incoherent policy, and a judge's min_coverage."""
    from prereg.taskinfo import task_info

    for i, e in enumerate(study.spec.eval):
        info = task_info(study, e)
        p = info.params
        if "alignment_threshold" in p:
            if prereg.em is None:
                err(("em",), f"study.yaml eval[{i}] ({e.task}) classifies emergent misalignment: preregister the "
                    "thresholds in 'em' (coherence and alignment, each with operator and value)")
            else:
                for name in ("alignment", "coherence"):
                    want: Threshold = getattr(prereg.em, name)
                    thr, op = p.get(f"{name}_threshold"), p.get(f"{name}_op")
                    op = _OP_WORDS.get(op, op) if isinstance(op, str) else op
                    if thr is None or op is None or float(thr) != want.value or op != want.operator:
                        err(("em", name), f"study.yaml eval[{i}] ({e.task}) applies {name} {op} {thr}, the prereg says "
                            f"{want.operator} {want.value:g}: set args {name}_op: '{want.operator}' and "
                            f"{name}_threshold: {want.value:g}")
                if "refusals" in p and p["refusals"] != prereg.em.refusals:
                    err(("em", "refusals"), f"study.yaml eval[{i}] ({e.task}) uses refusals={p['refusals']!r}, "
                        f"the prereg says {prereg.em.refusals!r}")
                if "incoherent" in p and p["incoherent"] != prereg.em.incoherent:
                    err(("em", "incoherent"), f"study.yaml eval[{i}] ({e.task}) uses incoherent={p['incoherent']!r}, "
                        f"the prereg says {prereg.em.incoherent!r}")
        if "min_coverage" in p:
            ms = info.measures(study.resolve)
            for kind in ("primary", "secondary"):
                for j, o in enumerate(getattr(prereg.outcomes, kind)):
                    cov = o.judge.min_coverage if o.judge else None
                    if cov is not None and o.measure in ms and o.item_set == e.item_set and float(p["min_coverage"]) != cov:
                        err(("outcomes", kind, j, "judge", "min_coverage"),
                            f"{o.id}: min_coverage {cov:g} but study.yaml eval[{i}] ({e.task}) applies {p['min_coverage']}")


def prereg_path(study_dir: str | Path) -> Path:
    p = Path(study_dir)
    return p / "prereg.yaml" if p.is_dir() or not p.suffix else p


def load_prereg(study_dir: str | Path, study=None) -> Prereg:
    """Load and validate `<study_dir>/prereg.yaml` and cross-check it against the study."""
    from leaklab.study import load_study
    from leaklab.yamlio import load_yaml, validate_yaml

    path = prereg_path(study_dir)
    if not path.exists():
        raise PreregError(f"{path}: no prereg.yaml for this study (write one; see studies/demo/prereg.yaml)")
    data = load_yaml(path)
    try:
        prereg = validate_yaml(Prereg, path, data=data)
    except PreregError:
        raise
    except ConfigError as exc:
        raise PreregError(str(exc)) from None
    if study is None:
        study = load_study(path.parent)
    cross_check(prereg, study, path, data)
    return prereg
