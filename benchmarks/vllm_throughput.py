"""The same requests through `leaklab/` (in-process) and `vllm/` (Inspect's vllm provider on a
leaklab.vllm_server), same model, same LoRA adapters; the ratio, the server's startup cost, and
(under `--parts ray`) what sharing one vLLM engine per base model saves the Ray executor.

Needs the vLLM venv (`make setup-vllm`):

    .venv-vllm/bin/python benchmarks/vllm_throughput.py                 # mix: base + 2 adapters
    .venv-vllm/bin/python benchmarks/vllm_throughput.py --quick         # 1 adapter, 4 items per task
    .venv-vllm/bin/python benchmarks/vllm_throughput.py --parts mix ray # + the Ray engine sharing

Parts:

mix   the demo study's request mix (the Inspect tasks `leaklab eval` builds for
      benchmarks/attitude_mix (the first demo's plan): letter log-probability on source and target items, forced choice on
      source items, both option orders), issued through `inspect_ai.model.get_model(...)
      .generate`, each task's requests concurrent, for the base model and `--adapters` random
      LoRA adapters (r=16): once through `leaklab/` and once through `vllm/BASE[:ADAPTER]`
      against one server started with every adapter. Prints seconds per side, the ratio, the
      server's startup time, and agreement (greedy first tokens; the largest |difference| of the
      pro/anti letter log-probabilities in the top-20 list).
ray   the eval stage of a toy attitude study (base + 3 trained cells, exploratory)
      under `--executor ray`, once with one shared vLLM engine per base model and once with a
      server per checkpoint; prints both wall times and the engine starts.

On a 2-core CPU the numbers measure the plumbing more than vLLM (its CPU kernels are not its
strength and startup dominates); quote them with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("INSPECT_LOG_LEVEL", "warning")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "tests")]


def run_mix_on(models, work, conns: int) -> tuple[float, list]:
    """Each task's requests concurrently over every model, task after task."""
    from inspect_ai.model import ChatMessageUser

    async def go():
        outs = []
        for _name, prompts, config in work:
            cfg = config.merge(type(config)(max_connections=conns))
            outs += await asyncio.gather(*[m.generate([ChatMessageUser(content=p)], config=cfg) for m in models for p in prompts])
        return outs

    t = time.perf_counter()
    outs = asyncio.run(go())
    return time.perf_counter() - t, outs


def letter_lp(out, letter: str) -> float | None:
    lp = out.choices[0].logprobs
    if lp is None or not lp.content:
        return None
    for t in lp.content[0].top_logprobs:
        if t.token.strip() == letter:
            return t.logprob
    return None


def mix(model_name: str, n_adapters: int, limit: int | None, conns: int, tmp: Path) -> None:
    from eval_throughput import demo_tasks, make_adapters, task_requests
    from inspect_ai.model import get_model

    from leaklab.models import prepare
    from leaklab.vllm_server import VLLMServer

    folder = str(prepare(model_name))
    adapters = make_adapters(model_name, tmp, n_adapters)
    _study, tasks = demo_tasks(str(REPO / "benchmarks" / "attitude_mix"), None, limit)
    work = task_requests(tasks)
    n_req = sum(len(p) for _n, p, _c in work) * (1 + n_adapters)
    print(f"mix: {model_name}, base + {n_adapters} adapters, {n_req} requests ({len(work)} tasks)")

    ours = [get_model(f"leaklab/{model_name}", device="cpu", max_batch_size=conns, memoize=False)]
    ours += [get_model(f"leaklab/{model_name}", adapter=str(a), device="cpu", max_batch_size=conns, memoize=False)
             for a in adapters]
    t_ours, o_ours = run_mix_on(ours, work, conns)
    print(f"  leaklab/  {t_ours:8.1f} s  ({n_req / t_ours:.1f} req/s)")
    del ours

    server = VLLMServer(folder, [str(a) for a in adapters])
    server.start()
    try:
        print(f"  vLLM server up in {server.startup_s:.0f} s (model load + warm-up; log {server.log_path})")
        vl = [get_model(server.inspect_model(a), base_url=server.base_url, api_key=server.api_key, memoize=False)
              for a in [None, *adapters]]
        run_mix_on(vl, work[:1], conns)  # first-request warm-up (adapter loading, kernel paths)
        t_vl, o_vl = run_mix_on(vl, work, conns)
    finally:
        server.stop()
    print(f"  vllm/     {t_vl:8.1f} s  ({n_req / t_vl:.1f} req/s)")
    print(f"  ratio leaklab/ time / vllm/ time = {t_ours / t_vl:.2f}")
    same = sum(a.completion.strip()[:1] == b.completion.strip()[:1] for a, b in zip(o_ours, o_vl))
    diffs = []
    for a, b in zip(o_ours, o_vl):
        for letter in ("A", "B"):
            la, lb = letter_lp(a, letter), letter_lp(b, letter)
            if la is not None and lb is not None:
                diffs.append(abs(la - lb))
    print(f"  agreement: first token {same}/{len(o_ours)}; max |letter logprob diff| "
          f"{max(diffs) if diffs else float('nan'):.2e} over {len(diffs)} read-outs")


