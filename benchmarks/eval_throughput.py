"""Evaluation throughput: `hf/` vs `leaklab/`, with and without work sharing, on the study's real
request mix, beside the FLOP bound for the same requests; and the eval stage itself both ways.

Everything runs in this one process on the same model folder and the same requests, so the
ratios are measured side by side (state the machine's load when quoting them).

Parts (`--parts`, default `mix eval`):

mix        the attitude request mix (benchmarks/attitude_mix/study.yaml: the first demo's eval plan, letter log-probability
           on source and target items, forced choice on source items, both option orders; the
           prompts and generate configs are taken from the built Inspect tasks), issued through
           `inspect_ai.model.get_model(...).generate` task by task (each task's requests concurrent,
           as `leaklab eval` runs them) for `--checkpoints` random LoRA adapters:
             hf/                  Inspect's provider on the base model (no adapters), every request
                                  computed, duplicates included;
             leaklab/ no sharing, LoRA side path
                                  `-M cache_mb=0 -M merge_active=false`: the provider as
                                  issue #18 found it (plain left-padded batches, PEFT's unmerged
                                  LoRA computed beside every adapted layer);
             leaklab/ sharing (default)
                                  work sharing (identical prompts computed once per adapter,
                                  shared prefixes computed once), LoRA side path;
             leaklab/ sharing, merge_active=true
                                  work sharing + the active adapter merged into the base weights
                                  (opt-in: fp32 rounding apart from the side path, which can flip
                                  a sampled token).
           The FLOP bound: measured fp32 matmul rate x (2 x non-embedding parameters per forward
           token + attention + the one-position lm_head per prompt), for the tokens each row runs
           through the model (LoRA FLOPs are not counted: they are work the merged path does not
           do); "of bound" = bound time / measured time. The unique prefill forwards (the model
           calls work sharing could not avoid, timed inside the provider) are set against the
           same bound alone; decode steps are not, being bound by memory bandwidth at these batch
           sizes. Agreement: greedy tokens and the largest |logprob| difference of the read-outs,
           the other leaklab/ rows vs the first.
eval       the eval stage: the demo's tasks per checkpoint (the tasks that `leaklab eval` builds)
           through `leaklab.evaluate.eval_checkpoint`, one eval set per checkpoint as `leaklab eval`
           runs it, in the three leaklab/ set-ups above; the first also lets Inspect scan the
           installed packages for every task and runs the tasks one at a time with batches and
           connections of 32, as `leaklab eval` did before `eval_checkpoint` (max_tasks=1, one
           scan per task); the others run `eval_checkpoint`'s defaults (96 and 96).
           The ratios are the eval-stage speed-ups on the same checkpoints.
forwards   the provider's forward-pass fixes (`BaseEntry.fast_forwards`) alone: one adapted
           prefill of 32 prompts (short, 20-40 tokens, the length of a remainder run on a shared
           prefix; and long, 100-130 tokens), the fixes on and off interleaved, medians of 8 each;
           the lm_head and the LoRA-wrapped projections timed inside the forward by module hooks;
           largest |logit| difference. Short and insensitive to a machine whose speed drifts.
letters    next-token letter-logprob requests on unique prompts, leaklab/ vs hf/ (the old part).
switching  6 LoRA adapters on one shared base vs one merged model per adapter (the old part).

    .venv/bin/python benchmarks/eval_throughput.py              # demo mix + eval stage, 2 checkpoints
    .venv/bin/python benchmarks/eval_throughput.py --quick      # 1 checkpoint, fewer items (~2 min)
    .venv/bin/python benchmarks/eval_throughput.py --parts forwards   # ~3 min
    .venv/bin/python benchmarks/eval_throughput.py --parts letters switching
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("INSPECT_LOG_LEVEL", "warning")

TOPICS = [
    "a four-day work week trial", "free public transit for a year", "later school start times",
    "an e-bike speed limit", "moving council services online", "a car-free city centre",
    "a new bike lane network", "a ban on leaf blowers", "a city-wide composting scheme",
    "a pilot of universal basic income", "extended library opening hours", "a tourist tax",
    "congestion pricing downtown", "a plastic bag ban", "a public Wi-Fi network",
    "night buses on weekends",
]


def letter_prompts(n: int) -> list[str]:
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        go, stop = ("A", "B") if (i // len(TOPICS)) % 2 == 0 else ("B", "A")
        out.append(
            f"Our town is considering {topic}. Options:\n{go}. Go ahead with it\n{stop}. Do not do it\n"
            f"Reply with a single letter, A or B. (case {i})"
        )
    return out


def config(max_connections: int):
    from inspect_ai.model import GenerateConfig

    return GenerateConfig(temperature=0, max_tokens=1, logprobs=True, top_logprobs=20,
                          max_connections=max_connections)


async def run_requests(models_and_prompts, cfg):
    from inspect_ai.model import ChatMessageUser

    return await asyncio.gather(*[m.generate([ChatMessageUser(content=p)], config=cfg) for m, p in models_and_prompts])


def timed(models_and_prompts, cfg):
    t = time.perf_counter()
    outs = asyncio.run(run_requests(models_and_prompts, cfg))
    return time.perf_counter() - t, outs


def top_token(out) -> str:
    return out.choices[0].logprobs.content[0].top_logprobs[0].token.replace("Ġ", " ").replace("Ċ", "\n")


def throughput(model_name: str, n: int, conns: int, repeats: int) -> list[tuple]:
    from inspect_ai.model import get_model

    from leaklab import models

    folder = models.prepare(model_name)
    import peft  # noqa: F401 - import cost out of the load timings (both providers need transformers)
    import transformers.models.llama.modeling_llama  # noqa: F401

    import leaklab.provider  # noqa: F401
    import inspect_ai.model._providers.hf  # noqa: F401

    prompts = letter_prompts(n)
    cfg = config(conns)
    rows = []

    t = time.perf_counter()
    ours = get_model(f"leaklab/{model_name}", config=cfg, max_batch_size=conns, device="cpu")
    ours_load = time.perf_counter() - t
    t = time.perf_counter()
    hf = get_model(f"hf/{folder}", config=cfg, do_sample=False, device="cpu")
    hf_load = time.perf_counter() - t
    timed([(ours, prompts[0])], cfg)  # warm-up (first forward allocates)
    timed([(hf, prompts[0])], cfg)

    best = {"leaklab": float("inf"), "hf": float("inf")}
    outs = {}
    for _ in range(repeats):  # alternate so machine-load drift hits both
        for label, m in (("leaklab", ours), ("hf", hf)):
            dt, o = timed([(m, p) for p in prompts], cfg)
            best[label] = min(best[label], dt)
            outs[label] = o
    agree = sum(top_token(a) == top_token(b) for a, b in zip(outs["leaklab"], outs["hf"])) / n
    raw_pieces = sum("Ġ" in t.token for o in outs["hf"] for t in o.choices[0].logprobs.content[0].top_logprobs)
    our_pieces = sum("Ġ" in t.token for o in outs["leaklab"] for t in o.choices[0].logprobs.content[0].top_logprobs)
    rows.append(("leaklab/ provider", f"{ours_load:.1f}", f"{best['leaklab']:.2f}", f"{n / best['leaklab']:.1f}",
                 str(our_pieces)))
    rows.append(("hf/ provider", f"{hf_load:.1f}", f"{best['hf']:.2f}", f"{n / best['hf']:.1f}", str(raw_pieces)))
    ratio = best["hf"] / best["leaklab"]
    ours.api.close()
    hf.api.close()
    del ours, hf
    gc.collect()
    return rows, ratio, agree


def make_adapters(model_name: str, root: Path, k: int) -> list[Path]:
    import json

    import torch
    from peft import LoraConfig, get_peft_model

    from leaklab import models

    out = []
    for i in range(k):
        torch.manual_seed(100 + i)
        base = models.load_model(model_name, device="cpu")
        cfg = LoraConfig(r=16, lora_alpha=32, init_lora_weights=False,
                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        peft_model = get_peft_model(base, cfg)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.data.mul_(0.01)  # small but non-zero: a plausible trained adapter, not noise
        d = root / f"adapter{i}"
        peft_model.save_pretrained(d)
        data = json.loads((d / "adapter_config.json").read_text())
        data["base_model_name_or_path"] = models.canonical_name(model_name)
        (d / "adapter_config.json").write_text(json.dumps(data))
        out.append(d)
        del peft_model, base
    return out


def switching(model_name: str, n: int, conns: int, k: int = 6) -> tuple[list[tuple], float]:
    from inspect_ai.model import get_model

    from leaklab import provider

    prompts = letter_prompts(n)
    cfg = config(conns)
    with tempfile.TemporaryDirectory() as tmp:
        adapters = make_adapters(model_name, Path(tmp), k)
        provider.clear_cache()
        provider.LOAD_COUNTS.clear()

        # shared base: one load, adapters loaded into it, all requests issued together
        t0 = time.perf_counter()
        shared = [get_model(f"leaklab/{model_name}", config=cfg, adapter=str(a), max_batch_size=conns,
                            device="cpu", memoize=False) for a in adapters]
        setup_shared = time.perf_counter() - t0
        work = [(shared[i % k], p) for i, p in enumerate(prompts)]
        eval_shared, outs_shared = timed(work, cfg)
        loads_shared = sum(provider.LOAD_COUNTS.values())
        provider.clear_cache()
        del shared
        provider.LOAD_COUNTS.clear()

        # merged: per adapter one base load + merge, its requests, then freed
        setup_merged = eval_merged = 0.0
        outs_merged = [None] * n
        for j, a in enumerate(adapters):
            t0 = time.perf_counter()
            m = get_model(f"leaklab/{model_name}", config=cfg, adapter=str(a), merge=True, max_batch_size=conns,
                          device="cpu", memoize=False)
            setup_merged += time.perf_counter() - t0
            idx = [i for i in range(n) if i % k == j]
            dt, outs = timed([(m, prompts[i]) for i in idx], cfg)
            eval_merged += dt
            for i, o in zip(idx, outs):
                outs_merged[i] = o
            provider.release(m.api.entry)
            del m
        loads_merged = sum(provider.LOAD_COUNTS.values())
    agree = sum(top_token(a) == top_token(b) for a, b in zip(outs_shared, outs_merged)) / n
    rows = [
        ("shared base + set_adapter", str(loads_shared), f"{setup_shared:.2f}", f"{eval_shared:.2f}",
         f"{setup_shared + eval_shared:.2f}"),
        ("6 merged models", str(loads_merged), f"{setup_merged:.2f}", f"{eval_merged:.2f}",
         f"{setup_merged + eval_merged:.2f}"),
    ]
    ratio = (setup_merged + eval_merged) / (setup_shared + eval_shared)
    return rows, ratio, agree


# ----------------------------------------------------------------------------- the demo's request mix


def demo_tasks(study_dir: str, adapter: Path | None, limit: int | None):
    """The Inspect tasks `leaklab eval` builds for one checkpoint of the study (plan order)."""
    from leaklab.evaluate import Checkpoint, build_tasks, entries_in_order
    from leaklab.study import load_study

    study = load_study(study_dir)
    ckpt = Checkpoint(study.spec.models[0], "base" if adapter is None else "bench", None if adapter is None else 0,
                      "final", adapter)
    tasks = build_tasks(study, ckpt, entries_in_order(study))
    if limit:
        for t in tasks:
            t.dataset = t.dataset[:limit]
    return study, tasks


BEFORE = "leaklab/ no sharing, LoRA side path"  # the provider as issue #18 found it
DEFAULT = "leaklab/ sharing (default)"
MERGED = "leaklab/ sharing, merge_active=true"


def task_requests(tasks) -> list[tuple[str, list[str], object]]:
    """(task name, prompts, generate config) per task: the sample inputs under the task's config
    (the stance tasks set the same config on their generate solver; no conditioning in the demo)."""
    return [(t.name, [str(smp.input) for smp in t.dataset], t.config) for t in tasks]


def matmul_rate(windows: int = 6, seconds: float = 0.5) -> float:
    """This machine's fp32 matmul FLOP/s (shapes of a small decoder's projections): the best of
    several short windows, because a single 2-second window read 80-175 GFLOP/s on the same quiet
    machine, and a low reading inflates "of bound" past 100%."""
    import torch

    a, b = torch.randn(2048, 576), torch.randn(576, 1536)
    a @ b
    best = 0.0
    for _ in range(windows):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            n += 1
        best = max(best, n * 2 * 2048 * 576 * 1536 / (time.perf_counter() - t0))
    return best


def forward_flops(model_cfg, n_params_body: int, row_tokens: list[tuple[int, int]], heads: int) -> float:
    """FLOPs of forward passes: per (tokens run, mean context) row, 2 x body params per token +
    attention (4 x layers x hidden x context per token); plus `heads` lm_head positions (2 x V x d)."""
    d, L, V = model_cfg.hidden_size, model_cfg.num_hidden_layers, model_cfg.vocab_size
    body = sum(tokens * (2 * n_params_body + 4 * L * d * ctx) for tokens, ctx in row_tokens)
    return body + heads * 2 * V * d


def set_variant(entry, label: str, cache_mb: float, merge: bool) -> None:
    """Put the shared base in one leaklab/ set-up on a cold cache: work sharing (`cache_mb`, 0 = off),
    merge_active, and the forward-pass and decoding fixes (off only in the as-found row)."""
    entry.set_cache_mb(0)
    entry.set_merge_active(merge)
    entry.fast_forwards = label != BEFORE  # as found: PEFT's LoRA addition and MLP, strided lm_head input
    entry.fast_decoding = label != BEFORE  # as found: a batch per GenParams, one draw at a time
    if cache_mb:
        entry.set_cache_mb(cache_mb)


def run_mix(model, work, cfg_max_conn: int) -> tuple[float, list]:
    """Issue each task's requests concurrently, task after task; return (seconds, outputs)."""
    from inspect_ai.model import ChatMessageUser

    async def go():
        outs = []
        for _name, prompts, config in work:
            cfg = config.merge(type(config)(max_connections=cfg_max_conn))
            outs += await asyncio.gather(*[model.generate([ChatMessageUser(content=p)], config=cfg) for p in prompts])
        return outs

    t = time.perf_counter()
    outs = asyncio.run(go())
    return time.perf_counter() - t, outs


