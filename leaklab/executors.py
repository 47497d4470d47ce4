"""Where matrix cells run: sequentially on this machine, or as Ray tasks on a cluster.

A unit of work is one training cell (model x arm x seed) or one eval checkpoint. Both
executors call the same cell functions, which write into the same run store with atomic
writes and DONE markers, so a unit is never trained twice or left half-written: a retried or
re-submitted unit either finds DONE and returns, or resumes from its last checkpoint.

Under `backend: vllm` the Ray executor starts one vLLM engine per base model (a `VLLMEngine`
actor) with every adapter of that base, and that base's eval units query it, instead of each
checkpoint starting its own server (`share_vllm_engines=False` restores that).

Ray is optional (`pip install leaklab[ray]`). On a multi-node cluster `runs/` must be on a
filesystem every node sees (set $LEAKLAB_RUNS to it); the environment variables leaklab
reads are forwarded to the workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

FORWARDED_ENV = ["LEAKLAB_RUNS", "LEAKLAB_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "LEAKLAB_TEST_CRASH_ONCE",
                 "LEAKLAB_VLLM_ARGS", "VLLM_API_KEY", "VLLM_CPU_KVCACHE_SPACE"]


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
    # (base model folder, base_url, api_key) of a vLLM engine shared by this base's units
    vllm_endpoint: tuple[str, str, str] | None = None

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
    endpoints = None
    if unit.vllm_endpoint is not None:
        from leaklab.vllm_server import Endpoint

        endpoints = {unit.vllm_endpoint[0]: Endpoint(*unit.vllm_endpoint)}
    dirs = run_eval(study, exploratory=unit.exploratory, only_labels=[unit.checkpoint_label], vllm_endpoints=endpoints)
    return str(dirs[0]) if dirs else ""


class VLLMEngine:
    """Ray actor owning one vLLM server for a base model and its adapters (leaklab.vllm_server)."""

    def __init__(self, base: str, adapters: list[str]) -> None:
        from leaklab.vllm_server import VLLMServer

        self.server = VLLMServer(base, adapters).start()

    def info(self) -> tuple[tuple[str, str, str], str, float]:
        import ray

        s = self.server
        return (s.model, s.base_url, str(s.api_key)), ray.get_runtime_context().get_node_id(), float(s.startup_s or 0.0)

    def stop(self) -> None:
        self.server.stop()


def vllm_engine_groups(units: list) -> dict[str, list[str]]:
    """{base model folder: [checkpoint labels]} when the units' study evaluates on vLLM, else {}."""
    from leaklab.evaluate import checkpoints
    from leaklab.models import prepare
    from leaklab.study import load_study

    if not units or len({u.study_folder for u in units}) != 1:
        return {}
    study = load_study(units[0].study_folder)
    if study.spec.backend != "vllm":
        return {}
    by_label = {c.label: c for c in checkpoints(study)}
    groups: dict[str, list[str]] = {}
    for u in units:
        ck = by_label.get(u.checkpoint_label)
        if ck is None:
            return {}  # let run_eval_unit report the unknown checkpoint
        groups.setdefault(str(prepare(ck.model.name)), []).append(u.checkpoint_label)
    return groups


def vllm_adapters(study_folder: str, labels: list[str]) -> list[str]:
    from leaklab.evaluate import checkpoints
    from leaklab.study import load_study

    return [str(c.adapter) for c in checkpoints(load_study(study_folder)) if c.label in labels and c.adapter]


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
    share_vllm_engines: bool = True  # backend: vllm: one engine per base model, not one per checkpoint
    cpus_per_engine: float = 1.0
    gpus_per_engine: float = 0.0
    name: Literal["ray"] = "ray"
    engine_starts: list = field(default_factory=list, repr=False)
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
        if fn is run_eval_unit and self.share_vllm_engines:
            groups = vllm_engine_groups(units)
            if groups:
                return self._map_shared_engines(units, groups, progress)
        return self._run(fn, units, progress)

    def _run(self, fn: Callable, units: list, progress, node_id: str | None = None, done_before: int = 0,
             total: int | None = None) -> list:
        import ray

        opts = {"num_cpus": self.cpus_per_unit, "num_gpus": self.gpus_per_unit, "max_retries": self.max_retries}
        if self.memory_per_unit_gb:
            opts["memory"] = int(self.memory_per_unit_gb * 1024**3)
        if node_id is not None:  # next to its vLLM engine, which listens on 127.0.0.1 only
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
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
                    progress(f"{unit.label} finished ({done_before + len(results)}/{total or len(units)})")
        return [results[u] for u in units]

    def _map_shared_engines(self, units: list, groups: dict[str, list[str]], progress) -> list:
        """Eval units under `backend: vllm`: one engine (a Ray actor owning a vLLM server) per
        base model, started once with every adapter of that base; the base's units run next to
        it and query it. One base at a time, so a small machine holds one engine."""
        import ray

        by_label = {u.checkpoint_label: u for u in units}
        results: dict = {}
        engine = ray.remote(VLLMEngine).options(num_cpus=self.cpus_per_engine, num_gpus=self.gpus_per_engine)
        for base, labels in groups.items():
            adapters = vllm_adapters(units[0].study_folder, labels)
            actor = engine.remote(base, adapters)
            try:
                endpoint, node_id, startup_s = ray.get(actor.info.remote())
                self.engine_starts.append({"base": base, "adapters": len(adapters), "startup_s": startup_s})
                if progress:
                    progress(f"vLLM engine for {base} up in {startup_s:.0f} s ({len(adapters)} adapters, {len(labels)} units)")
                todo = [replace(by_label[lb], vllm_endpoint=endpoint) for lb in labels]
                out = self._run(run_eval_unit, todo, progress, node_id, len(results), len(units))
                results.update({lb: r for lb, r in zip(labels, out)})
            finally:
                try:
                    ray.get(actor.stop.remote(), timeout=120)
                finally:
                    ray.kill(actor)
        return [results[u.checkpoint_label] for u in units]

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
