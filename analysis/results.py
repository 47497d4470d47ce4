"""The `runs/<study>/analysis/results.json` schema: what `leaklab analyze` writes, what reports render.

Every number carries a `Source` (the frame file, the row filters that select its data, the row
count) so a reader of REPORT.md can trace it back to a file under `runs/<study>/`. A result from
an unlocked study is stamped EXPLORATORY at the top level and on every decision.

Missing numbers are `None` (JSON null), never NaN or 0. Effects in "SD units" are divided by the
reference arm's SD over item x seed cells (ddof=1, option orders averaged within item first).

Compatibility: new fields are added as optional with defaults; `SCHEMA_VERSION` bumps only when
a field changes meaning or is removed. Load with `load_results(path)`.

Version 2 (from 1): `Effect.p_tost` is the TOST p (the larger one-sided p, no longer doubled);
`Decision.verdict` may be `not_interpretable` (a required manipulation check did not pass); a
missing-data breach reads `unusable` (was `undecided`); new optional fields: Effect.p_opposite,
p_adjusted_by_test, min_reference_sd, ci_method; Decision.requires, gates, against_prediction,
p_against; ArmSummary.seed_means, n_unbalanced; FrameInfo.censored_by_cell, unbalanced_by_cell,
n_excluded; ManipulationCheck.hypothesis_id; settings.thresholds and settings.decision_rule;
Results.confidence (graded by the analysis, no longer by the report).
Version-1 files still load (every new field is optional); their p_tost is the doubled one.
Later optional v2 additions (files without them still load): `Results.capability` (capability per
arm and seed against the base model, the arms flagged by prereg `capability`); a
`not_interpretable` decision may also come from a capability gate (a `Decision.gates` entry
starting "capability: ").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "2"

Verdict = Literal["effect", "equivalent", "undecided", "unusable"]
Kind = Literal["confirmatory", "exploratory"]


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Source(_M):
    """Where a number came from: rows of `frame` selected by `filters` (column -> value or list)."""

    frame: str  # path relative to runs/<study>/, e.g. "analysis/frame.parquet"
    filters: dict[str, Any] = Field(default_factory=dict)
    n_rows: int | None = None  # rows the filters select exactly (including NaN values)
    n_missing: int | None = None  # of which value is NaN (parse/judge failures)
    n_excluded: int | None = None  # rows the same filters select without the `excluded` key, minus n_rows
    note: str = ""


class LogInfo(_M):
    path: str
    model_label: str | None = None
    arm: str | None = None
    seed: int | None = None
    checkpoint: str | None = None
    task: str | None = None
    n_rows: int = 0


class FrameInfo(_M):
    path: str  # relative to runs/<study>/
    sha256: str
    n_rows: int
    n_missing: int
    n_logs: int
    logs: list[LogInfo] = Field(default_factory=list)
    measure_versions: dict[str, str] = Field(default_factory=dict)  # measure -> version hash
    missing_by_cell: list[dict[str, Any]] = Field(default_factory=list)  # {model_label, arm, measure, item_set, n, n_missing}
    # logprob margins that were bounds (a letter outside the top-k), per model x arm x condition x measure x item set
    censored_by_cell: list[dict[str, Any]] = Field(default_factory=list)  # {..., n, n_censored, share}
    # item cells with one option order unparsed (set missing, not averaged as if balanced), per run x measure
    unbalanced_by_cell: list[dict[str, Any]] = Field(default_factory=list)
    n_excluded: int | None = None  # rows removed by a preregistered exclusion


class ArmSummary(_M):
    """Per-arm mean with a (1 - alpha) t CI, SE clustered by seed and item (`frequentist.arm_interval`), and Miller clustered SE."""

    model_label: str
    measure: str
    item_set: str
    condition: str
    arm: str
    mean: float | None
    sd: float | None  # SD over item x seed cells, ddof=1
    se: float | None  # SE of the arm mean over the population of seeds and items (seed x item clustered)
    ci_low: float | None  # mean - t_df se (Satterthwaite df)
    ci_high: float | None
    se_clustered: float | None = None  # Miller 2024 clustered by base item
    n_cells: int  # item x seed cells with a value
    n_seeds: int
    n_items: int
    seed_means: dict[str, float] = Field(default_factory=dict)  # seed -> mean over its item cells (figure dots)
    n_unbalanced: int = 0  # item cells set missing because one option order was unparsed
    source: Source


class Effect(_M):
    """A frequentist contrast. `contrast` is "ARM-REF" or "combined_directional".

    combined_directional = ((pos - ref) - (neg - ref)) / 2, positive means pos arm > neg arm.
    """

    id: str  # stable key, e.g. "smollm2/letter_logprob/target/default/eager-neutral"
    model_label: str
    measure: str
    item_set: str
    condition: str
    contrast: str
    arms: list[str]  # arms involved, reference last
    reference_arm: str
    estimate: float | None  # natural scale (measure units)
    d: float | None  # in reference-arm SD units
    sd_ref: float | None
    sd_ref_ok: bool = True  # False: degenerate reference SD, d refused (see sd_ref_reason)
    sd_ref_reason: str = ""
    ci_level: float = 0.95
    ci_low_d: float | None = None  # paired hierarchical bootstrap percentile CI on d
    ci_high_d: float | None = None
    ci_low: float | None = None  # same, natural scale
    ci_high: float | None = None
    p_value: float | None = None  # two-sided bootstrap p against 0 (same draws as the CI)
    p_adjusted: float | None = None  # after the prereg's multiplicity correction over its family
    multiplicity_family: str | None = None
    sesoi_d: float | None = None
    p_tost: float | None = None  # TOST: the larger one-sided p against -/+ SESOI (not doubled; v1 doubled it)
    p_min_effect: float | None = None  # minimum-effect: d beyond sesoi in the predicted direction
    p_opposite: float | None = None  # minimum-effect on the other side (directional hypotheses)
    p_adjusted_by_test: dict[str, float | None] = Field(default_factory=dict)  # min_effect/opposite/tost/nil, adjusted
    min_reference_sd: float | None = None  # the SD guard applied (absolute, or relative x the measure's range)
    ci_method: str | None = None
    direction: Literal["positive", "negative", "two_sided"] | None = None
    se_clustered: float | None = None  # Miller clustered SE of the natural-scale difference
    n_boot: int | None = None
    n_items: int
    n_seeds: dict[str, int] = Field(default_factory=dict)
    source: Source


class Diagnostics(_M):
    rhat_max: float | None
    ess_bulk_min: float | None
    ess_tail_min: float | None
    divergences: int
    bfmi_min: float | None = None
    thresholds: dict[str, float] = Field(default_factory=dict)
    passed: bool
    failures: list[str] = Field(default_factory=list)  # human-readable: "rhat_max 1.08 > 1.01"


class BayesContrast(_M):
    """A contrast computed on posterior draws; verdict by HDI + ROPE (ROPE = +/- SESOI)."""

    name: str  # "eager-neutral" / "combined_directional"
    mean: float | None  # natural scale (for binomial: probability scale; ordinal: latent scale)
    hdi_low: float | None
    hdi_high: float | None
    mean_d: float | None = None  # in reference SD units
    hdi_low_d: float | None = None
    hdi_high_d: float | None = None
    hdi_prob: float = 0.95
    rope: list[float] | None = None  # [lo, hi] on the scale the verdict uses
    rope_scale: Literal["d", "natural"] = "d"
    p_in_rope: float | None = None
    p_positive: float | None = None
    verdict: Verdict


class BayesFit(_M):
    id: str  # e.g. "smollm2/letter_logprob/target/default"
    model_label: str
    measure: str
    item_set: str
    condition: str
    likelihood: Literal["normal", "normal_by_arm", "student_t", "bernoulli", "binomial", "beta", "ordinal"]
    formula: str  # human-readable model description
    priors: dict[str, Any] = Field(default_factory=dict)
    sampler: dict[str, Any] = Field(default_factory=dict)  # draws, tune, chains, seed, target_accept, backend
    fit_seconds: float | None = None
    diagnostics: Diagnostics
    usable: bool  # False when the diagnostics gate failed: the contrasts are not to be read
    contrasts: list[BayesContrast] = Field(default_factory=list)
    netcdf: str | None = None  # relative to runs/<study>/
    ppc_figure: str | None = None
    source: Source


class MeasureValidity(_M):
    """Sign agreement of a stance measure with the model's own forced choice on source items."""

    model_label: str
    measure: str
    item_set: str
    n_items: int  # (checkpoint x item) pairs with both values non-missing and non-zero
    agreement: float | None  # fraction with equal sign; None when no pair could be compared
    threshold: float
    passed: bool | None  # False when not assessable (`reason`): an unvalidated measure is not interpreted
    reason: str | None = None
    source: Source


