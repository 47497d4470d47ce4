"""Inspect logs -> one tidy pandas frame (one row per Score), the only input of every analysis.

Each row is one scored record: which study/lock/model/arm/seed/checkpoint produced it, which
task, measure and measure version, which item (id, base item, paraphrase, option order,
condition, persona, question), which epoch/sample, and its value. A Score with `parsed=False`
or a non-finite value is kept as NaN (counted), never 0.

Pooling guards (CONTRACTS.md): all logs of a study must carry the same lock digest, and each
measure a single measure version; otherwise `read_frame` raises ConfigError naming the logs.
Only logs with status "success" are read; the others are listed in `FrameReport.skipped`.

`cell_frame` averages the rows of one analysis cell (model x arm x seed x checkpoint x measure x
item set x condition x persona x item) over option orders and epochs, NaN-skipping, so every
item counts once per run: that is the unit the statistics resample and take SDs over.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from leaklab.yamlio import ConfigError

COLUMNS = [
    "study", "lock_digest", "exploratory", "model", "model_label", "arm", "seed", "checkpoint",
    "step", "task", "measure", "measure_version", "item_set", "item_id", "base_item",
    "paraphrase_idx", "option_order", "condition", "persona", "question_id", "epoch",
    "sample_id", "scorer", "value", "parsed", "log",
    # optional score metadata, kept for by-group summaries and audits (NaN/None when absent)
    "judge_model", "coverage", "censored", "missing_reason", "em_status", "persona_category", "persona_related_to",
]
# the item-level cell: one value per item per run after averaging option orders and epochs
CELL_KEYS = ["model_label", "arm", "seed", "checkpoint", "measure", "item_set", "condition", "persona", "item_id", "base_item"]

_STEP = re.compile(r"^step-(\d+)$")


@dataclass
class FrameReport:
    """What was read: per-log row counts and what was skipped, for results.json."""

    logs: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "path: reason"
    n_scores_without_measure: int = 0


def _step(checkpoint: Any) -> float:
    if checkpoint is None:
        return math.nan
    m = _STEP.match(str(checkpoint))
    return float(m.group(1)) if m else math.nan


def _value(score_value: Any, parsed: Any) -> float:
    if parsed is False:
        return math.nan
    if isinstance(score_value, bool):
        return float(score_value)
    if isinstance(score_value, (int, float)):
        v = float(score_value)
        return v if math.isfinite(v) else math.nan
    if score_value is None:
        return math.nan
    raise ValueError(f"score value {score_value!r} is not numeric")


def _float_or_nan(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


def _joined(x: Any) -> str | None:
    """A list of ids as one comma-separated string (parquet-friendly); None stays None."""
    if x is None:
        return None
    return ",".join(map(str, x)) if isinstance(x, (list, tuple)) else str(x)


def log_rows(log, path: str) -> tuple[list[dict[str, Any]], int]:
    """Rows of one EvalLog (scores without `measure` metadata are not leaklab scores: counted)."""
    meta = (log.eval.metadata or {}).get("leaklab")
    if meta is None:
        meta = (log.metadata or {}).get("leaklab")
    if not isinstance(meta, dict):
        raise ConfigError(f"{path}: eval metadata has no 'leaklab' mapping (see CONTRACTS.md: study, lock_digest, model, arm, seed, ...)")
    for key in ("study", "arm"):
        if key not in meta:
            raise ConfigError(f"{path}: eval metadata 'leaklab' lacks key '{key}'")
    task_args = log.eval.task_args or {}
    rows: list[dict[str, Any]] = []
    skipped = 0
    for sample in log.samples or []:
        for scorer, score in (sample.scores or {}).items():
            sm = score.metadata or {}
            if "measure" not in sm:
                skipped += 1
                continue
            try:
                value = _value(score.value, sm.get("parsed"))
            except ValueError as exc:
                raise ConfigError(f"{path}: sample {sample.id!r} epoch {sample.epoch} scorer {scorer!r}: {exc}") from None
            seed = meta.get("seed")
            rows.append({
                "study": meta.get("study"),
                "lock_digest": meta.get("lock_digest"),
                "exploratory": bool(meta.get("exploratory", False)),
                "model": meta.get("model"),
                "model_label": meta.get("model_label") or meta.get("model"),
                "arm": meta.get("arm"),
                "seed": None if seed is None else int(seed),
                "checkpoint": meta.get("checkpoint") or "final",
                "step": _step(meta.get("checkpoint")),
                "task": log.eval.task,
                "measure": sm.get("measure"),
                "measure_version": sm.get("measure_version"),
                "item_set": sm.get("item_set", task_args.get("item_set")),
                "item_id": str(sm.get("item_id", sample.id)),
                "base_item": str(sm.get("base_item", sm.get("item_id", sample.id))),
                "paraphrase_idx": sm.get("paraphrase_idx"),
                "option_order": sm.get("option_order"),
                "condition": sm.get("condition", task_args.get("condition", "default")),
                "persona": sm.get("persona"),
                "question_id": sm.get("question_id"),
                "epoch": int(sample.epoch),
                "sample_id": str(sample.id),
                "scorer": scorer,
                "value": value,
                "parsed": bool(sm.get("parsed", True)) and not math.isnan(value),
                "log": path,
                "judge_model": sm.get("judge_model"),
                "coverage": _float_or_nan(sm.get("coverage")),
                "censored": sm.get("censored"),
                "missing_reason": sm.get("missing_reason"),
                "em_status": sm.get("em_status"),
                "persona_category": sm.get("persona_category"),
                "persona_related_to": _joined(sm.get("persona_related_to")),
            })
    return rows, skipped


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    df = df.reindex(columns=COLUMNS)
    df["seed"] = df["seed"].astype("Int64")
    df["epoch"] = df["epoch"].astype("Int64")
    df["paraphrase_idx"] = pd.to_numeric(df["paraphrase_idx"], errors="coerce").astype("Int64")
    df["value"] = df["value"].astype(float)
    df["step"] = df["step"].astype(float)
    df["coverage"] = df["coverage"].astype(float)
    for col in ("persona", "option_order", "question_id", "lock_digest", "measure_version", "model",
                "judge_model", "censored", "missing_reason", "em_status", "persona_category", "persona_related_to"):
        df[col] = df[col].astype(object)
    for col in ("persona", "option_order", "question_id"):
        df[col] = df[col].where(df[col].notna(), "")
    return df


def check_pooling(df: pd.DataFrame) -> None:
    """Refuse to pool different lock digests or measure versions; name the logs involved."""
    if df.empty:
        return
    digests = df.groupby(df["lock_digest"].fillna("<none>"))["log"].unique()
    if len(digests) > 1:
        parts = [f"lock_digest {str(d)[:12]}...: {sorted(set(logs))[:3]}" for d, logs in digests.items()]
        raise ConfigError("refusing to pool logs with different lock digests: " + "; ".join(parts))
    studies = df["study"].dropna().unique()
    if len(studies) > 1:
        raise ConfigError(f"refusing to pool logs of different studies {sorted(studies)}")
    for measure, sub in df.groupby("measure"):
        versions = sub.groupby(sub["measure_version"].fillna("<none>"))["log"].unique()
        if len(versions) > 1:
            parts = [f"version {str(v)[:12]}: {sorted(set(logs))[:3]}" for v, logs in versions.items()]
            raise ConfigError(f"refusing to pool measure '{measure}' across measure versions: " + "; ".join(parts))


def check_duplicates(df: pd.DataFrame) -> None:
    """The same score from two logs (a rerun) would double-weight items: refuse, naming both logs.
    The sample id is part of the key: one item x option order can hold several samples (the token
    measure asks four word pairs of each), and a rerun repeats the ids."""
    keys = ["model_label", "arm", "seed", "checkpoint", "measure", "item_set", "item_id", "option_order",
            "condition", "persona", "question_id", "sample_id", "epoch", "scorer"]
    dup = df.duplicated(subset=keys, keep=False)
    if dup.any():
        first = df.loc[dup, keys].iloc[0]
        same = (df[keys].astype(object).fillna("<na>") == first.astype(object).fillna("<na>")).all(axis=1)
        logs = sorted(df.loc[same, "log"].unique())
        desc = "/".join(str(first[k]) for k in ("arm", "seed", "measure", "item_id", "option_order"))
        raise ConfigError(f"{int(dup.sum())} score rows appear more than once (e.g. {desc} in logs {logs}); "
                          "remove the duplicate log or move it out of logs/")


def read_frame(paths: Iterable[str | Path] | str | Path, study: str | None = None) -> tuple[pd.DataFrame, FrameReport]:
    """Read Inspect logs (files or folders) into the tidy frame; run the pooling guards."""
    from inspect_ai.log import list_eval_logs, read_eval_log

    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[str] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files += sorted(info.name.removeprefix("file://") for info in list_eval_logs(str(p), recursive=True))
        elif p.exists():
            files.append(str(p))
        else:
            raise ConfigError(f"{p}: no such log file or folder")
    report = FrameReport()
    rows: list[dict[str, Any]] = []
    for f in files:
        try:
            log = read_eval_log(f)
        except Exception as exc:  # a torn or foreign file: say which
            raise ConfigError(f"{f}: cannot read Inspect log: {exc}") from exc
        if log.status != "success":
            report.skipped.append(f"{f}: status {log.status}")
            continue
        r, n_skip = log_rows(log, f)
        if study is not None and r and r[0]["study"] != study:
            raise ConfigError(f"{f}: log belongs to study {r[0]['study']!r}, not {study!r}")
        report.n_scores_without_measure += n_skip
        meta = (log.eval.metadata or {}).get("leaklab", {})
        report.logs.append({"path": f, "model_label": meta.get("model_label") or meta.get("model"), "arm": meta.get("arm"),
                            "seed": meta.get("seed"), "checkpoint": meta.get("checkpoint") or "final",
                            "task": log.eval.task, "n_rows": len(r)})
        rows += r
    df = _typed(pd.DataFrame(rows, columns=COLUMNS))
    check_pooling(df)
    check_duplicates(df)
    return df, report


def read_study_frame(study, guard) -> tuple[pd.DataFrame, FrameReport]:
    """The frame of a study's logs, read from the one file list that custody accepts.

    Every log under runs/<study>/logs (any format: `.eval` or `.json`) and every ledgered log is
    checked by `prereg.ledger.custody`: only logs in the run ledger whose bytes, labels, adapters
    and cell records still match, and that are bound to `guard`'s lock, are read; anything else
    raises PreregError naming each refused log and why. `study` is a LoadedStudy or a folder."""
    from leaklab.study import LoadedStudy, load_study
    from prereg.ledger import require_custody

    study = study if isinstance(study, LoadedStudy) else load_study(study)
    c = require_custody(study, guard)
    if not c.accepted:
        raise ConfigError(f"{study.runs_dir / 'logs'}: no ledgered Inspect logs to analyse; run `leaklab eval "
                          f"{study.folder}` (or register hand-run logs with `leaklab register-log`)")
    df, report = read_frame(c.accepted, study=study.name)
    report.skipped += [f"{p}: {why}" for p, why in c.skipped]
    return df, report


def cell_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per item per run: value averaged over option orders/epochs (NaN-skipping).

    Columns: CELL_KEYS + value (NaN when every row of the cell was missing) + n_rows + n_missing.
    """
    if df.empty:
        return pd.DataFrame(columns=CELL_KEYS + ["value", "n_rows", "n_missing"])
    g = df.groupby(CELL_KEYS, dropna=False, sort=True)
    out = g["value"].agg(value="mean", n_rows="size", n_missing=lambda v: int(v.isna().sum())).reset_index()
    return out


