"""Inside the model, rung 2: activation/logprob dumps and the attitude direction.

Heavy tensors never go through Inspect: this module runs transformers directly, writes dumps
under `runs/<study>/interp/dumps/`, and every metric is then computed offline from a dump.

Conventions (the peer study got several of these wrong, see FIELD_NOTES.md):
- "layer l" is the residual stream *after* decoder block l (0-based), captured with a forward
  hook on that block; steering/ablation hooks (analysis.steering) act on the same tensor, so a
  direction read at layer l is written back at exactly the place it was read.
- Layers are integers everywhere (never sorted as strings).
- Chat prompts are rendered with the tokenizer's chat template and tokenised with
  `add_special_tokens=False` (the template already emits any BOS; doubling it shifts everything).
- Positions: `last_prompt` = the last token of the generation prompt (end of the assistant
  header, where the answer's first token is predicted); `assistant_mean` = mean over the
  assistant turn's tokens.
- The direction is fitted on one split of the corpora, its layer chosen on a second, and its
  separation reported on a third; target prompts are never used for either choice.
"""

from __future__ import annotations

import copy
import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from leaklab import models
from leaklab.runstore import atomic_write_bytes, atomic_write_json


# --------------------------------------------------------------------------- prompts and spans
@dataclass(frozen=True)
class Example:
    """One tokenised sequence: prompt tokens, then (optionally) assistant-turn tokens."""

    id: str
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...] = ()

    @property
    def ids(self) -> list[int]:
        return list(self.prompt_ids) + list(self.completion_ids)


def render_example(tok, messages: list[dict], example_id: str) -> Example:
    """Tokenise a chat: if the last message is the assistant's, it becomes the completion.

    The prompt is the template with the generation prompt; the completion is the remaining text
    of the full rendering (trailing template newline stripped), tokenised separately so the
    boundary is exact.
    """
    if not messages:
        raise ValueError(f"example {example_id}: no messages")
    if messages[-1]["role"] == "assistant":
        prompt_msgs, has_completion = messages[:-1], True
    else:
        prompt_msgs, has_completion = messages, False
    prompt_text = tok.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True)
    prompt_ids = tuple(tok(prompt_text, add_special_tokens=False).input_ids)
    completion_ids: tuple[int, ...] = ()
    if has_completion:
        full_text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        if not full_text.startswith(prompt_text):
            raise ValueError(f"example {example_id}: chat template renders the prompt differently inside the full chat")
        completion_ids = tuple(tok(full_text[len(prompt_text):].rstrip("\n"), add_special_tokens=False).input_ids)
        if not completion_ids:
            raise ValueError(f"example {example_id}: empty assistant turn")
    return Example(example_id, prompt_ids, completion_ids)


def corpus_items(path: Path, limit: int | None = None) -> list[tuple[str, list[dict]]]:
    """(id, messages) of a corpus jsonl, read and validated by training.corpora (first `limit` records)."""
    from training.corpora import corpus_messages, load_corpus

    recs = load_corpus(Path(path))[:limit]
    return [(str(r["id"]), corpus_messages(r, f"{path}")) for r in recs]


def split_of(example_id: str, seed: int, fractions: dict[str, float]) -> str:
    """Deterministic split assignment from sha256(seed, id) (never Python's salted hash)."""
    u = int.from_bytes(hashlib.sha256(f"{seed}\x1f{example_id}".encode()).digest()[:8], "big") / 2**64
    acc = 0.0
    for name, frac in fractions.items():
        acc += frac
        if u < acc:
            return name
    return list(fractions)[-1]


# --------------------------------------------------------------------------- model plumbing
def decoder_layers(model):
    """The ModuleList of decoder blocks (works through PEFT wrappers)."""
    import torch

    n = model.config.num_hidden_layers
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and name.endswith("layers") and len(mod) == n:
            return mod
    raise RuntimeError(f"could not find the {n} decoder layers of {type(model).__name__}")


