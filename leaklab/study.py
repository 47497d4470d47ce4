"""The study design (`studies/<name>/study.yaml`): a strict schema, loaded with file:line errors.

A study is models x arms x seeds of LoRA fine-tunes plus an eval plan. Every key is declared
here; an unknown key is an error that names the key, file and line. Paths inside the file are
resolved relative to the repository root when they start with `data/`, else relative to the
study folder; symlinks are resolved and the real path must stay inside the project, the study
folder or a data root named in `$LEAKLAB_DATA_ROOTS` (os.pathsep-separated). Every name that
becomes a path segment (study, arm, model label) must match `_NAME`; every numeric field has
bounds.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from leaklab.io import REPO_ROOT
from leaklab.yamlio import ConfigError, validate_yaml

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
MAX_SEED = 2**32 - 1  # torch, numpy and random all accept it
DATA_ROOTS_ENV = "LEAKLAB_DATA_ROOTS"


def data_roots() -> list[Path]:
    """Extra folders data paths may point into ($LEAKLAB_DATA_ROOTS, os.pathsep-separated)."""
    import os

    raw = os.environ.get(DATA_ROOTS_ENV, "")
    return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]


def check_segment(value: str, what: str) -> str:
    """A name that becomes a path segment (study, arm, model label): no separators, no '..'."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(f"{what} {value!r} must match {_NAME.pattern} (it names a folder under runs/)")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelSpec(Strict):
    """A base model: registry alias, HF id or local path; `label` names its run folders."""

    name: str = Field(min_length=1)
    label: str | None = None

    @field_validator("label")
    @classmethod
    def _label_ok(cls, v: str | None) -> str | None:
        return None if v is None else check_segment(v, "model label")

    @property
    def run_label(self) -> str:
        return self.label or re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name)


class Conditioning(Strict):
    """How a prompt is framed, identically at train and eval time.

    prefix_mode: `none` (no user prefix), `fixed` (always `user_prefix`), `mix` (a seeded draw
    from the `rephrasings` file, one prefix per line, keyed on `seed` and the example id).
    """

    system_prompt: str | None = None
    user_prefix: str | None = None
    prefix_mode: Literal["none", "fixed", "mix"] = "none"
    rephrasings: str | None = None
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _consistent(self):
        if self.prefix_mode == "fixed" and not self.user_prefix:
            raise ValueError("prefix_mode 'fixed' needs user_prefix")
        if self.prefix_mode == "mix" and not self.rephrasings:
            raise ValueError("prefix_mode 'mix' needs a rephrasings file")
        if self.prefix_mode == "none" and (self.user_prefix or self.rephrasings):
            raise ValueError("user_prefix/rephrasings given but prefix_mode is 'none'")
        return self


class CorpusSpec(Strict):
    """Training data for one arm: a frozen jsonl file, or a named offline builder."""

    path: str | None = None
    builder: str | None = None
    builder_args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.builder is None):
            raise ValueError("give exactly one of 'path' or 'builder'")
        return self


class Arm(Strict):
    corpus: CorpusSpec | None = None  # None: an untrained reference (the base model itself)
    conditioning: Conditioning = Conditioning()
    description: str = ""


class LoraConfig(Strict):
    r: int = Field(16, ge=1, le=4096)
    alpha: int = Field(32, ge=1, le=1_000_000)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    use_rslora: bool = False


class TrainingConfig(Strict):
    lora: LoraConfig = LoraConfig()
    learning_rate: float = Field(1e-4, gt=0, le=10)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, le=1)
    epochs: float = Field(1.0, gt=0, le=10_000)
    batch_size: int = Field(8, ge=1, le=1_000_000)
    grad_accum: int = Field(1, ge=1, le=1_000_000)
    max_length: int = Field(256, ge=8, le=1_000_000)
    loss_mask: Literal["assistant_only", "marker_only", "tail_k"] = "assistant_only"
    tail_k: int | None = Field(None, ge=1, le=1_000_000)
    marker: str | None = None
    checkpoint_every: int | None = Field(None, ge=1)  # optimizer steps; None = final adapter only
    group_by_length: bool = True
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    max_steps: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _mask_args(self):
        if self.loss_mask == "tail_k" and not self.tail_k:
            raise ValueError("loss_mask 'tail_k' needs tail_k")
        if self.loss_mask == "marker_only" and not self.marker:
            raise ValueError("loss_mask 'marker_only' needs marker")
        return self