def select(df: pd.DataFrame, filters: dict[str, Any]) -> pd.DataFrame:
    """Rows matching every filter (a value or a list of values); the filter dict goes into results.json."""
    mask = np.ones(len(df), dtype=bool)
    for col, want in filters.items():
        if col not in df.columns:
            raise KeyError(f"frame has no column {col!r}")
        if isinstance(want, (list, tuple, set)):
            mask &= df[col].isin(list(want)).to_numpy()
        elif want is None:
            mask &= df[col].isna().to_numpy()
        else:
            mask &= (df[col] == want).to_numpy()
    return df[mask]


def write_frame(df: pd.DataFrame, path: Path) -> str:
    """Write parquet atomically; return its sha256 (stamped into results.json)."""
    import hashlib
    import io

    from leaklab.runstore import atomic_write_bytes

    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# Synthetic logs in the real Inspect format (tests, benchmarks, simulation studies). Values are
# simulated from a stated generative model; they are never written under runs/ by `analyze`.


def simulate_cells(
    *,
    arms: dict[str, float],
    seeds: list[int],
    n_base: int,
    n_para: int = 1,
    sd_item: float = 1.0,
    sd_seed: float = 0.2,
    sd_resid: float = 0.5,
    orders: tuple[str, ...] = ("pro_first", "anti_first"),
    order_effect: float = 0.0,
    rng: np.random.Generator | int = 0,
    kind: str = "continuous",
) -> list[dict[str, Any]]:
    """Draw score rows: value = arm effect + base-item effect + paraphrase noise + seed effect + residual.

    kind "continuous" returns values; "binary" returns +1/-1 with P(+1) = logistic(latent);
    "likert" rounds the latent into 1..7 and scores (r-4)/3.
    """
    rng = np.random.default_rng(rng)
    base_eff = rng.normal(0, sd_item, n_base)
    para_eff = rng.normal(0, sd_item * 0.3, (n_base, n_para))
    out = []
    for arm, eff in arms.items():
        arm_seeds = [None] if arm == "base" else seeds
        for seed in arm_seeds:
            seed_eff = 0.0 if seed is None else rng.normal(0, sd_seed)
            for b in range(n_base):
                for p in range(n_para):
                    for o in orders:
                        lat = eff + base_eff[b] + para_eff[b, p] + seed_eff + rng.normal(0, sd_resid)
                        lat += order_effect if o == "pro_first" else -order_effect
                        if kind == "continuous":
                            v = lat
                        elif kind == "binary":
                            v = 1.0 if rng.random() < 1 / (1 + math.exp(-lat)) else -1.0
                        elif kind == "likert":
                            v = (min(7, max(1, round(4 + lat))) - 4) / 3
                        else:
                            raise ValueError(kind)
                        out.append({"arm": arm, "seed": seed, "item_id": f"b{b:03d}-p{p}", "base_item": f"b{b:03d}",
                                    "paraphrase_idx": p, "option_order": o, "value": float(v)})
    return out