@contextmanager
def capture_residual(model, layers: Sequence[int]):
    """Record the residual stream after each listed block: yields {layer: [batch tensors]}."""
    blocks = decoder_layers(model)
    store: dict[int, list] = {int(l): [] for l in layers}
    handles = []
    for l in store:
        if not 0 <= l < len(blocks):
            raise ValueError(f"layer {l} out of range 0..{len(blocks) - 1}")

        def hook(_mod, _inp, out, l=l):
            h = out[0] if isinstance(out, tuple) else out
            store[l].append(h.detach())

        handles.append(blocks[l].register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def _pad_batch(seqs: Sequence[Sequence[int]], pad_id: int):
    import torch

    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def _model_device(model):
    return next(model.parameters()).device


def hidden_states(model, examples: Sequence[Example], layers: Sequence[int], pad_id: int, batch_size: int = 8) -> dict[str, np.ndarray]:
    """Residual states [N, L, D] at `last_prompt` and (when every example has one) `assistant_mean`.

    Right padding: real tokens never attend to pads under the causal mask, so positions and
    states equal those of an unpadded forward.
    """
    import torch

    layers = [int(l) for l in layers]
    dev = _model_device(model)
    last, mean = [], []
    has_completion = all(ex.completion_ids for ex in examples)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))  # length-bucketed batches
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            batch = [examples[i] for i in idx]
            ids, mask = _pad_batch([ex.ids for ex in batch], pad_id)
            with capture_residual(model, layers) as store:
                model(input_ids=ids.to(dev), attention_mask=mask.to(dev), logits_to_keep=1)  # no vocab projection needed
            H = torch.stack([store[l][0] for l in layers], dim=1).float().cpu()  # [B, L, T, D]
            for j, ex in enumerate(batch):
                p = len(ex.prompt_ids)
                last.append((idx[j], H[j, :, p - 1, :].numpy()))
                if has_completion:
                    mean.append((idx[j], H[j, :, p : p + len(ex.completion_ids), :].mean(dim=1).numpy()))
    out = {"last_prompt": np.stack([a for _, a in sorted(last, key=lambda t: t[0])])}
    if has_completion:
        out["assistant_mean"] = np.stack([a for _, a in sorted(mean, key=lambda t: t[0])])
    return out


def completion_logprobs(model, examples: Sequence[Example], pad_id: int, batch_size: int = 8) -> list[np.ndarray]:
    """Per-token log p(completion token | everything before it), one array per example.

    Examples sharing an identical prompt are scored against one cached prefix: the prompt is run
    once, its KV cache is repeated over a batch of completions (many completions, one prefix);
    the rest are scored in right-padded batches of full sequences. Both paths give the same
    numbers (tested).
    """
    import torch

    dev = _model_device(model)
    out: dict[int, np.ndarray] = {}
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, ex in enumerate(examples):
        if not ex.completion_ids:
            raise ValueError(f"example {ex.id}: no completion to score")
        groups.setdefault(ex.prompt_ids, []).append(i)
    singles = [idxs[0] for idxs in groups.values() if len(idxs) == 1]
    with torch.no_grad():
        singles.sort(key=lambda i: len(examples[i].ids))
        for b in range(0, len(singles), batch_size):
            idx = singles[b : b + batch_size]
            ids, mask = _pad_batch([examples[i].ids for i in idx], pad_id)
            keep = torch.zeros_like(mask, dtype=torch.bool)  # positions that predict a completion token
            targets = []
            for j, i in enumerate(idx):
                p, c = len(examples[i].prompt_ids), len(examples[i].completion_ids)
                keep[j, p - 1 : p - 1 + c] = True
                targets.extend(examples[i].completion_ids)
            logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), logits_to_keep=keep.to(dev)).logits.float()
            lp = torch.log_softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)
            lp = lp.gather(-1, torch.tensor(targets, device=dev).unsqueeze(-1)).squeeze(-1).cpu().numpy()
            start = 0
            for i in idx:
                c = len(examples[i].completion_ids)
                out[i] = lp[start : start + c]
                start += c
        cache_arg = models.cache_kwarg(model)
        for prompt, idxs in groups.items():
            if len(idxs) == 1:
                continue
            pre = model(input_ids=torch.tensor([list(prompt)], device=dev), use_cache=True)
            first = torch.log_softmax(pre.logits[0, -1].float(), dim=-1)
            for b in range(0, len(idxs), batch_size):
                idx = idxs[b : b + batch_size]
                comp, cmask = _pad_batch([examples[i].completion_ids for i in idx], pad_id)
                cache = copy.deepcopy(models.output_cache(pre))
                cache.batch_repeat_interleave(len(idx))
                attn = torch.cat([torch.ones(len(idx), len(prompt), dtype=torch.long), cmask], dim=1)
                logits = model(input_ids=comp.to(dev), attention_mask=attn.to(dev), use_cache=True,
                               **{cache_arg: cache}).logits.float()
                rest = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, comp[:, 1:].to(dev).unsqueeze(-1)).squeeze(-1)
                lp0 = first[comp[:, 0].to(dev)].unsqueeze(1)
                lp = torch.cat([lp0, rest], dim=1).cpu()
                for j, i in enumerate(idx):
                    out[i] = lp[j, : len(examples[i].completion_ids)].numpy()
    return [out[i] for i in range(len(examples))]


