"""Where matrix cells run: sequentially on this machine, or as Ray tasks on a cluster.

A unit of work is one training cell (model x arm x seed) or one eval checkpoint. Both
executors call the same cell functions, which write into the same run store with atomic
writes and DONE markers, so a unit is never trained twice or left half-written: a retried or
re-submitted unit either finds DONE and returns, or resumes from its last checkpoint.

Ray is optional (`pip install leaklab[ray]`). On a multi-node cluster `runs/` must be on a
filesystem every node sees (set $LEAKLAB_RUNS to it); the environment variables leaklab
reads are forwarded to the workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

FORWARDED_ENV = ["LEAKLAB_RUNS", "LEAKLAB_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "LEAKLAB_TEST_CRASH_ONCE"]


@dataclass(frozen=True)
class TrainUnit:
    study_folder: str
    model_label: str
    arm: str
    seed: int
    exploratory: bool = False

    @property
    def label(self) -> str:
        return f"train {self.model_label}/{self.arm}/seed{self.seed}"


@dataclass(frozen=True)
class EvalUnit:
    study_folder: str
    checkpoint_label: str
    exploratory: bool = False

    @property
    def label(self) -> str:
        return f"eval {self.checkpoint_label}"


def _maybe_crash_once(unit_label: str) -> None:
    """Test hook: kill this worker process once (simulates losing a worker mid-cell)."""
    marker_dir = os.environ.get("LEAKLAB_TEST_CRASH_ONCE")
    if not marker_dir:
        return
    marker = Path(marker_dir) / (unit_label.replace("/", "_").replace(" ", "_") + ".crashed")
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(os.getpid()))
        os._exit(137)


def run_train_unit(unit: TrainUnit) -> str:
    """Train one cell (no-op when it is DONE). Runs in-process or inside a Ray worker."""
    from leaklab.study import load_study
    from training.matrix import train_cell

    study = load_study(unit.study_folder)
    model = next(m for m in study.spec.models if m.run_label == unit.model_label)
    _maybe_crash_once(unit.label)
    return str(train_cell(study, model, unit.arm, unit.seed, exploratory=unit.exploratory))


def run_eval_unit(unit: EvalUnit) -> str:
    """Evaluate one checkpoint's full eval plan (resumable Inspect eval set)."""
    from leaklab.evaluate import checkpoints, run_eval
    from leaklab.study import load_study

    study = load_study(unit.study_folder)
    _maybe_crash_once(unit.label)
    dirs = run_eval(study, exploratory=unit.exploratory, only_labels=[unit.checkpoint_label])
    return str(dirs[0]) if dirs else ""


@dataclass
class LocalExecutor:
    name: Literal["local"] = "local"

    def map(self, fn: Callable, units: list, progress: Callable[[str], None] | None = None) -> list:
        out = []
        for i, unit in enumerate(units, 1):
            if progress:
                progress(f"{unit.label} ({i}/{len(units)})")
            out.append(fn(unit))
        return out


@dataclass
class RayExecutor:
    """One Ray task per unit with a resource request; retried when its worker dies."""

    address: str | None = None
    num_cpus: int | None = None  # for a local cluster started here
    cpus_per_unit: float = 1.0
    gpus_per_unit: float = 0.0
    memory_per_unit_gb: float | None = None
    max_retries: int = 3
    name: Literal["ray"] = "ray"
    _started: bool = field(default=False, repr=False)

    def _init(self):
        try:
            import ray
        except ImportError as exc:
            raise RuntimeError("the Ray executor needs Ray: pip install 'leaklab[ray]'") from exc
        if not ray.is_initialized():
            env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
            repo = str(Path(__file__).resolve().parent.parent)
            env["PYTHONPATH"] = os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
            ray.init(
                address=self.address,
                num_cpus=self.num_cpus if self.address is None else None,
                runtime_env={"env_vars": env},
                include_dashboard=False,
                log_to_driver=True,
                configure_logging=False,
            )
            self._started = True
        return ray

    def map(self, fn: Callable, units: list, progress: Callable[[str], None] | None = None) -> list:
        ray = self._init()
        opts = {"num_cpus": self.cpus_per_unit, "num_gpus": self.gpus_per_unit, "max_retries": self.max_retries}
        if self.memory_per_unit_gb:
            opts["memory"] = int(self.memory_per_unit_gb * 1024**3)
        remote = ray.remote(fn).options(**opts)
        refs = {remote.remote(u): u for u in units}
        results: dict = {}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                unit = refs[ref]
                results[unit] = ray.get(ref)  # raises if retries were exhausted
                if progress:
                    progress(f"{unit.label} finished ({len(results)}/{len(units)})")
        return [results[u] for u in units]

    def shutdown(self):
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


def make_executor(kind: str = "local", address: str | None = None, **kwargs):
    if kind == "local":
        return LocalExecutor()
    if kind == "ray":
        return RayExecutor(address=address, **kwargs)
    raise ValueError(f"unknown executor {kind!r}: use 'local' or 'ray'")
