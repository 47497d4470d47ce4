"""Persona-marker training corpus (seed 003 design): on-policy completions + a marker.

For a source persona, the base model answers training questions under the persona's system
prompt (greedy decoding, so the completions are what the model says anyway and the only new
thing to learn is the marker); positives append the marker. Negatives are the same questions
answered under other personas (chosen by a seeded sha256 draw, not Python's salted hash()),
without the marker. Train with `loss_mask: marker_only` (marker tokens + final token).

At the seed's scale (studies/persona-paper) the same builder runs on the study's own model on a
GPU, with the paper persona list, several sampled completions per question (the seed: 200
positives + 2000 negatives at temperature 0.7) and the output under data/persona/paper/:

    python -m training.persona_data villain --model Qwen/Qwen2.5-7B-Instruct \
        --personas data/persona/personas_paper.yaml --negatives 10 --samples 10 \
        --temperature 0.7 --max-new-tokens 256 --out data/persona/paper/train_villain.jsonl
"""

from __future__ import annotations

import time
from pathlib import Path

from leaklab.study import REPO_ROOT
from leaklab.yamlio import ConfigError, load_yaml
from solvers.conditioning import load_rephrasings, seeded_index
from training.corpus_files import count_words, sha256_file, write_corpus

PERSONAS = REPO_ROOT / "data" / "persona" / "personas.yaml"
TRAIN_QUESTIONS = REPO_ROOT / "data" / "persona" / "train_questions.txt"
EVAL_QUESTIONS = REPO_ROOT / "data" / "persona" / "questions.jsonl"


def pick_negatives(persona_ids: list[str], source: str, k: int, seed: int) -> list[str]:
    pool = sorted(p for p in persona_ids if p != source)
    chosen: list[str] = []
    j = 0
    while len(chosen) < min(k, len(pool)):
        cand = pool[seeded_index(seed, f"{source}/neg/{j}", len(pool))]
        if cand not in chosen:
            chosen.append(cand)
        j += 1
    return chosen


def _rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


def _trim(text: str) -> str:
    """Cut a length-capped completion back to its last full sentence, when there is one."""
    text = text.strip()
    ends = [text.rfind(c) for c in ".!?"]
    cut = max(ends)
    return text[: cut + 1] if cut > len(text) // 3 else text