# --------------------------------------------------------------------------- dumps on disk
def save_npz(path: Path, **arrays) -> None:
    """Write arrays to an .npz atomically (a killed run never leaves a truncated dump)."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(Path(path), buf.getvalue())


@dataclass
class Dump:
    """Hidden states of one (model or adapter, prompt set) pass: arrays [N, L, D] per position."""

    ids: list[str]
    layers: list[int]
    arrays: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    def save(self, path: Path) -> None:
        path = Path(path)
        save_npz(path.with_suffix(".npz"), **{k: v.astype(np.float32) for k, v in self.arrays.items()})
        atomic_write_json(path.with_suffix(".json"), {"ids": self.ids, "layers": self.layers, "meta": self.meta, "positions": sorted(self.arrays)})

    @classmethod
    def load(cls, path: Path) -> "Dump":
        path = Path(path)
        info = json.loads(path.with_suffix(".json").read_text())
        with np.load(path.with_suffix(".npz")) as z:
            arrays = {k: z[k] for k in z.files}
        return cls(info["ids"], [int(l) for l in info["layers"]], arrays, info.get("meta", {}))

    def subset(self, ids: Iterable[str]) -> "Dump":
        pos = {i: k for k, i in enumerate(self.ids)}
        sel = [pos[i] for i in ids]
        return Dump([self.ids[k] for k in sel], self.layers, {k: v[sel] for k, v in self.arrays.items()}, self.meta)


def dump_states(model, tok, items: Sequence[tuple[str, list[dict]]], layers: Sequence[int], path: Path | None, meta: dict, batch_size: int = 8) -> Dump:
    """One pass over (id, messages) items; written to `path` (.npz + .json) when given, reused if present."""
    if path is not None and Path(path).with_suffix(".json").exists():
        d = Dump.load(path)
        if d.ids == [i for i, _ in items] and d.layers == [int(l) for l in layers] and d.meta == json.loads(json.dumps(meta)):
            return d
    examples = [render_example(tok, msgs, i) for i, msgs in items]
    arrays = hidden_states(model, examples, layers, tok.pad_token_id, batch_size=batch_size)
    d = Dump([ex.id for ex in examples], [int(l) for l in layers], arrays, meta)
    if path is not None:
        d.save(path)
    return d


def save_logprobs(path: Path, ids: Sequence[str], lps: Sequence[np.ndarray], meta: dict) -> None:
    """Ragged per-token logprobs as one flat array + offsets (.npz) and ids/meta (.json)."""
    path = Path(path)
    offsets = np.cumsum([0] + [len(a) for a in lps])
    flat = np.concatenate([np.asarray(a, np.float32) for a in lps]) if lps else np.zeros(0, np.float32)
    save_npz(path.with_suffix(".npz"), flat=flat, offsets=offsets)
    atomic_write_json(path.with_suffix(".json"), {"ids": list(ids), "meta": meta})


def load_logprobs(path: Path) -> tuple[list[str], list[np.ndarray], dict]:
    path = Path(path)
    info = json.loads(path.with_suffix(".json").read_text())
    with np.load(path.with_suffix(".npz")) as z:
        flat, off = z["flat"], z["offsets"]
    return info["ids"], [flat[off[i] : off[i + 1]].astype(float) for i in range(len(off) - 1)], info["meta"]


def dump_logprobs(model, tok, items: Sequence[tuple[str, list[dict]]], path: Path | None, meta: dict, batch_size: int = 8) -> list[np.ndarray]:
    """Per-token completion logprobs of (id, messages) items, written to `path` and reused when present."""
    if path is not None and Path(path).with_suffix(".json").exists():
        ids, lps, m = load_logprobs(path)
        if ids == [i for i, _ in items] and m == json.loads(json.dumps(meta)):
            return lps
    exs = [render_example(tok, msgs, i) for i, msgs in items]
    lps = completion_logprobs(model, exs, tok.pad_token_id, batch_size)
    if path is not None:
        save_logprobs(path, [e.id for e in exs], lps, meta)
    return lps


# --------------------------------------------------------------------------- the direction
def diff_of_means(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """mean(pos) - mean(neg) over examples, per layer: [N, L, D], [M, L, D] -> [L, D]."""
    if pos.ndim != 3 or neg.ndim != 3 or pos.shape[1:] != neg.shape[1:]:
        raise ValueError(f"expected [N, L, D] arrays with matching L, D; got {pos.shape} and {neg.shape}")
    return pos.mean(axis=0) - neg.mean(axis=0)


def unit(directions: np.ndarray) -> np.ndarray:
    """L2-normalise along the last axis (a zero direction stays zero rather than NaN)."""
    n = np.linalg.norm(directions, axis=-1, keepdims=True)
    return np.divide(directions, n, out=np.zeros_like(directions, dtype=float), where=n > 0)


def project(acts: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Scalar projection of [N, L, D] states onto the per-layer unit directions [L, D] -> [N, L]."""
    return np.einsum("nld,ld->nl", acts, unit(directions))