def ray_sharing(model_name: str, tmp: Path) -> None:
    import subprocess

    from toy_study import PREREG, STUDY

    from leaklab.executors import EvalUnit, RayExecutor, run_eval_unit
    from leaklab.study import load_study

    study_yaml = (STUDY.replace("{name: tiny-random, label: tiny}", f"{{name: {model_name}, label: m}}")
                  .replace("seeds: [0, 1]", "seeds: [0]").replace("max_steps: 3", "max_steps: 1")
                  .replace("limit_base_items: 6", "limit_base_items: 3").replace("limit_base_items: 4", "limit_base_items: 2"))
    times = {}
    for share in (True, False):
        folder = tmp / f"ray_{share}" / "toy"
        folder.mkdir(parents=True)
        (folder / "study.yaml").write_text(study_yaml + "backend: vllm\n")
        (folder / "prereg.yaml").write_text(PREREG)
        env = dict(os.environ, LEAKLAB_RUNS=str(tmp / f"runs_{share}"))
        os.environ["LEAKLAB_RUNS"] = env["LEAKLAB_RUNS"]
        subprocess.run([sys.executable, "-m", "leaklab.cli", "run", str(folder), "--exploratory", "--stage", "data",
                        "--stage", "train"], cwd=REPO, env=env, check=True, capture_output=True)
        study = load_study(folder)
        from leaklab.evaluate import checkpoints

        units = [EvalUnit(str(folder), c.label, True) for c in checkpoints(study)]
        # 2 CPUs: shared = the engine (1) + one unit (1); unshared = one unit and its server (2)
        ex = RayExecutor(num_cpus=2, share_vllm_engines=share, cpus_per_unit=1.0 if share else 2.0)
        t = time.perf_counter()
        try:
            ex.map(run_eval_unit, units)
        finally:
            ex.shutdown()
        times[share] = time.perf_counter() - t
        starts = len(ex.engine_starts) if share else len(units)
        print(f"ray eval stage, {len(units)} checkpoints ({len(units) - 1} adapters + base), "
              f"{'one shared engine per base' if share else 'a server per checkpoint'}: {times[share]:.0f} s, "
              f"{starts} engine start(s)")
    print(f"  saving: {times[False] - times[True]:.0f} s ({times[False] / times[True]:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--adapters", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="samples per task in the mix")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--parts", nargs="+", default=["mix"], choices=["mix", "ray"])
    ap.add_argument("--quick", action="store_true", help="1 adapter, 4 samples per task")
    a = ap.parse_args()
    from leaklab.vllm_server import INSTALL_HINT, vllm_available

    if not vllm_available():
        print(f"vLLM is not installed in {sys.executable}: {INSTALL_HINT}; skipping")
        return
    if a.quick:
        a.adapters, a.limit = 1, a.limit or 4
    with tempfile.TemporaryDirectory() as d:
        if "mix" in a.parts:
            mix(a.model, a.adapters, a.limit, a.connections, Path(d))
        if "ray" in a.parts:
            ray_sharing(a.model, Path(d))


if __name__ == "__main__":
    main()
