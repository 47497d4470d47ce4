"""`leaklab eval`: every task of a study's eval plan against every checkpoint, as Inspect eval sets.

One eval set per checkpoint (base model, each trained cell's final adapter, optionally the
intermediate checkpoints), logged under `runs/<study>/logs/<model>/<arm>/<seed>/<checkpoint>/`.
Inspect's eval_set makes each folder resumable: a rerun skips tasks whose logs are complete.
Every log carries the lock digest in its eval metadata (`leaklab.lock_digest`), so analysis
can refuse logs produced under another preregistration.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from leaklab.runstore import is_done, logs_dir, train_dir
from leaklab.study import REPO_ROOT, Conditioning, EvalEntry, LoadedStudy, ModelSpec
from leaklab.yamlio import ConfigError


@dataclass(frozen=True)
class Checkpoint:
    """One model state to evaluate: the base model or a trained adapter (final or step-N)."""

    model: ModelSpec
    arm: str  # "base" for the untrained model
    seed: int | None
    checkpoint: str  # "final" or "step-N"
    adapter: Path | None

    @property
    def label(self) -> str:
        if self.arm == "base":
            return f"{self.model.run_label}/base"
        return f"{self.model.run_label}/{self.arm}/seed{self.seed}/{self.checkpoint}"

    def log_dir(self, study_runs: Path) -> Path:
        return logs_dir(study_runs) / self.label


def checkpoints(study: LoadedStudy, include_steps: bool = False, only_trained: bool = False) -> list[Checkpoint]:
    """Base models (if the study evaluates them) then every finished cell; unfinished cells are skipped."""
    out: list[Checkpoint] = []
    if study.spec.eval_base_model and not only_trained:
        out += [Checkpoint(m, "base", None, "final", None) for m in study.spec.models]
    for model, arm, seed in study.cells():
        cell = train_dir(study.runs_dir, model.run_label, arm, seed)
        if not is_done(cell):
            continue
        out.append(Checkpoint(model, arm, seed, "final", cell / "adapter"))
        if include_steps:
            for step_dir in sorted((cell / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1])):
                adapter = step_dir / "adapter" if (step_dir / "adapter").exists() else step_dir
                if (adapter / "adapter_config.json").exists():
                    out.append(Checkpoint(model, arm, seed, step_dir.name, adapter))
    return out


def missing_cells(study: LoadedStudy) -> list[str]:
    return [
        f"{m.run_label}/{arm}/seed{seed}"
        for m, arm, seed in study.cells()
        if not is_done(train_dir(study.runs_dir, m.run_label, arm, seed))
    ]


def load_task_function(spec: str, study_folder: Path | None = None) -> Callable[..., Any]:
    """Resolve "tasks/stance.py@letter_logprob" (or "pkg.module@fn") to the @task function. A
    relative file is looked up in the repository, then in the study folder (as the lock's
    `prereg.taskinfo` does), so a study can ship its own task file."""
    if "@" not in spec:
        raise ConfigError(f"eval task {spec!r}: expected 'path/to/file.py@task_name'")
    where, name = spec.rsplit("@", 1)
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_absolute():
            in_study = Path(study_folder) / path if study_folder is not None else None
            path = in_study if not (REPO_ROOT / path).exists() and in_study is not None and in_study.exists() else REPO_ROOT / path
        if not path.exists():
            raise ConfigError(f"eval task {spec!r}: file {path} not found")
        rel = path.resolve().relative_to(REPO_ROOT) if path.resolve().is_relative_to(REPO_ROOT) else None
        if rel is not None and (REPO_ROOT / rel.parts[0] / "__init__.py").exists():
            module = importlib.import_module(".".join(rel.with_suffix("").parts))
        else:
            mspec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    fn = getattr(module, name, None)
    if fn is None:
        raise ConfigError(f"eval task {spec!r}: no task named {name!r} in {where}")
    return fn


def _resolve_arg(study: LoadedStudy, value: Any) -> Any:
    """Study-relative file paths in task args become absolute; `data/...` stays as written."""
    if isinstance(value, str) and not value.startswith("data/") and ("/" in value or value.endswith((".jsonl", ".yaml", ".txt"))):
        candidate = study.resolve(value)
        if candidate is not None and candidate.exists():
            return str(candidate)
    return value


def _conditioning_dict(study: LoadedStudy, cond: Conditioning | None) -> dict | None:
    if cond is None:
        return None
    data = cond.model_dump()
    if cond.rephrasings:
        data["rephrasings"] = str(study.resolve(cond.rephrasings))
    return data


def eval_conditions_for(study: LoadedStudy, ckpt: Checkpoint, names: list[str]) -> list[tuple[str, dict | None]]:
    """(condition name, conditioning dict) pairs for this checkpoint.

    An `arm_training` condition uses the arm's own training framing; for the base model it
    expands to one condition per trained arm with a non-empty framing, named `training@<arm>`,
    which is what elicitation (base with prefix - base without) needs.
    """
    declared = {c.name: c for c in study.spec.eval_conditions}
    out: list[tuple[str, dict | None]] = []
    for name in names:
        c = declared[name]
        if not c.arm_training:
            out.append((name, _conditioning_dict(study, c.conditioning)))
            continue
        if ckpt.arm != "base":
            out.append((name, _conditioning_dict(study, study.spec.arms[ckpt.arm].conditioning)))
            continue
        for arm_name, arm in study.spec.arms.items():
            cond = arm.conditioning
            if cond.system_prompt or cond.prefix_mode != "none":
                out.append((f"{name}@{arm_name}", _conditioning_dict(study, cond)))
    return out


def build_tasks(study: LoadedStudy, ckpt: Checkpoint, entries: list[EvalEntry], extra_args: dict | None = None) -> list:
    """Instantiate the Inspect tasks of `entries` for one checkpoint, every condition."""
    from inspect_ai import task_with
    from inspect_ai.model import GenerateConfig

    tasks = []
    for entry in entries:
        fn = load_task_function(entry.task, study.folder)
        for cond_name, cond in eval_conditions_for(study, ckpt, entry.conditions):
            args = {k: _resolve_arg(study, v) for k, v in entry.args.items()}
            args.update(item_set=entry.item_set, condition=cond_name, conditioning=cond, **(extra_args or {}))
            try:
                task = fn(**args)
            except TypeError as exc:
                raise ConfigError(f"{study.study_yaml}: eval task {entry.task}: bad args {sorted(args)}: {exc}") from exc
            overrides: dict[str, Any] = {}
            gen = {k: v for k, v in {"temperature": entry.temperature, "max_tokens": entry.max_tokens,
                                     "seed": entry.seed}.items() if v is not None}
            if gen:
                overrides["config"] = task.config.merge(GenerateConfig(**gen))
            if entry.epochs != 1:
                overrides["epochs"] = entry.epochs
            if entry.grader:
                overrides["model_roles"] = {"grader": entry.grader}
            tasks.append(task_with(task, **overrides) if overrides else task)
    return tasks


def unseeded_sampling_entries(study: LoadedStudy) -> list[str]:
    """The eval entries that sample (temperature > 0, from the entry, its args or the task's default)
    with no generation seed: their answers differ on every run of the study, even on identical
    adapters, so a reader cannot reproduce its numbers (`prereg check` lists them)."""
    import inspect as pyinspect

    out = []
    for i, entry in enumerate(study.spec.eval):
        if entry.seed is not None:
            continue
        temperature = entry.temperature if entry.temperature is not None else entry.args.get("temperature")
        if temperature is None:
            param = pyinspect.signature(load_task_function(entry.task, study.folder)).parameters.get("temperature")
            temperature = None if param is None or param.default is pyinspect.Parameter.empty else param.default
        if temperature:
            out.append(f"eval[{i}] {entry.task} ({entry.item_set}): temperature {temperature:g}")
    return out


def model_for(study: LoadedStudy, ckpt: Checkpoint) -> tuple[str, dict]:
    """Inspect model name and model_args for a checkpoint under the study's backend."""
    if study.spec.backend == "vllm":
        from leaklab.models import prepare

        base = str(prepare(ckpt.model.name))
        return (f"vllm/{base}:{Path(ckpt.adapter).resolve()}" if ckpt.adapter else f"vllm/{base}"), {}
    return f"leaklab/{ckpt.model.name}", ({"adapter": str(ckpt.adapter)} if ckpt.adapter else {})


def eval_metadata(study: LoadedStudy, ckpt: Checkpoint, digest: str | None, exploratory: bool) -> dict:
    return {
        "leaklab": {
            "study": study.name,
            "lock_digest": digest,
            "exploratory": exploratory,
            "model": ckpt.model.name,
            "model_label": ckpt.model.run_label,
            "arm": ckpt.arm,
            "seed": ckpt.seed,
            "checkpoint": ckpt.checkpoint,
            "adapter": str(ckpt.adapter) if ckpt.adapter else None,
        }
    }


def entries_in_order(study: LoadedStudy, item_sets: list[str] | None = None) -> list[EvalEntry]:
    """Source items (manipulation check) first, then every other item set in plan order; entries on
    the same items run back to back (e.g. the forced choice right after the letter log-probability
    of the same prompts), so the provider's work-sharing cache still holds their prompt states."""
    entries = [e for e in study.spec.eval if item_sets is None or e.item_set in item_sets]
    first: dict[tuple, int] = {}
    for i, e in enumerate(entries):
        first.setdefault((e.item_set, str(e.args.get("items"))), i)
    return sorted(entries, key=lambda e: (0 if e.item_set == "source" else 1, first[(e.item_set, str(e.args.get("items")))]))


@contextmanager
def _package_scan_once():
    """While Inspect opens each task's log it looks up the installed distribution that ships the
    task; for a module whose top-level name is not a distribution (ours: `tasks`) that means
    `importlib.metadata.packages_distributions()`, a scan of every installed package's file list
    (0.4 s here, a third of a small checkpoint's eval), once per task. Nothing is installed while
    we evaluate, so the scan's result is reused (for the rest of the process)."""
    try:
        from inspect_ai._util import package as inspect_package
    except ImportError:  # Inspect moved it: evaluate as is, only slower
        yield
        return
    original = getattr(inspect_package, "packages_distributions", None)
    if original is None:
        yield
        return
    inspect_package.packages_distributions = _packages_distributions_once
    try:
        yield
    finally:
        inspect_package.packages_distributions = original


@functools.cache
def _packages_distributions_once() -> dict[str, list[str]]:
    from importlib.metadata import packages_distributions

    return packages_distributions()


# Concurrent requests per eval set: one full provider batch (leaklab.provider.DEFAULT_MAX_BATCH). The
# demo's tasks on 2 checkpoints took 52.7-53.6 s at 96 against 68.4-72.7 s at 32, with identical
# answers and scores; 192 was no faster than 96.
EVAL_MAX_CONNECTIONS = 96


def eval_checkpoint(tasks: list, log_dir: Path, model: str, model_args: dict, *, base_url: str | None = None,
                    metadata: dict | None = None, limit: int | None = None, max_connections: int = EVAL_MAX_CONNECTIONS,
                    scan_packages_once: bool = True, max_tasks: int | None = None) -> bool:
    """One checkpoint's tasks as one Inspect eval set in `log_dir` (resumable); True when complete.
    `scan_packages_once=False` lets Inspect scan the installed packages per task, as it does
    alone, and `max_tasks=1` runs the tasks one after another, as `leaklab eval` did before
    (benchmarks/eval_throughput.py measures both against the defaults)."""
    from inspect_ai import eval_set

    with _package_scan_once() if scan_packages_once else nullcontext():
        ok, _ = eval_set(
            tasks,
            log_dir=str(log_dir),
            model=model,
            model_args=model_args,
            model_base_url=base_url,
            metadata=metadata,
            limit=limit,
            max_connections=max_connections,
            # every task of the checkpoint at once: requests with the same generation settings
            # (e.g. the trait answers and the fluency answers) then share the provider's batches;
            # per-request seeds keep each answer independent of what it was batched with
            max_tasks=max_tasks or len(tasks),
            retry_attempts=1,
            display="none",
            log_level="warning",
            fail_on_error=False,
        )
    return ok


def run_eval(
    study: LoadedStudy,
    exploratory: bool = False,
    item_sets: list[str] | None = None,
    include_steps: bool = False,
    limit: int | None = None,
    progress: Callable[[str], None] | None = None,
    max_connections: int = EVAL_MAX_CONNECTIONS,
    only_labels: list[str] | None = None,
    vllm_endpoints: dict | None = None,
) -> list[Path]:
    """Evaluate every checkpoint; returns the log folders. Goes through prereg.guard first.
    Under `backend: vllm` one vLLM server per base model serves it (leaklab.vllm_server), or
    the running server named in `vllm_endpoints` ({prepared base folder: Endpoint})."""
    import prereg

    from leaklab.vllm_server import eval_servers

    guard = prereg.guard(study.folder, exploratory=exploratory)
    entries = entries_in_order(study, item_sets)
    if not entries:
        raise ConfigError(f"{study.study_yaml}: no eval entries for item sets {item_sets}")
    done_dirs = []
    ckpts = checkpoints(study, include_steps=include_steps)
    if only_labels is not None:
        unknown = set(only_labels) - {c.label for c in ckpts}
        if unknown:
            raise ConfigError(f"no finished checkpoint(s) {sorted(unknown)} in study {study.name}")
        ckpts = [c for c in ckpts if c.label in only_labels]
    from prereg.ledger import ledger_dir
    from prereg.logs import describe_failed_eval
    from training.matrix import require_cells

    require_cells(study, ckpts, guard)  # every adapter's cell record matches the study and the lock
    servers, ckpts = eval_servers(study, ckpts, vllm_endpoints)  # starts nothing unless backend: vllm
    for i, ckpt in enumerate(ckpts, 1):
        if progress:
            progress(f"eval {i}/{len(ckpts)}: {ckpt.label}")
        tasks = build_tasks(study, ckpt, entries)
        model, model_args = model_for(study, ckpt)
        server = servers.for_checkpoint(ckpt)  # None unless backend: vllm
        log_dir = ckpt.log_dir(study.runs_dir)
        ok = eval_checkpoint(tasks, log_dir, model, model_args, base_url=server.base_url if server else None,
                             metadata=eval_metadata(study, ckpt, guard.digest, guard.exploratory), limit=limit,
                             max_connections=max_connections)
        if not ok:
            servers.close()
            raise ConfigError(f"{log_dir}: evaluation of {ckpt.label} did not complete: {describe_failed_eval(log_dir)} "
                              "(rerun to resume)")
        ledger_dir(study, log_dir)  # each log with its sha256, its adapter's and its cell record's
        done_dirs.append(log_dir)
    servers.close()
    return done_dirs


def eval_status(study: LoadedStudy) -> list[dict]:
    """Per checkpoint: how many eval logs are complete (status 'success')."""
    from inspect_ai.log import list_eval_logs, read_eval_log

    rows = []
    for ckpt in checkpoints(study):
        d = ckpt.log_dir(study.runs_dir)
        n_ok = n_all = 0
        if d.exists():
            for info in list_eval_logs(str(d)):
                n_all += 1
                if read_eval_log(info, header_only=True).status == "success":
                    n_ok += 1
        rows.append({"checkpoint": ckpt.label, "logs_ok": n_ok, "logs": n_all})
    return rows

