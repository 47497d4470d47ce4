"""The training matrix: models x arms x seeds -> runs/<study>/train/<model>/<arm>/seed<k>/.

A cell is complete only when its DONE marker exists (written last, after adapter/ and
manifest.json). Cells with DONE are skipped. A cell without DONE resumes from its newest
complete checkpoint when the cell's fingerprint (model, data sha256, config, conditioning,
seed) is unchanged, and otherwise restarts from scratch; a partial adapter/ is never trusted.

Training goes through `prereg.guard` (exploratory only when asked), and every cell records
its custody in manifest.json: the lock digest it was trained under, whether it was
exploratory, its fingerprint (the resolved config, conditioning, model, seed and data sha256)
and the sha256 of its adapter and checkpoint adapters. `cell_problems` checks a cell against
the current study and lock; eval refuses cells it finds wrong, and a DONE cell trained under
another config is never silently reused.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import time
from pathlib import Path

from leaklab.runstore import atomic_write_json, is_done, mark_done, run_lock, train_dir
from leaklab.study import REPO_ROOT, LoadedStudy, ModelSpec, load_study
from leaklab.yamlio import ConfigError
from prereg.canonical import digest
from prereg.ledger import tree_sha256
from training.corpora import build_corpus, build_study_corpora, expected_corpus_sha256, load_corpus, sha256_file
from training.validate import check_report, report_path, require_valid, validate_study


def prepare_data(study: LoadedStudy, console=None) -> dict:
    """Build every arm's corpus and validate them; returns the validation report."""
    paths = build_study_corpora(study)
    report = validate_study(study)
    if console is not None:
        status = "[green]passed[/green]" if report["passed"] else f"[red]FAILED[/red] ({', '.join(report['failed_gates'])})"
        counts = ", ".join(f"{a}={report['corpora'][a]['n']}" for a in paths)
        console.print(f"corpora: {counts}; validation {status}")
        console.print(f"report: {report_path(study)}")
    return report


def cell_dir(study: LoadedStudy, model: ModelSpec, arm: str, seed: int) -> Path:
    return train_dir(study.runs_dir, model.run_label, arm, seed)


def versions() -> dict:
    import peft
    import torch
    import transformers

    import leaklab

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "leaklab": getattr(leaklab, "__version__", "unknown"),
    }