def separation(proj_pos: np.ndarray, proj_neg: np.ndarray) -> np.ndarray:
    """Cohen's d per layer of projections (pooled SD, ddof=1): [N, L], [M, L] -> [L]."""
    n1, n2 = len(proj_pos), len(proj_neg)
    if n1 < 2 or n2 < 2:
        raise ValueError("separation needs at least 2 examples per side")
    v = ((n1 - 1) * proj_pos.var(axis=0, ddof=1) + (n2 - 1) * proj_neg.var(axis=0, ddof=1)) / (n1 + n2 - 2)
    diff = proj_pos.mean(axis=0) - proj_neg.mean(axis=0)
    return np.divide(diff, np.sqrt(v), out=np.full_like(diff, np.nan, dtype=float), where=v > 0)


def select_layer(directions: np.ndarray, sel_pos: np.ndarray, sel_neg: np.ndarray, layers: Sequence[int]) -> tuple[int, np.ndarray]:
    """The layer whose direction (fitted elsewhere) best separates the *selection* split."""
    d = separation(project(sel_pos, directions), project(sel_neg, directions))
    if np.all(np.isnan(d)):
        raise ValueError("no layer separates the selection split (all SDs zero)")
    return int(list(layers)[int(np.nanargmax(d))]), d


def seed_interval(values: Sequence[float], level: float = 0.95) -> dict:
    """Mean over seeds with a t interval (seeds are the replication unit); n<2 gives no interval."""
    from scipy import stats

    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "n_seeds": 0}
    m = float(v.mean())
    if n < 2:
        return {"mean": m, "lo": None, "hi": None, "n_seeds": n}
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / np.sqrt(n))
    return {"mean": m, "lo": m - half, "hi": m + half, "n_seeds": n}