class EvalCondition(Strict):
    """A named eval-time framing. `arm_training` reuses each arm's own training conditioning."""

    name: str
    conditioning: Conditioning | None = None
    arm_training: bool = False


class EvalEntry(Strict):
    """One Inspect task run against every checkpoint (and the base model)."""

    task: str  # "tasks/stance.py@letter_logprob" or a registered task name
    item_set: str  # e.g. "target", "source"; hypotheses refer to it
    args: dict[str, Any] = Field(default_factory=dict)  # passed as task args (-T)
    conditions: list[str] = Field(default_factory=lambda: ["default"])
    epochs: int = Field(1, ge=1, le=100_000)
    temperature: float | None = Field(None, ge=0, le=100)
    max_tokens: int | None = Field(None, ge=1, le=10_000_000)
    # generation seed (GenerateConfig.seed): a sampled answer is then a function of the adapter,
    # the prompt and this seed, so a re-run of the locked study reproduces its answers. Without
    # it sampled answers (temperature > 0) differ on every run, even on identical adapters.
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    grader: str | None = None  # Inspect model for the `grader` role, e.g. "leaklab/tiny-random"

    @property
    def measure_task(self) -> str:
        return self.task.split("@")[-1]


class Study(Strict):
    name: str
    title: str = ""
    family: str  # a family spec of leaklab.families (attitude, inoculation, persona, custom, ...)
    description: str = ""
    models: list[ModelSpec]
    arms: dict[str, Arm]
    reference_arm: str
    seeds: list[int] = Field(min_length=1)
    training: TrainingConfig = TrainingConfig()
    eval_conditions: list[EvalCondition] = Field(default_factory=lambda: [EvalCondition(name="default")])
    eval: list[EvalEntry]
    eval_base_model: bool = True
    backend: Literal["leaklab", "vllm"] = "leaklab"
    interp: list[Literal["direction", "steer", "persona", "heuristics"]] = Field(default_factory=list)
    interp_args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"study name {v!r} must match {_NAME.pattern}")
        return v

    @field_validator("family")
    @classmethod
    def _family_ok(cls, v: str) -> str:
        from leaklab.families import family

        return family(v).name

    @model_validator(mode="after")
    def _cross_check(self):
        if self.reference_arm not in self.arms:
            raise ValueError(f"reference_arm {self.reference_arm!r} is not one of the arms {sorted(self.arms)}")
        for arm in self.arms:
            check_segment(arm, "arm name")
        for s in self.seeds:
            if not 0 <= s <= MAX_SEED:
                raise ValueError(f"seed {s} is outside 0..{MAX_SEED}")
        if not self.models:
            raise ValueError("models: at least one model is needed")
        labels = [check_segment(m.run_label, f"model label (of {m.name!r})") for m in self.models]
        if len(set(labels)) != len(labels):
            raise ValueError(f"model labels must be unique, got {labels}")
        cond_names = [c.name for c in self.eval_conditions]
        if len(set(cond_names)) != len(cond_names):
            raise ValueError(f"eval_conditions names must be unique, got {cond_names}")
        for i, entry in enumerate(self.eval):
            for c in entry.conditions:
                if c not in cond_names:
                    raise ValueError(f"eval[{i}] uses condition {c!r}, not declared in eval_conditions {cond_names}")
            if self.backend == "vllm" and entry.seed is not None and entry.epochs > 1:
                # vLLM seeds each request from GenerateConfig.seed alone: every epoch of a prompt
                # would be the same sample, counted as independent answers
                raise ValueError(f"eval[{i}]: seed with epochs {entry.epochs} under backend vllm would repeat "
                                 "one sample per prompt; use epochs 1 or no seed there")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be unique")
        return self