def write_synthetic_logs(
    folder: Path,
    rows: list[dict[str, Any]],
    *,
    study: str = "synthetic",
    lock_digest: str | None = "0" * 64,
    measure: str = "letter_logprob",
    measure_version: str = "v1",
    item_set: str = "target",
    condition: str = "default",
    model_label: str = "tiny",
    checkpoint: str = "final",
    nan_every: int = 0,
) -> list[Path]:
    """Write one real `.eval` log per (arm, seed) holding `rows` as Scores, as `leaklab eval` would."""
    from inspect_ai.log import EvalConfig, EvalDataset, EvalLog, EvalSample, EvalSpec, write_eval_log
    from inspect_ai.scorer import Score

    folder = Path(folder)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["arm"], r["seed"]), []).append(r)
    written = []
    for (arm, seed), rs in groups.items():
        spec = EvalSpec(
            created="2026-01-01T00:00:00+00:00", task=measure, dataset=EvalDataset(name=item_set),
            model=f"leaklab/{model_label}", config=EvalConfig(), task_args={"item_set": item_set, "condition": condition},
            metadata={"leaklab": {"study": study, "lock_digest": lock_digest, "exploratory": lock_digest is None,
                                  "model": model_label, "model_label": model_label, "arm": arm, "seed": seed,
                                  "checkpoint": checkpoint, "adapter": None}},
        )
        samples = []
        for i, r in enumerate(rs):
            missing = nan_every and i % nan_every == nan_every - 1
            samples.append(EvalSample(
                id=f"{r['item_id']}:{r.get('option_order', '')}", epoch=1, input="synthetic", target="",
                scores={measure: Score(value=math.nan if missing else r["value"], metadata={
                    "measure": measure, "measure_version": measure_version, "item_set": item_set,
                    "item_id": r["item_id"], "base_item": r["base_item"], "condition": condition,
                    "parsed": not missing, "option_order": r.get("option_order"),
                    "paraphrase_idx": r.get("paraphrase_idx")})},
            ))
        path = folder / f"{measure}_{item_set}_{model_label}_{arm}_seed{seed}_{checkpoint}.eval"
        write_eval_log(EvalLog(eval=spec, status="success", samples=samples), str(path))
        written.append(path)
    return written