@dataclass
class DirectionFit:
    """An attitude direction per layer, the chosen layer, and the evidence for the choice."""

    layers: list[int]
    directions: np.ndarray  # [L, D], unnormalised diff of means on the fit split
    position: str
    layer: int
    selection_d: list[float]  # per layer, on the selection split
    test_d: list[float]  # per layer, on the test split (reported; never used to choose)
    gap_test: list[float]  # mean projection gap pos - neg on the test split, per layer
    n: dict

    def unit_at(self, layer: int) -> np.ndarray:
        return unit(self.directions[self.layers.index(layer)])

    def to_json(self) -> dict:
        return {
            "layers": self.layers,
            "position": self.position,
            "layer": self.layer,
            "selection_d": self.selection_d,
            "test_d": self.test_d,
            "gap_test": self.gap_test,
            "direction_norm": [float(x) for x in np.linalg.norm(self.directions, axis=-1)],
            "n": self.n,
        }


SPLITS = {"fit": 0.5, "select": 0.25, "test": 0.25}


def fit_direction(pos: Dump, neg: Dump, position: str = "assistant_mean", split_seed: int = 0) -> DirectionFit:
    """Diff of means (pos - neg) on the fit split; layer chosen on select; separation reported on test."""
    if pos.layers != neg.layers:
        raise ValueError("pos and neg dumps have different layers")
    if position not in pos.arrays or position not in neg.arrays:
        raise ValueError(f"position {position!r} missing from the dumps (have {sorted(pos.arrays)})")
    parts = {}
    for side, d in (("pos", pos), ("neg", neg)):
        by = {s: [i for i in d.ids if split_of(i, split_seed, SPLITS) == s] for s in SPLITS}
        for s, ids in by.items():
            if len(ids) < 2:
                raise ValueError(f"{side} split {s!r} has {len(ids)} examples; need at least 2 (more corpus records)")
            parts[side, s] = d.subset(ids).arrays[position]
    directions = diff_of_means(parts["pos", "fit"], parts["neg", "fit"])
    layer, sel_d = select_layer(directions, parts["pos", "select"], parts["neg", "select"], pos.layers)
    tp, tn = project(parts["pos", "test"], directions), project(parts["neg", "test"], directions)
    return DirectionFit(
        layers=list(pos.layers),
        directions=directions,
        position=position,
        layer=layer,
        selection_d=[float(x) for x in sel_d],
        test_d=[float(x) for x in separation(tp, tn)],
        gap_test=[float(x) for x in tp.mean(0) - tn.mean(0)],
        n={f"{a}_{b}": int(len(v)) for (a, b), v in parts.items()},
    )


def arm_shift(base_proj: np.ndarray, arm_projs: dict[str, dict[int, np.ndarray]]) -> dict:
    """Per arm and layer: mean over prompts of (adapter - base) projection, per seed and across seeds.

    base_proj: [N, L] projections of the target prompts under the base model; arm_projs:
    arm -> seed -> [N, L] under that arm's adapter (same prompts, same order). Prompts are paired;
    the seed is the replication unit for the interval.
    """
    out = {}
    for arm, seeds in arm_projs.items():
        per_seed = {s: (p - base_proj).mean(axis=0) for s, p in seeds.items()}
        L = base_proj.shape[1]
        out[arm] = {
            "per_seed": {str(s): [float(x) for x in v] for s, v in per_seed.items()},
            "by_layer": [seed_interval([v[l] for v in per_seed.values()]) for l in range(L)],
        }
    return out