class ManipulationCheck(_M):
    """Did training move the trained (source) domain? Shown before any target result."""

    model_label: str
    measure: str
    item_set: str
    effects: list[str] = Field(default_factory=list)  # Effect ids on the source item set
    passed: bool | None = None
    summary: str = ""
    hypothesis_id: str | None = None


class CapabilityRun(_M):
    """One capability measure of one run (an arm x seed), of an arm pooled over its seeds
    (`seed` None, `pooled` True), or of the base model; final checkpoint. n and n_missing count
    every row (excluded ones too: an exclusion of unparsed answers must not hide a collapse); the
    mean reads the rows no exclusion removed."""

    arm: str
    seed: int | None = None
    pooled: bool = False
    n: int  # scored samples (rows)
    n_missing: int  # of which unscored (empty answer, too short, failed parse)
    missing_share: float | None
    missing_reasons: dict[str, int] = Field(default_factory=dict)
    mean: float | None  # mean value over scored samples (pooled: mean of the seed means); perplexity: mean log-perplexity
    value: float | None  # in the reported unit: perplexity = exp(mean); refusal rate; fluency 0-100
    ratio: float | None = None  # perplexity: value / base value
    drop: float | None = None  # base mean - this mean (refusal, fluency)
    missing_increase: float | None = None  # missing_share - base missing_share
    past: list[str] = Field(default_factory=list)  # the bound's criteria this run is past, in words