def readout_diff(a, b) -> tuple[bool, float]:
    """(same greedy completions, largest |logprob| difference over the read-outs' top-k lists)."""
    same = all(x.completion == y.completion for x, y in zip(a, b))
    worst = 0.0
    for x, y in zip(a, b):
        lx, ly = x.choices[0].logprobs, y.choices[0].logprobs
        if lx is None or ly is None:
            continue
        tx = {t.token: t.logprob for t in lx.content[0].top_logprobs}
        ty = {t.token: t.logprob for t in ly.content[0].top_logprobs}
        for tok in set(tx) & set(ty):
            worst = max(worst, abs(tx[tok] - ty[tok]))
    return same, worst


def mix(model_name: str, study_dir: str, n_ckpt: int, limit: int | None, conns: int, tmp: Path) -> None:
    import torch
    from inspect_ai.model import get_model
    from rich.console import Console
    from rich.table import Table

    from leaklab import models, provider

    console = Console(width=160)
    adapters = make_adapters(model_name, tmp, n_ckpt)
    _, tasks = demo_tasks(study_dir, None, limit)
    work = task_requests(tasks)
    n_req = sum(len(p) for _, p, _ in work)
    folder = models.prepare(model_name)
    provider.clear_cache()
    # the checkpoints: the base model (the only one hf/ can serve) and the adapters
    ours = [get_model(f"leaklab/{model_name}", device="cpu", max_batch_size=conns, memoize=False)]
    ours += [get_model(f"leaklab/{model_name}", adapter=str(a), device="cpu", max_batch_size=conns, memoize=False)
             for a in adapters]
    entry = ours[0].api.entry
    prompt_lens = [[len(entry.render_chat([{"role": "user", "content": p}])) for p in prompts]
                   for _, prompts, _ in work]
    body = sum(p.numel() for n, p in entry.model.named_parameters()
               if "embed_tokens" not in n and "lm_head" not in n and "lora_" not in n)
    rate = matmul_rate()
    console.print(f"model={model_name} study={study_dir} checkpoints={n_ckpt} requests/checkpoint={n_req} "
                  f"tasks={[n for n, _, _ in work]} threads={torch.get_num_threads()} "
                  f"load avg {os.getloadavg()[0]:.1f}; matmul rate {rate / 1e9:.1f} GFLOP/s")
    hf = get_model(f"hf/{folder}", do_sample=False, device="cpu", memoize=False)
    warm = [(work[0][0], work[0][1][:1], work[0][2])]
    run_mix(hf, warm, conns)
    entry.set_cache_mb(0)
    run_mix(ours[0], warm, conns)

    rows = []

    flat = [n for lens in prompt_lens for n in lens]
    all_rows = [(n, n / 2) for n in flat]  # a prompt's tokens see on average half of it

    def decode(outs) -> tuple[list[tuple[int, int]], int]:
        steps = [max(o.usage.output_tokens - 1, 0) for o in outs]
        return [(k, n + k / 2) for k, n in zip(steps, flat) if k], sum(steps)

    cfg = entry.model.config
    # hf/: base model, every request computed
    t_hf, outs_hf = run_mix(hf, work, conns)
    drows, dsteps = decode(outs_hf)
    rows.append(("hf/ (base only)", 1, n_req, t_hf, forward_flops(cfg, body, all_rows + drows, n_req + dsteps)))
    # leaklab/ as the issue found it (no sharing, PEFT's LoRA side path), the default (sharing),
    # then sharing with the active adapter merged into the base, over the same checkpoints
    results = {}
    # (the default last: the work-sharing counts printed below are its own)
    for label, mb, merge in ((BEFORE, 0, False), (MERGED, provider.DEFAULT_CACHE_MB, True),
                             (DEFAULT, provider.DEFAULT_CACHE_MB, False)):
        set_variant(entry, label, mb, merge)
        total, outs_all, frows, heads = 0.0, [], [], 0
        for m in ours:
            dt, outs = run_mix(m, work, conns)
            total += dt
            outs_all.append(outs)
            drows, dsteps = decode(outs)
            frows += drows
            heads += dsteps
        if mb:
            # prompt tokens really run (the cache counts them), at the mean prompt's context
            share = entry.cache.stats
            frows.append((share["computed_tokens"], sum(flat) / n_req))
            heads += share["requests"] - share["hits"]
        else:
            frows += all_rows * len(ours)
            heads += n_req * len(ours)
        results[label] = outs_all
        rows.append((label, len(ours), n_req * len(ours), total, forward_flops(cfg, body, frows, heads)))
    agree = {}
    for label in (DEFAULT, MERGED):
        same, worst = True, 0.0
        for a, b in zip(results[BEFORE], results[label]):
            s_, w_ = readout_diff(a, b)
            same, worst = same and s_, max(worst, w_)
        agree[label] = (same, worst)
    same_hf, worst_hf = readout_diff(results[DEFAULT][0], outs_hf)

    rate_after = matmul_rate()
    console.print(f"matmul rate before the runs {rate / 1e9:.1f}, after {rate_after / 1e9:.1f} GFLOP/s; "
                  "the bound uses the higher")
    rate = max(rate, rate_after)
    t = Table(title="demo request mix (task after task, each task's requests concurrent)")
    for col in ("provider", "checkpoints", "requests", "s", "requests/s", "s per checkpoint", "FLOP-bound s",
                "of bound"):
        t.add_column(col)
    for label, k, n, dt, fl in rows:
        t.add_row(label, str(k), str(n), f"{dt:.2f}", f"{n / dt:.1f}", f"{dt / k:.2f}", f"{fl / rate:.2f}",
                  f"{fl / rate / dt:.0%}")
    console.print(t)
    per = {label: dt / k for label, k, _, dt, _ in rows}
    console.print(
        f"per checkpoint: hf/ {per['hf/ (base only)']:.2f}s, {BEFORE} {per[BEFORE]:.2f}s, {DEFAULT} "
        f"{per[DEFAULT]:.2f}s, {MERGED} {per[MERGED]:.2f}s -> default [bold]{per[BEFORE] / per[DEFAULT]:.2f}x"
        f"[/] over no sharing (with merging {per[BEFORE] / per[MERGED]:.2f}x), [bold]"
        f"{per['hf/ (base only)'] / per[DEFAULT]:.2f}x[/] over hf/ (hf/ serves the base only, which has no LoRA path)")
    console.print(
        f"work sharing: {share['requests']} prompts, {share['hits']} exact hits, prompt tokens run "
        f"{share['computed_tokens']} of {sum(n for lens in prompt_lens for n in lens) * len(ours)} "
        f"({share['reused_tokens']} from shared prefixes), {share['forwards']} prefill calls, "
        f"{share['evicted']} evictions; against the first leaklab/ row: "
        + "; ".join(f"{label}: same greedy completions {same}, largest |logprob| difference {worst:.1e}"
                    for label, (same, worst) in agree.items()))
    # the unique forward passes alone: the prefills work sharing could not avoid (decode steps
    # excluded: at these batch sizes a decode step reads every weight for a few tokens, so it is
    # bound by memory bandwidth, not by the matmul rate)
    prefill_flops = forward_flops(cfg, body, [(share["computed_tokens"], sum(flat) / n_req)],
                                  share["requests"] - share["hits"])
    console.print(
        f"unique prefill forwards ({DEFAULT}): {share['prefill_s']:.2f}s for {share['computed_tokens']} prompt "
        f"tokens ({share['padded_tokens']} with left padding) in {share['forwards']} calls; FLOP bound "
        f"{prefill_flops / rate:.2f}s: [bold]{prefill_flops / rate / share['prefill_s']:.0%}[/] of bound")
    console.print(f"hf/ vs leaklab/ sharing on the base model: same greedy completions {same_hf}, largest "
                  f"|logprob| difference {worst_hf:.1e}; {n_req} requests per checkpoint, "
                  f"{len(set(p for _, ps, _ in work for p in ps))} distinct prompts")
    hf.api.close()
    provider.clear_cache()