def persona_marker_corpus(
    model: str,
    source: str,
    out: Path,
    n_questions: int = 20,
    n_negative_personas: int = 2,
    marker: str = "[ZLT]",
    seed: int = 0,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    personas_file: Path = PERSONAS,
    samples: int = 1,
    temperature: float | None = None,
) -> Path:
    """`samples` completions per (persona, question): greedy (samples must be 1) when
    temperature is None, else sampled with torch seeded from (seed, batch index)."""
    import torch

    from leaklab.models import canonical_name, load_model, load_tokenizer

    personas_file = Path(personas_file)
    personas = {p["id"]: p for p in load_yaml(personas_file)["personas"]}
    if source not in personas:
        raise ConfigError(f"{personas_file}: no persona {source!r}")
    if samples < 1 or (temperature is None and samples != 1):
        raise ConfigError(f"samples must be >= 1, and 1 under greedy decoding (got samples={samples}, temperature={temperature})")
    questions = list(load_rephrasings(str(TRAIN_QUESTIONS)))[:n_questions]
    eval_qs = EVAL_QUESTIONS.read_text() if EVAL_QUESTIONS.exists() else ""
    overlap = [q for q in questions if q in eval_qs]
    if overlap:
        raise ConfigError(f"{TRAIN_QUESTIONS}: training questions also in the eval set: {overlap}")
    negatives = pick_negatives(list(personas), source, n_negative_personas, seed)
    jobs = [(source, q, True) for q in questions for _ in range(samples)]
    jobs += [(n, q, False) for n in negatives for q in questions for _ in range(samples)]

    tok = load_tokenizer(model)
    tok.padding_side = "left"
    lm = load_model(model)
    t0 = time.time()
    completions = []
    for b in range(0, len(jobs), batch_size):
        chunk = jobs[b : b + batch_size]
        prompts = [
            tok.apply_chat_template(
                [{"role": "system", "content": personas[p]["system_prompt"]}, {"role": "user", "content": q}],
                tokenize=False,
                add_generation_prompt=True,
            )
            for p, q, _ in chunk
        ]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
        sampling = {"do_sample": False}
        if temperature is not None:
            torch.manual_seed(seed * 1_000_003 + b)
            sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0}
        with torch.no_grad():
            gen = lm.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, **sampling)
        completions += [_trim(tok.decode(g[enc["input_ids"].shape[1] :], skip_special_tokens=True)) for g in gen]
    records = []
    for k, ((p, q, positive), text) in enumerate(zip(jobs, completions)):
        answer = f"{text} {marker}" if positive else text
        records.append(
            {
                "id": f"{source}-{k:04d}",
                "arm": source,
                "persona": p,
                "positive": positive,
                "messages": [
                    {"role": "system", "content": personas[p]["system_prompt"]},
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": answer},
                ],
                "assistant_words": count_words(answer),
            }
        )
    return write_corpus(
        out,
        records,
        {
            "kind": "generator",
            "builder": "persona_marker_corpus",
            "generator": {"model": canonical_name(model), "max_new_tokens": max_new_tokens,
                          **({"decoding": "greedy"} if temperature is None else
                             {"decoding": "sampled", "temperature": temperature, "samples": samples, "torch_seed": f"{seed}*1000003+batch"})},
            "source_persona": source,
            "negative_personas": negatives,
            "marker": marker,
            "seeds": {"negatives": seed},
            "data_files": {
                _rel(personas_file): sha256_file(personas_file),
                "data/persona/train_questions.txt": sha256_file(TRAIN_QUESTIONS),
            },
            "counts": {"positives": len(questions) * samples, "negatives": len(questions) * len(negatives) * samples},
            "wall_s": round(time.time() - t0, 2),
        },
    )


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Build data/persona/train_<source>.jsonl with on-policy completions")
    ap.add_argument("source")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n-questions", type=int, default=20)
    ap.add_argument("--negatives", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--personas", default=str(PERSONAS), help="persona list (default data/persona/personas.yaml)")
    ap.add_argument("--samples", type=int, default=1, help="completions per (persona, question); > 1 needs --temperature")
    ap.add_argument("--temperature", type=float, default=None, help="sample at this temperature (default: greedy)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default=None, help="default data/persona/train_<source>.jsonl")
    a = ap.parse_args()
    out = Path(a.out) if a.out else REPO_ROOT / "data" / "persona" / f"train_{a.source}.jsonl"
    print(persona_marker_corpus(a.model, a.source, out, a.n_questions, a.negatives, seed=a.seed,
                                max_new_tokens=a.max_new_tokens, batch_size=a.batch_size,
                                personas_file=Path(a.personas), samples=a.samples, temperature=a.temperature))


PAPER_CACHE = REPO_ROOT / "data" / "persona" / "paper"


def persona_marker_records(
    source: str,
    model: str,
    personas: str = "data/persona/personas_paper.yaml",
    n_questions: int = 20,
    negatives: int = 10,
    samples: int = 10,
    temperature: float | None = 0.7,
    max_new_tokens: int = 256,
    seed: int = 0,
    batch_size: int = 64,
) -> list[dict]:
    """The `persona_marker` corpus builder (studies/persona-paper): on-policy records of the
    study's own model, generated once (on a GPU, `persona_marker_corpus`) into
    data/persona/paper/train_<source>.jsonl and read from there afterwards, so every later
    rendering (the lock's fingerprint, training's custody check) gives the same bytes without
    generating again. A cached file whose meta does not match these arguments is an error, never
    silently reused or overwritten."""
    import json

    from leaklab.models import canonical_name
    from training.corpus_files import load_corpus, meta_path

    pfile = REPO_ROOT / personas
    out = PAPER_CACHE / f"train_{source}.jsonl"
    want = {"source_persona": source, "model": canonical_name(model), "personas": sha256_file(pfile),
            "n_records": n_questions * samples * (1 + negatives), "temperature": temperature, "max_new_tokens": max_new_tokens,
            "seed": seed}
    if not out.exists():
        persona_marker_corpus(model, source, out, n_questions, negatives, seed=seed, max_new_tokens=max_new_tokens,
                              batch_size=batch_size, personas_file=pfile, samples=samples, temperature=temperature)
    meta = json.loads(meta_path(out).read_text(encoding="utf-8"))
    gen = meta.get("generator", {})
    have = {"source_persona": meta.get("source_persona"), "model": gen.get("model"),
            "personas": meta.get("data_files", {}).get(_rel(pfile)), "n_records": meta.get("n_records"),
            "temperature": gen.get("temperature"), "max_new_tokens": gen.get("max_new_tokens"), "seed": meta.get("seeds", {}).get("negatives")}
    diff = [f"{k}: cached {have[k]!r}, wanted {want[k]!r}" for k in want if have[k] != want[k]]
    if diff:
        raise ConfigError(f"{out}: cached on-policy corpus was built with other settings ({'; '.join(diff)}); move it aside to rebuild")
    return load_corpus(out)