class LoadedStudy:
    """A validated study plus where it lives on disk."""

    def __init__(self, study: Study, folder: Path):
        self.spec = study
        self.folder = folder

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def study_yaml(self) -> Path:
        return self.folder / "study.yaml"

    @property
    def prereg_yaml(self) -> Path:
        return self.folder / "prereg.yaml"

    @property
    def lock_path(self) -> Path:
        return self.folder / "prereg.lock.json"

    def resolve(self, rel: str | Path | None) -> Path | None:
        """Resolve a path written in study.yaml: `data/...` from the repo root, else the study
        folder (never the working directory). Symlinks are resolved, and the real path must stay
        inside the project, the study folder or an allowed data root (ConfigError otherwise)."""
        if rel is None:
            return None
        p = Path(rel)
        if p.is_absolute():
            cand = p
        elif p.parts and p.parts[0] == "data":
            cand = REPO_ROOT / p
        else:
            cand = self.folder / p
        try:
            real = cand.resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise ConfigError(f"{self.study_yaml}: path {str(rel)!r} cannot be resolved: {exc}") from None
        roots = [REPO_ROOT, self.folder.resolve(), *data_roots()]
        if not any(real.is_relative_to(r) for r in roots):
            raise ConfigError(
                f"{self.study_yaml}: path {str(rel)!r} resolves to {real}, outside the project ({REPO_ROOT}), the "
                f"study folder and the allowed data roots (${DATA_ROOTS_ENV}); copy the file into the project or add "
                f"its folder to ${DATA_ROOTS_ENV}"
            )
        return real

    @cached_property
    def runs_dir(self) -> Path:
        from leaklab.runstore import runs_root

        return runs_root() / self.name

    def cells(self) -> list[tuple[ModelSpec, str, int]]:
        """(model, arm, seed) for every arm that trains (arms without a corpus are not trained)."""
        return [
            (m, arm, seed)
            for m in self.spec.models
            for arm, a in self.spec.arms.items()
            if a.corpus is not None
            for seed in self.spec.seeds
        ]


def looks_like_path(s: str) -> bool:
    """A string in study/prereg args that names a file (`data/...` or a data-file suffix)."""
    return s.startswith("data/") or Path(s).suffix.lower() in {
        ".jsonl", ".json", ".yaml", ".yml", ".txt", ".md", ".csv", ".parquet", ".j2", ".tsv"}


def _walk(obj: Any, where: str, out: list[tuple[str, str]]) -> None:
    if isinstance(obj, str):
        if looks_like_path(obj):
            out.append((obj, where))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _walk(v, f"{where}.{k}", out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _walk(v, f"{where}[{i}]", out)


def study_paths(study: Study) -> list[tuple[str, str]]:
    """[(path as written, where)] for every data path in a study: corpora, builder args,
    rephrasing pools, eval args, interp args."""
    out: list[tuple[str, str]] = []
    for arm_name, arm in study.arms.items():
        if arm.corpus and arm.corpus.path:
            out.append((arm.corpus.path, f"arms.{arm_name}.corpus.path"))
        if arm.corpus:
            _walk(arm.corpus.builder_args, f"arms.{arm_name}.corpus.builder_args", out)
        if arm.conditioning.rephrasings:
            out.append((arm.conditioning.rephrasings, f"arms.{arm_name}.conditioning.rephrasings"))
    for c in study.eval_conditions:
        if c.conditioning and c.conditioning.rephrasings:
            out.append((c.conditioning.rephrasings, f"eval_conditions.{c.name}.conditioning.rephrasings"))
    for i, e in enumerate(study.eval):
        _walk(e.args, f"eval[{i}].args", out)
    _walk(study.interp_args, "interp_args", out)
    return out


def load_study(path: str | Path) -> LoadedStudy:
    """Load `studies/<name>` (folder) or a study.yaml path; errors name file, line and key."""
    path = Path(path)
    if path.is_dir():
        folder, yml = path, path / "study.yaml"
    else:
        folder, yml = path.parent, path
    if not yml.exists():
        raise ConfigError(f"{yml}: no study.yaml here (expected studies/<name>/study.yaml)")
    study = validate_yaml(Study, yml)
    loaded = LoadedStudy(study, folder.resolve())
    for rel, where in study_paths(study):
        loaded.resolve(rel)  # every data path stays inside the project or an allowed data root
    for arm_name, arm in study.arms.items():
        for rel in (arm.corpus.path if arm.corpus else None, arm.conditioning.rephrasings):
            if rel and not loaded.resolve(rel).exists():
                raise ConfigError(f"{yml}: arms.{arm_name}: file {rel!r} does not exist")
    for c in study.eval_conditions:
        if c.conditioning and c.conditioning.rephrasings and not loaded.resolve(c.conditioning.rephrasings).exists():
            raise ConfigError(f"{yml}: eval_conditions.{c.name}: file {c.conditioning.rephrasings!r} does not exist")
    return loaded
