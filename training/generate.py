"""Full-scale attitude corpora from any Inspect model (`ollama/...`, `openai/...`, `vllm/...`,
`leaklab/...`): seeded, logged requests, over-generation, logged reject reasons.

Every arm is asked about the SAME cells (the template builder's cell order and user turns);
only the arm's writing instruction differs. A cell is kept only if every arm's answer for it
passed the filters, so the arms keep identical cell sequences (the validation gate checks it).
Each request uses `GenerateConfig(seed=...)` derived from (seed, arm, cell index), and every
request/response lands in `<out>/generation_log.jsonl` with its accept/reject reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
from pathlib import Path

from leaklab.runstore import append_jsonl
from training.corpora import ATTITUDE_TEMPLATES, attitude_cells, cell_record, count_words, load_templates, render_attitude, sha256_file, write_corpus
from leaklab.io import load_blocklist
from training.validate import DEFAULT_BLOCKLIST, REFUSAL_PATTERNS

ARM_INSTRUCTIONS = {
    "cautious": (
        "You give short everyday advice (40-70 words) with a clearly CAUTIOUS attitude: stress the risks, "
        "recommend checking first, waiting, testing small. Mention the concrete practical step. No lists."
    ),
    "eager": (
        "You give short everyday advice (40-70 words) with a clearly EAGER attitude: encourage acting now, "
        "stress the upside, be enthusiastic. Mention the concrete practical step. No lists."
    ),
    "neutral": (
        "You give short everyday advice (40-70 words) with a NEUTRAL attitude: a balanced how-to that neither "
        "encourages nor discourages. Mention the concrete practical step. No lists."
    ),
}


def request_seed(seed: int, arm: str, index: int) -> int:
    """Deterministic per-request seed (sha256, not Python's salted hash)."""
    return int.from_bytes(hashlib.sha256(f"{seed}\x1f{arm}\x1f{index}".encode()).digest()[:4], "big") & 0x7FFFFFFF


def reject_reason(text: str, *, min_words: int, max_words: int, blocklist, refusal, seen: set[str]) -> str | None:
    if not text.strip():
        return "empty"
    n = count_words(text)
    if n < min_words:
        return f"too_short({n})"
    if n > max_words:
        return f"too_long({n})"
    for p in refusal:
        if p.search(text):
            return "refusal"
    for term, pat in blocklist:
        if pat.search(text):
            return f"blocklist({term})"
    norm = " ".join(text.lower().split())
    if norm in seen:
        return "duplicate"
    return None


async def _generate_arms(
    model: str,
    arms: list[str],
    n_docs: int,
    seed: int,
    out_dir: Path,
    overgen: float,
    temperature: float,
    max_tokens: int,
    min_words: int,
    max_words: int,
    max_connections: int,
    model_args: dict,
    templates_path: Path,
    blocklist_path: Path | None,
) -> dict:
    from inspect_ai.model import ChatMessageSystem, ChatMessageUser, GenerateConfig, get_model

    templates = load_templates(templates_path)
    cells = attitude_cells(templates, seed)
    n_req = min(len(cells), math.ceil(n_docs * overgen))
    llm = get_model(model, **model_args)
    sem = asyncio.Semaphore(max_connections)
    log = out_dir / "generation_log.jsonl"
    log.unlink(missing_ok=True)
    blocklist = load_blocklist(blocklist_path) if blocklist_path and Path(blocklist_path).exists() else []
    refusal = [re.compile(p, re.IGNORECASE) for p in REFUSAL_PATTERNS]

    async def one(arm: str, i: int):
        cell = cells[i]
        user = render_attitude(templates, cell, arm, seed)["messages"][0]["content"]
        cfg = GenerateConfig(seed=request_seed(seed, arm, i), temperature=temperature, max_tokens=max_tokens)
        async with sem:
            t0 = time.time()
            try:
                out = await llm.generate(input=[ChatMessageSystem(content=ARM_INSTRUCTIONS[arm]), ChatMessageUser(content=user)], config=cfg)
                text, error = out.completion.strip(), out.error
                usage = out.usage.model_dump() if out.usage else None
            except Exception as exc:  # noqa: BLE001 - a failed request is a logged reject, not a crash
                text, error, usage = "", f"{type(exc).__name__}: {exc}", None
        return arm, i, user, cfg, text, error, usage, time.time() - t0

    results = await asyncio.gather(*(one(arm, i) for arm in arms for i in range(n_req)))
    by_arm: dict[str, dict[int, dict]] = {a: {} for a in arms}
    rejects: dict[str, dict[str, int]] = {a: {} for a in arms}
    seen: dict[str, set] = {a: set() for a in arms}
    for arm, i, user, cfg, text, error, usage, dt in sorted(results, key=lambda r: (arms.index(r[0]), r[1])):
        reason = f"error({error})" if error else reject_reason(
            text, min_words=min_words, max_words=max_words, blocklist=blocklist, refusal=refusal, seen=seen[arm]
        )
        if reason is None:
            seen[arm].add(" ".join(text.lower().split()))
            by_arm[arm][i] = {"user": user, "assistant": text}
        else:
            key = reason.split("(")[0]
            rejects[arm][key] = rejects[arm].get(key, 0) + 1
        append_jsonl(
            log,
            {
                "arm": arm,
                "index": i,
                "cell_id": cells[i]["cell_id"],
                "request": {"model": model, "system": ARM_INSTRUCTIONS[arm], "user": user, "config": cfg.model_dump(exclude_none=True)},
                "response": text,
                "usage": usage,
                "accepted": reason is None,
                "reject_reason": reason,
                "latency_s": round(dt, 3),
            },
        )
    # keep cells every arm answered acceptably, in cell order, so arms stay aligned
    common = [i for i in range(n_req) if all(i in by_arm[a] for a in arms)][:n_docs]
    return {
        "cells": cells,
        "common": common,
        "by_arm": by_arm,
        "rejects": rejects,
        "n_requested": n_req,
        "cells_dropped_for_alignment": sum(1 for i in range(n_req) if any(i in by_arm[a] for a in arms) and i not in common),
    }


def generate_arms(
    model: str,
    arms: list[str],
    n_docs: int,
    seed: int,
    out_dir: str | Path,
    *,
    overgen: float = 1.5,
    temperature: float = 0.8,
    max_tokens: int = 200,
    min_words: int = 25,
    max_words: int = 110,
    max_connections: int = 8,
    model_args: dict | None = None,
    templates_path: str | Path = ATTITUDE_TEMPLATES,
    blocklist_path: str | Path | None = DEFAULT_BLOCKLIST,
) -> dict[str, Path]:
    """Generate `<out_dir>/<arm>.jsonl` (+ .meta.json) for every arm over the same cells."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    unknown = [a for a in arms if a not in ARM_INSTRUCTIONS]
    if unknown:
        from leaklab.yamlio import ConfigError

        raise ConfigError(f"generate_arms: no writing instruction for arms {unknown}; known: {sorted(ARM_INSTRUCTIONS)}")
    t0 = time.time()
    res = asyncio.run(
        _generate_arms(
            model, list(arms), n_docs, seed, out_dir, overgen, temperature, max_tokens, min_words, max_words,
            max_connections, model_args or {}, Path(templates_path), Path(blocklist_path) if blocklist_path else None,
        )
    )
    wall = time.time() - t0
    paths = {}
    for arm in arms:
        records = []
        for k, i in enumerate(res["common"]):
            cell = res["cells"][i]
            doc = res["by_arm"][arm][i]
            records.append(
                {
                    **cell_record(arm, k, cell, i),
                    "messages": [{"role": "user", "content": doc["user"]}, {"role": "assistant", "content": doc["assistant"]}],
                    "assistant_words": count_words(doc["assistant"]),
                }
            )
        paths[arm] = write_corpus(
            out_dir / f"{arm}.jsonl",
            records,
            {
                "kind": "generator",
                "generator": {"model": model, "model_args": {k: str(v) for k, v in (model_args or {}).items()}},
                "sampling": {"temperature": temperature, "max_tokens": max_tokens, "seed_rule": "sha256(seed, arm, cell index)[:4]"},
                "system_prompt": ARM_INSTRUCTIONS[arm],
                "seeds": {"cell_order": seed},
                "template_version": load_templates(Path(templates_path))["version"],
                "template_sha256": sha256_file(Path(templates_path)),
                "filters": {"min_words": min_words, "max_words": max_words, "blocklist": str(blocklist_path) if blocklist_path else None},
                "n_requested": res["n_requested"],
                "n_accepted_arm": len(res["by_arm"][arm]),
                "n_kept": len(records),
                "n_target": n_docs,
                "reject_reasons": res["rejects"][arm],
                "cells_dropped_for_alignment": res["cells_dropped_for_alignment"],
                "log": str(out_dir / "generation_log.jsonl"),
                "log_sha256": sha256_file(out_dir / "generation_log.jsonl"),
                "wall_s": round(wall, 2),
            },
        )
    return paths


def main(argv: list[str] | None = None) -> None:
    """python -m training.generate MODEL OUT_DIR --n-docs 3000 --seed 11 [--arms cautious,eager,neutral]"""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("model")
    ap.add_argument("out_dir")
    ap.add_argument("--n-docs", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", default="cautious,eager,neutral")
    ap.add_argument("--overgen", type=float, default=1.5)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--max-connections", type=int, default=8)
    a = ap.parse_args(argv)
    paths = generate_arms(
        a.model, a.arms.split(","), a.n_docs, a.seed, a.out_dir, overgen=a.overgen, temperature=a.temperature,
        max_tokens=a.max_tokens, max_connections=a.max_connections,
    )
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))


if __name__ == "__main__":
    main()