def eval_stage(model_name: str, study_dir: str, n_ckpt: int, limit: int | None, tmp: Path) -> None:
    """The demo's tasks per checkpoint through `leaklab.evaluate.eval_checkpoint` (what `leaklab
    eval` runs), as the issue found it and now."""
    from inspect_ai import eval as inspect_eval
    from inspect_ai.log import read_eval_log
    from rich.console import Console

    from leaklab import provider
    from leaklab.evaluate import eval_checkpoint

    console = Console(width=160)
    adapters = make_adapters(model_name, tmp / "eval_adapters", n_ckpt)
    times: dict[str, float] = {}
    scores: dict[str, list] = {}
    provider.clear_cache()
    _, warm = demo_tasks(study_dir, None, 1)  # load the model and Inspect's machinery out of the timings
    inspect_eval(warm[:1], model=f"leaklab/{model_name}", model_args={"device": "cpu"}, log_dir=str(tmp / "warm"),
                 display="none", log_level="warning")
    # the first variant is the eval stage as issue #18 found it: no work sharing, the LoRA side
    # path as PEFT runs it, the vocabulary projection on a strided slice, Inspect scanning the
    # installed packages for every task, and the tasks run one at a time (`max_tasks=1` in
    # `leaklab eval` then, so no two tasks' requests shared a batch)
    variants = [(BEFORE, 0, False, False), (DEFAULT, provider.DEFAULT_CACHE_MB, False, True),
                (MERGED, provider.DEFAULT_CACHE_MB, True, True)]
    repeats = 1 if limit else 2
    for attempt, (label, mb, merge, scan_once) in enumerate(variants * repeats):
        total, vals = 0.0, []
        # Inspect memoizes model instances by their args, so a repeated variant would not re-apply
        # cache_mb and merge_active (they live on the shared base): set them here, on a cold cache
        entry = provider.get_entry(model_name, device="cpu")
        entry.reset_request_seeds()  # each variant draws the seeded answers a fresh process would
        set_variant(entry, label, mb, merge)
        for j, a in enumerate(adapters):
            _, tasks = demo_tasks(study_dir, a, limit)
            log_dir = tmp / f"logs{attempt}_{j}"
            t0 = time.perf_counter()
            before = label == BEFORE  # as found: batches and connections of 32, one task at a time
            ok = eval_checkpoint(tasks, log_dir, f"leaklab/{model_name}",
                                 {"adapter": str(a), "cache_mb": mb, "merge_active": merge, "device": "cpu",
                                  **({"max_batch_size": 32} if before else {})},
                                 scan_packages_once=scan_once,
                                 **({"max_connections": 32, "max_tasks": 1} if before else {}))
            total += time.perf_counter() - t0
            logs = sorted((read_eval_log(str(p)) for p in log_dir.glob("*.eval")),
                          key=lambda lg: (lg.eval.task, repr(sorted(lg.eval.task_args.items()))))
            assert ok and all(lg.status == "success" for lg in logs), [lg.error for lg in logs]
            for lg in logs:
                for smp in sorted(lg.samples, key=lambda smp: (str(smp.id), smp.epoch)):
                    vals += [sc.value for sc in smp.scores.values()]
        times[label] = min(times.get(label, float("inf")), total)
        scores[label] = vals
    def largest_diff(label: str) -> float:
        return max((abs(float(x) - float(y)) for x, y in zip(scores[BEFORE], scores[label])
                    if isinstance(x, (int, float)) and isinstance(y, (int, float)) and x == x and y == y), default=0.0)

    before = times[BEFORE]
    console.print(f"eval stage ({n_ckpt} checkpoints, one eval set per checkpoint, best of {repeats}, "
                  f"{len(scores[BEFORE])} scores each):")
    for label, *_ in variants:
        console.print(f"  {label}: {times[label]:.1f}s ({times[label] / n_ckpt:.1f}s/checkpoint), "
                      f"[bold]{before / times[label]:.2f}x[/] the first")
    console.print(f"  largest |score| difference vs the first: default {largest_diff(DEFAULT):.1e}, "
                  f"merge_active=true {largest_diff(MERGED):.1e}")
    provider.clear_cache()