class CapabilityMeasure(_M):
    model_label: str
    measure: str
    item_set: str
    condition: str
    bound: dict[str, float] | None = None  # the preregistered CapabilityBound (None: reported, not bounded)
    base: CapabilityRun | None = None
    runs: list[CapabilityRun] = Field(default_factory=list)  # per arm: every seed, then pooled
    source: Source


class CapabilityFlag(_M):
    model_label: str
    arm: str
    reasons: list[str]  # "fluency: seed 1 missing share +0.92 > 0.25", ...
    gated: list[str] = Field(default_factory=list)  # hypothesis ids made not_interpretable by this flag


class Capability(_M):
    """Capability of the base model and every arm (tasks/capability.py) against prereg `capability`."""

    evaluated: list[str] = Field(default_factory=list)  # capability measures found in the frame
    flag_rule: str = "any_seed"
    gate: bool = True
    measures: list[CapabilityMeasure] = Field(default_factory=list)
    flagged: list[CapabilityFlag] = Field(default_factory=list)
    note: str = ""


class Decision(_M):
    hypothesis_id: str
    model_label: str | None = None  # one decision per (hypothesis, model) when the hypothesis spans models
    kind: Kind
    statement: str = ""
    rule: str  # this hypothesis' own rule parameters (SESOI, direction, family); the whole rule is settings.decision_rule
    # supported: both rules say effect beyond SESOI in the predicted direction; equivalent: both
    # say practically zero; undecided: anything else (incl. disagreement); unusable: data quality
    # or diagnostics gate failed; not_supported: effect beyond SESOI opposite to the prediction
    # not_interpretable: a required manipulation check (`requires`) did not pass
    verdict: Literal["supported", "not_supported", "equivalent", "undecided", "inconclusive", "unusable",
                     "not_interpretable"]
    reason: str  # one sentence with the numbers
    effect_ids: list[str] = Field(default_factory=list)
    bayes_ids: list[str] = Field(default_factory=list)
    numbers: dict[str, Any] = Field(default_factory=dict)  # the numbers the rule read
    frequentist_reading: str | None = None  # effect / opposite / equivalent / undecided / unusable
    bayes_reading: str | None = None  # same vocabulary; None when the Bayesian part was not run
    exploratory_stamp: bool = False  # True when the whole analysis is EXPLORATORY (no lock)
    requires: list[str] = Field(default_factory=list)  # manipulation checks this verdict depends on
    gates: list[str] = Field(default_factory=list)  # the gates that overrode the two-part rule (why unusable / not_interpretable)
    against_prediction: bool = False  # CI excludes 0 against a directional prediction (adjusted nil p < alpha)
    p_against: float | None = None  # that adjusted p


class Results(_M):
    schema_version: str = SCHEMA_VERSION
    study: str
    stamp: Literal["CONFIRMATORY", "EXPLORATORY"]
    exploratory: bool
    lock_digest: str | None
    created_utc: str
    leaklab_version: str
    reference_arm: str
    arms: list[str]
    frame: FrameInfo
    settings: dict[str, Any] = Field(default_factory=dict)  # bootstrap reps/seed, thresholds used
    manipulation_checks: list[ManipulationCheck] = Field(default_factory=list)
    measure_validity: list[MeasureValidity] = Field(default_factory=list)
    arm_summaries: list[ArmSummary] = Field(default_factory=list)
    effects: list[Effect] = Field(default_factory=list)
    bayes: list[BayesFit] = Field(default_factory=list)
    decisions: list[Decision] = Field(default_factory=list)  # confirmatory first, then exploratory
    # {"level": low / moderate / high, "reasons": [...]}, graded by analysis.decide.confidence (v2)
    confidence: dict[str, Any] | None = None
    capability: Capability | None = None  # v2 addition (optional): capability per arm and the arms flagged
    warnings: list[str] = Field(default_factory=list)

    def effect(self, effect_id: str) -> Effect:
        for e in self.effects:
            if e.id == effect_id:
                return e
        raise KeyError(effect_id)

    def bayes_fit(self, fit_id: str) -> BayesFit:
        for b in self.bayes:
            if b.id == fit_id:
                return b
        raise KeyError(fit_id)


def load_results(path: str | Path) -> Results:
    """Read and validate results.json (raises pydantic.ValidationError naming the bad key)."""
    return Results.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))


def dump_results(results: Results, path: str | Path) -> None:
    """Atomic write; NaN/inf become null."""
    from leaklab.runstore import atomic_write_json

    atomic_write_json(Path(path), results.model_dump(mode="json"))