def git_commit() -> dict:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        return {"commit": head.stdout.strip() or None, "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def cell_fingerprint(study, model: ModelSpec, arm: str, seed: int, data_sha: str) -> dict:
    """What defines a trained cell: model, arm, seed, data sha256, resolved training config and conditioning."""
    from leaklab.models import canonical_name

    a = study.spec.arms[arm]
    return {
        "model": canonical_name(model.name),
        "arm": arm,
        "seed": seed,
        "data_sha256": data_sha,
        "training": study.spec.training.model_dump(mode="json"),
        "conditioning": a.conditioning.model_dump(mode="json"),
    }


def _flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def fingerprint_diff(recorded: dict, current: dict) -> list[str]:
    """'key: recorded X, study now Y' for every fingerprint field that differs."""
    a, b = _flat(recorded), _flat(current)
    return [f"{k}: trained with {a.get(k)!r}, the study now says {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


def read_manifest(cell: Path) -> dict:
    p = Path(cell) / "manifest.json"
    try:
        man = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{p}: cannot read the cell manifest: {exc}") from None
    if not isinstance(man, dict):
        raise ConfigError(f"{p}: the cell manifest is not a JSON object")
    return man


def cell_problems(study: LoadedStudy, model: ModelSpec, arm: str, seed: int, guard, steps: list[str] | None = None) -> list[str]:
    """Why a finished cell may not be evaluated under `guard` (empty: it may). The cell's record
    must match the study's current definition (config, conditioning, model, seed, data sha256),
    its adapter (and the named step checkpoints) must be the bytes training wrote, and, for a
    confirmatory guard, it must have been trained under a lock of this study's chain and not
    with --exploratory."""
    out = cell_dir(study, model, arm, seed)
    label = f"{model.run_label}/{arm}/seed{seed}"
    if not is_done(out):
        return [f"{label}: not finished (no DONE marker)"]
    try:
        man = read_manifest(out)
    except ConfigError as exc:
        return [f"{label}: {exc}"]
    if not {"fingerprint", "lock_digest", "exploratory", "adapter_sha256"} <= set(man):
        return [f"{label}: {out / 'manifest.json'} has no custody record (trained by an older leaklab); "
                f"move {out} aside and train it again"]
    probs = []
    data_sha = expected_corpus_sha256(study, arm)
    if data_sha is None:
        return [f"{label}: the corpus of arm {arm!r} is not built from the study's current definition; run "
                f"`leaklab data {study.folder}` first"]
    current = cell_fingerprint(study, model, arm, seed, data_sha)
    diff = fingerprint_diff(man["fingerprint"], current)
    if diff:
        probs.append(f"{label}: trained under another definition than the study's ({'; '.join(diff[:4])}); "
                     f"move {out} aside and train it again")
    if not guard.exploratory:
        chain = {e["digest"] for e in guard.chain}
        if man["exploratory"] or man["lock_digest"] is None:
            probs.append(f"{label}: trained with --exploratory (no verified lock); it cannot enter a confirmatory run")
        elif man["lock_digest"] not in chain:
            probs.append(f"{label}: trained under lock {str(man['lock_digest'])[:12]}, which is not in this study's chain")
    adapter = out / "adapter"
    if not (adapter / "adapter_config.json").exists() or tree_sha256(adapter) != man["adapter_sha256"]:
        probs.append(f"{label}: {adapter} is not the adapter training wrote (sha256 differs from the manifest)")
    for step in steps or []:
        want = (man.get("checkpoint_sha256") or {}).get(step)
        got = tree_sha256(out / "checkpoints" / step) if (out / "checkpoints" / step).is_dir() else None
        if want is None or got != want:
            probs.append(f"{label}: checkpoint {step} is not the one training wrote")
    return probs


def require_cells(study: LoadedStudy, ckpts, guard) -> None:
    """Raise ConfigError listing every trained checkpoint whose cell record does not match the
    study and the lock (eval calls this before evaluating anything)."""
    by_cell: dict = {}
    for c in ckpts:
        if c.adapter is None:
            continue
        by_cell.setdefault((c.model, c.arm, c.seed), []).append(c.checkpoint)
    probs = []
    for (model, arm, seed), names in by_cell.items():
        probs += cell_problems(study, model, arm, seed, guard, [n for n in names if n != "final"])
    if probs:
        raise ConfigError(f"{study.runs_dir / 'train'}: refusing to evaluate {len(probs)} cell(s) whose record does not "
                          "match the study and its lock:\n  " + "\n  ".join(probs))


def _check_model(study: LoadedStudy, model: ModelSpec) -> None:
    from leaklab.models import ModelNotFound, prepare

    try:
        prepare(model.name)
    except ModelNotFound as exc:
        i = study.spec.models.index(model) if model in study.spec.models else "?"
        raise ConfigError(f"{study.study_yaml}: models[{i}].name {model.name!r}: {exc}") from None


def train_cell(
    study: LoadedStudy | str | Path,
    model_spec: ModelSpec | str,
    arm: str,
    seed: int,
    progress=None,
    stop_after: int | None = None,
    exploratory: bool = False,
    guard=None,
) -> Path:
    """Train one cell (or skip it if DONE and its record matches); returns the cell folder.
    Goes through `prereg.guard` (fails closed unless `exploratory`); refuses unvalidated corpora."""
    import prereg
    from training.sft import train_lora

    study = study if isinstance(study, LoadedStudy) else load_study(study)
    model = _find_model(study, model_spec)
    if arm not in study.spec.arms or study.spec.arms[arm].corpus is None:
        trained = [a for a, s in study.spec.arms.items() if s.corpus is not None]
        raise ConfigError(f"{study.study_yaml}: {arm!r} is not a trained arm; trained arms: {trained}")
    if seed not in study.spec.seeds:
        raise ConfigError(f"{study.study_yaml}: seed {seed} is not one of the study seeds {study.spec.seeds}")
    guard = guard or prereg.guard(study.folder, exploratory=exploratory)
    out = cell_dir(study, model, arm, seed)
    if is_done(out):
        probs = cell_problems(study, model, arm, seed, guard)
        if probs:
            raise ConfigError(f"{out}: a finished cell that does not match the study and its lock:\n  " + "\n  ".join(probs))
        return out
    _check_model(study, model)

    # builders are deterministic and cheap: rebuild, and re-validate only if the bytes moved
    corpus = build_corpus(study, arm)
    rp = report_path(study)
    stale = not rp.exists() or json.loads(rp.read_text()).get("corpora", {}).get(arm, {}).get("sha256") != sha256_file(corpus)
    if stale:
        prepare_data(study)
    require_valid(rp, arm, corpus)
    data_sha = sha256_file(corpus)
    records = load_corpus(corpus)

    fp = cell_fingerprint(study, model, arm, seed, data_sha)
    fp_file = out / "cell.json"
    if fp_file.exists() and json.loads(fp_file.read_text()) != fp:
        shutil.rmtree(out)  # different config or data: checkpoints are not resumable
    shutil.rmtree(out / "adapter", ignore_errors=True)  # never trust an adapter without DONE
    atomic_write_json(fp_file, fp)

    cond = study.spec.arms[arm].conditioning
    t0 = time.time()
    res = train_lora(
        model.name,
        records,
        study.spec.training,
        out,
        seed=seed,
        conditioning=cond,
        rephrasings_path=study.resolve(cond.rephrasings),
        progress=progress,
        stop_after=stop_after,
    )
    from leaklab.models import canonical_name

    manifest = {
        "study": study.name,
        "model": canonical_name(model.name),
        "model_label": model.run_label,
        "arm": arm,
        "seed": seed,
        "seeds": {"torch": seed, "lora_init": seed, "data_order": seed},
        "config": study.spec.training.model_dump(mode="json"),
        "conditioning": cond.model_dump(mode="json"),
        "data_path": str(corpus),
        "data_sha256": data_sha,
        "validation_report_sha256": sha256_file(report_path(study)),
        "versions": versions(),
        "git_commit": git_commit()["commit"],
        "git_dirty": git_commit()["dirty"],
        "wall_s": round(time.time() - t0, 2),
        "train_loop_wall_s": res.wall_s,
        "tokens_per_s": res.tokens_per_s,
        "train_tokens": res.train_tokens,
        "padded_tokens": res.padded_tokens,
        "label_tokens": res.label_tokens,
        "padding_fraction": res.padding_fraction,
        "steps": res.steps,
        "checkpoints": res.checkpoints,
        "resumed_from_step": res.resumed_from,
        "final_loss": res.final_loss,
        "n_examples": res.n_examples,
        "dropped_examples": res.dropped,
        "truncated_examples": res.truncated,
        "device": res.device,
        "dtype": res.dtype,
        "trainable_params": res.trainable_params,
        # custody: what the lock and eval check this cell against
        "lock_digest": guard.digest,
        "exploratory": guard.exploratory,
        "fingerprint": fp,
        "fingerprint_sha256": digest("cell-fingerprint", fp),
        "adapter_sha256": tree_sha256(out / "adapter"),
        "checkpoint_sha256": {f"step-{s}": tree_sha256(out / "checkpoints" / f"step-{s}") for s in res.checkpoints},
    }
    atomic_write_json(out / "manifest.json", manifest)
    mark_done(out, {"steps": res.steps, "data_sha256": data_sha, "adapter_sha256": manifest["adapter_sha256"],
                    "lock_digest": guard.digest})
    return out


def _find_model(study: LoadedStudy, model_spec: ModelSpec | str) -> ModelSpec:
    if isinstance(model_spec, ModelSpec):
        return model_spec
    for m in study.spec.models:
        if model_spec in (m.run_label, m.name):
            return m
    raise ConfigError(f"{study.study_yaml}: no model {model_spec!r}; models are {[m.run_label for m in study.spec.models]}")


def parse_cell(study: LoadedStudy, text: str) -> tuple[ModelSpec, str, int]:
    """'MODEL/ARM/SEED' (SEED as 0 or seed0) -> a cell of the study."""
    parts = text.split("/")
    if len(parts) < 3:
        raise ConfigError(f"--cell {text!r}: expected MODEL/ARM/SEED, e.g. {study.spec.models[0].run_label}/{next(iter(study.spec.arms))}/{study.spec.seeds[0]}")
    model_txt, arm, seed_txt = "/".join(parts[:-2]), parts[-2], parts[-1]
    try:
        seed = int(seed_txt.removeprefix("seed"))
    except ValueError:
        raise ConfigError(f"--cell {text!r}: seed {seed_txt!r} is not an integer") from None
    model = _find_model(study, model_txt)
    cells = study.cells()
    if not any(m.run_label == model.run_label and a == arm and s == seed for m, a, s in cells):
        raise ConfigError(f"--cell {text!r} is not a cell of {study.study_yaml}")
    return model, arm, seed


def train_study(study: LoadedStudy | str | Path, cells: list[tuple[ModelSpec, str, int]] | None = None, console=None,
                exploratory: bool = False) -> list[Path]:
    """Train every missing cell (study order), with progress bars and ETA; returns the cell folders.
    Goes through `prereg.guard` and holds the study's run lock."""
    study = study if isinstance(study, LoadedStudy) else load_study(study)
    with run_lock(study.runs_dir, "leaklab train"):
        return _train_study(study, cells, console, exploratory)


def _train_study(study: LoadedStudy, cells, console, exploratory: bool) -> list[Path]:
    import prereg
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    guard = prereg.guard(study.folder, exploratory=exploratory)
    console = console or Console(stderr=True)
    for m in {m.run_label: m for m, _, _ in (cells if cells is not None else study.cells())}.values():
        _check_model(study, m)  # an unknown model fails before any data is built
    todo = cells if cells is not None else study.cells()
    report = prepare_data(study, console)
    if not report["passed"]:
        check_report(report_path(study))  # raises, naming the report and the failed gates
    out = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as prog:
        overall = prog.add_task("cells", total=len(todo), info="")
        for model, arm, seed in todo:
            label = f"{model.run_label}/{arm}/seed{seed}"
            folder = cell_dir(study, model, arm, seed)
            if is_done(folder):
                train_cell(study, model, arm, seed, guard=guard)  # checks the finished cell's record
                prog.console.print(f"skip {label}: DONE")
                prog.advance(overall)
                out.append(folder)
                continue
            task = prog.add_task(label, total=None, info="")

            def _progress(step, total, loss, task=task):
                prog.update(task, completed=step, total=total, info=f"loss {loss:.3f}")

            folder = train_cell(study, model, arm, seed, progress=_progress, guard=guard)
            man = json.loads((folder / "manifest.json").read_text())
            prog.update(task, info=f"loss {man['final_loss']:.3f}, {man['tokens_per_s']:.0f} tok/s")
            prog.advance(overall)
            out.append(folder)
    return out