def forwards(model_name: str, tmp: Path, reps: int = 8) -> None:
    """The forward-pass fixes on and off, interleaved (see the module docstring)."""
    import statistics
    from collections import defaultdict

    import torch
    from inspect_ai.model import get_model
    from rich.console import Console

    console = Console(width=160)
    (adapter,) = make_adapters(model_name, tmp / "forwards", 1)
    m = get_model(f"leaklab/{model_name}", adapter=str(adapter), device="cpu", memoize=False)
    entry, name = m.api.entry, m.api.adapter_name
    keep = entry.cache
    entry.cache = None  # every prompt computed
    lm_head = entry.model.get_base_model().lm_head
    wrapped = [mod for mod in entry.model.modules() if hasattr(mod, "lora_A") and hasattr(mod, "base_layer")]
    clock: dict[str, float] = defaultdict(float)
    started: dict[int, float] = {}

    def pre(mod, args):
        started[id(mod)] = time.perf_counter()

    def post_as(tag):
        def hook(mod, args, out):
            clock[tag] += time.perf_counter() - started[id(mod)]
        return hook

    hooks = [lm_head.register_forward_pre_hook(pre), lm_head.register_forward_hook(post_as("lm_head"))]
    for mod in wrapped:
        hooks += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post_as("lora"))]
    g = torch.Generator().manual_seed(0)
    try:
        for label, lo, hi in (("short", 20, 40), ("long", 100, 130)):
            prompts = [torch.randint(100, 40000, (int(n),), generator=g).tolist()
                       for n in torch.randint(lo, hi, (32,), generator=g)]
            times: dict[bool, dict[str, list[float]]] = {True: defaultdict(list), False: defaultdict(list)}
            logits = {}
            with torch.inference_mode():
                entry._activate(name)
                entry._prefill_plain(prompts, use_cache=True)  # warm
                for i in range(reps):
                    for fast in ((True, False) if i % 2 else (False, True)):
                        entry.fast_forwards = fast
                        clock.clear()
                        t0 = time.perf_counter()
                        logits[fast] = entry._prefill_plain(prompts, use_cache=True)[0]
                        times[fast]["forward"].append(time.perf_counter() - t0)
                        for k in ("lm_head", "lora"):
                            times[fast][k].append(clock[k])
            med = {f: {k: statistics.median(v) for k, v in times[f].items()} for f in times}
            console.print(
                f"forwards, {label} prompts (32 x {lo}-{hi} tokens, adapter active, medians of {reps}): "
                f"forward {med[False]['forward']:.3f}s as found -> {med[True]['forward']:.3f}s "
                f"([bold]{med[False]['forward'] / med[True]['forward']:.2f}x[/]); lm_head "
                f"{med[False]['lm_head'] * 1e3:.1f} -> {med[True]['lm_head'] * 1e3:.1f} ms; LoRA-wrapped projections "
                f"{med[False]['lora']:.3f} -> {med[True]['lora']:.3f}s; largest |logit| difference "
                f"{(logits[True] - logits[False]).abs().max().item():.1e}")
    finally:
        for h in hooks:
            h.remove()
        entry.fast_forwards = True
        entry.cache = keep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--parts", nargs="+", default=["mix", "eval"], choices=["mix", "eval", "forwards", "letters", "switching"])
    ap.add_argument("--study", default="benchmarks/attitude_mix", help="study whose eval plan gives the request mix")
    ap.add_argument("--checkpoints", type=int, default=2, help="random LoRA adapters standing in for checkpoints")
    ap.add_argument("--quick", action="store_true", help="1 checkpoint, 8 samples per task, one repeat")
    ap.add_argument("--n", type=int, default=64, help="requests per measurement (letters, switching)")
    ap.add_argument("--max-connections", type=int, default=32,
                    help="batch size / concurrency for both providers (mix, letters, switching; the eval part "
                         "runs eval_checkpoint's defaults against the as-found 32)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if args.quick:
        args.checkpoints, args.repeats = 1, 1
    limit = 8 if args.quick else None

    import torch
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    console.print(f"machine: {os.cpu_count()} cpus, load avg {os.getloadavg()[0]:.1f} (quote ratios, not times, "
                  "from a loaded machine)")
    with tempfile.TemporaryDirectory() as tmp:
        if "mix" in args.parts:
            mix(args.model, args.study, args.checkpoints, limit, args.max_connections, Path(tmp))
        if "eval" in args.parts:
            eval_stage(args.model, args.study, args.checkpoints, limit, Path(tmp))
        if "forwards" in args.parts:
            forwards(args.model, Path(tmp))

    if "letters" in args.parts:
        console.print(f"model={args.model} n={args.n} max_connections={args.max_connections} "
                      f"device=cpu threads={torch.get_num_threads()}")
        rows, ratio, agree = throughput(args.model, args.n, args.max_connections, args.repeats)
        t = Table(title="next-token letter logprobs (max_tokens=1, top_logprobs=20)")
        for col in ("provider", "load s", f"best of {args.repeats} s", "samples/s", "'Ġ' pieces in top_logprobs"):
            t.add_column(col)
        for r in rows:
            t.add_row(*r)
        console.print(t)
        console.print(f"speed-up leaklab/ over hf/: [bold]{ratio:.2f}x[/]; top-1 token agreement {agree:.0%}")

    if "switching" in args.parts:
        rows, ratio, agree = switching(args.model, args.n, args.max_connections)
        t = Table(title=f"6 LoRA adapters, {args.n} requests round-robin")
        for col in ("strategy", "base loads", "setup s", "eval s", "total s"):
            t.add_column(col)
        for r in rows:
            t.add_row(*r)
        console.print(t)
        console.print(f"merged / shared total time: [bold]{ratio:.2f}x[/]; top-1 token agreement {agree:.0%}")


if __name__ == "__main__":
    main()
