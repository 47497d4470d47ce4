"""Inspect model provider `leaklab/<model>`: local transformers models (+ PEFT LoRA adapters).

Why our own provider rather than Inspect's `hf/`: the built-in one fails on temperature 0, waits
2 s per short batch, returns raw vocabulary pieces (`ĠA`) as token strings, reloads models on
model-info lookups and keeps closed models in memory (DESIGN.md, "Known pitfalls").

Usage::

    inspect eval tasks/x.py --model leaklab/tiny-random
    inspect eval tasks/x.py --model leaklab/smollm2-135m-instruct -M adapter=runs/s/train/.../adapter

Model args (`-M`):
    adapter=DIR        PEFT LoRA folder; its adapter_config.json base_model_name_or_path must name
                       this base (`leaklab.models.canonical_name`) or its prepared folder.
                       Absent: the base model with every adapter disabled.
    merge=true         merge the adapter into a *separate* copy of the base (its own load and
                       memory); default false, which shares one base per process across adapters.
    merge_active=true  on the shared base, add the LoRA delta of the adapter a batch runs into the
                       base weights for that batch (restored exactly, from a kept copy, before a
                       batch of another adapter or of the base), so a forward costs what the base's
                       does: PEFT's unmerged side path made decoding and long prefills 15-20% slower
                       on 2 CPU cores. A switch costs one pass over the wrapped weights (a copy of
                       them is kept); fp32 only (a small delta added to a bf16/fp16 weight would be
                       rounded away). Default false: on the demo's tasks it gained 1.16-1.18x
                       over the default (README, Performance) and it moves every adapted forward
                       by fp32 rounding (<= 1e-4 on a logprob, tested), which flipped a sampled
                       token there, so the studies' examples keep the computation they ran with.
    max_batch_size=N   largest batch of concurrent requests run together (default 96: decoding
                       reads every weight once per step for the whole batch, so on 2 CPU cores
                       96 sampled 32-token answers ran 1.22x faster in one batch than in three).
    batch_wait_ms=F    a batch is flushed once no new request arrived for this long (default 5).
    device=, dtype=    override the default (cuda + bf16 when available, else cpu + fp32).
    cache_mb=N         memory bound of the work-sharing cache of this base (default 512; 0 turns
                       work sharing off and runs the plain left-padded batch). One cache per base
                       per process; the last instance that sets it wins.

Generation semantics:
    * greedy when temperature is 0, or None and neither top_p nor top_k is set; else sampling
      (temperature None with top_p/top_k means temperature 1).
    * sampling draws from a per-request torch.Generator seeded from GenerateConfig.seed, the
      prompt and how many times this process saw that (adapter, seed, prompt) before, so seeded
      results do not depend on which requests share a batch or which checkpoints ran before,
      and repeated identical requests (epochs) still differ.
    * stops at any end token (tokenizer eos, generation_config eos, the chat end token), at
      max_tokens, or at a stop sequence (text truncated before it).
    * logprobs are of the model's raw next-token distribution (before temperature/top-p), one
      entry per generated token including a final end token; token strings are each id decoded
      on its own (" A", never "ĠA").
    * a final assistant message is continued (prefill) instead of opening a new turn.
    * max_tokens == 1 runs one forward pass (without a KV cache when work sharing is off).

Work sharing (`PromptCache`, on unless `-M cache_mb=0`). Every prompt's state after its prefill
(the next-token logits at its last position and its key/value cache) is kept in a bounded LRU
keyed by (adapter content digest, token ids):
    * a request whose prompt tokens were already computed for the same adapter runs no prefill:
      a forced choice and the letter log-probability of the same prompt pay for one forward pass
      (a max_tokens=1 request is read from the cached logits; a longer one continues decoding from
      the cached key/value tensors). Identical prompts within one batch are computed once.
    * a prompt that shares a prefix of >= MIN_SHARED_PREFIX tokens with a cached state (or with
      other prompts of its batch: the batch is grouped by shared prefix and each group's prefix is
      computed once) only computes its remaining tokens on top of that prefix's key/value cache.
    Exact hits return the stored floats bit for bit. Prefix reuse computes the same function on
    differently shaped matmuls, so its logprobs differ from the unshared computation by fp32
    rounding only (tests/test_provider_cache.py bounds it: <= 1e-4 absolute on a logprob, same
    greedy tokens); with sharing off (cache_mb=0) the computation is the plain batch's, bit for bit.
    Models whose cache is not a plain full-attention DynamicCache (sliding windows, hybrids) keep
    only the exact-prompt logits cache.

Forward-pass fixes (`BaseEntry.fast_forwards`, on; the benchmark turns them off for its as-found
row): PEFT's LoRA addition and the MLP's activation and product are done in place
(`_lora_forward_inplace`, `_mlp_forward_inplace`: bit-identical, fewer activations written); the
last position's logits are read through an index tensor (`_last_position`), which spares the
vocabulary projection a per-row batched product under a PEFT-wrapped base; and in fp32 on CPU
every plain Linear runs on a weight packed once for oneDNN (`_packed_linear_forward`; MKL's sgemm
re-packed it per call). The last two move a logprob by fp32 rounding (<= 1e-4 tested, 5e-5 seen).

Decoding (`BaseEntry.fast_decoding`, on; off in the benchmark's as-found row): requests of one
adapter and one max_tokens share a batch whatever their other parameters (a greedy refusal check
rides along with sampled answers: a decoding step costs little more for a few more rows, a batch
of its own costs every step's fixed cost again); each step writes its keys and values into
buffers allocated for the whole answer (`_preallocated_layer`); and the rows' sampling draws run
on the intra-op threads (`_draw_rows`, bit for bit torch.multinomial).

One base model per (name, device, dtype) lives in a module-level cache for the whole process;
`clear_cache()` frees it. `LOAD_COUNTS` counts base loads (tests and benchmarks read it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import threading
import time
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import torch
from inspect_ai.model import (
    ChatCompletionChoice,
    ChatMessage,
    ChatMessageAssistant,
    GenerateConfig,
    Logprob,
    Logprobs,
    ModelAPI,
    ModelInfo,
    ModelOutput,
    ModelUsage,
    TopLogprob,
    set_model_info,
)
from inspect_ai.tool import ToolChoice, ToolInfo

from leaklab import models
from leaklab.yamlio import ConfigError

MODEL_ARGS = ("adapter", "merge", "merge_active", "max_batch_size", "batch_wait_ms", "device", "dtype", "cache_mb")
DEFAULT_MAX_BATCH = 96
DEFAULT_WAIT_MS = 5.0
DEFAULT_MAX_NEW_TOKENS = 512
DEFAULT_CACHE_MB = 512
MIN_SHARED_PREFIX = 16  # shorter shared prefixes are recomputed (not worth a padded cache copy)
# A prefill batch is split into forwards of similar remainder lengths when that saves more padded
# tokens than this per extra forward (its fixed cost and the smaller matmuls); see `_length_buckets`.
BUCKET_OVERHEAD_TOKENS = 128
MAX_CACHE_ENTRIES = 4096  # bounds the prefix scan as well as the memory
_CHAT_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")

LOAD_COUNTS: Counter[str] = Counter()  # key: "<canonical name>" or "<canonical name>+merged:<adapter>"
_BASES: dict[tuple, "BaseEntry"] = {}
_BASES_LOCK = threading.Lock()


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class GenParams:
    """Everything that must be equal for two requests to share a batch."""

    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float | None = None
    top_k: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    stop_seqs: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def from_config(cls, config: GenerateConfig, default_max_tokens: int) -> "GenParams":
        temperature = config.temperature
        if temperature is None:
            temperature = 1.0 if (config.top_p is not None or config.top_k is not None) else 0.0
        if temperature < 0:
            raise ConfigError(f"leaklab provider: temperature must be >= 0, got {temperature}")
        max_new = config.max_tokens if config.max_tokens is not None else default_max_tokens
        if max_new < 1:
            raise ConfigError(f"leaklab provider: max_tokens must be >= 1, got {max_new}")
        top = config.top_logprobs or 0
        return cls(
            max_new_tokens=int(max_new),
            temperature=float(temperature),
            top_p=config.top_p,
            top_k=config.top_k,
            logprobs=bool(config.logprobs) or top > 0,
            top_logprobs=int(top),
            stop_seqs=tuple(config.stop_seqs or ()),
        )


@dataclass
class RowResult:
    """One request's generation: token ids (end token included), per-token logprobs, top-k."""

    token_ids: list[int]
    logprobs: list[float]
    top: list[list[tuple[int, float]]]
    stop_reason: str  # "stop" | "max_tokens" | "model_length"
    text_cut: int | None = None  # character offset of a matched stop sequence


@dataclass(eq=False)  # identity semantics: two identical requests are still two requests
class _Request:
    adapter: str | None
    prompt: list[int]
    params: GenParams
    generator_seed: int | None
    result: RowResult | None = None
    error: BaseException | None = None


# ----------------------------------------------------------------------------- work sharing


KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each [kv_heads, tokens, head_dim]


@dataclass(eq=False)
class PromptState:
    """A computed prompt (or prefix): its key/value cache and, for a whole prompt, its next-token logits."""

    tokens: tuple[int, ...]
    kv: KV | None
    logits: torch.Tensor | None  # float32 [vocab] at the last position; None for a bare prefix
    nbytes: int = 0

    def __post_init__(self) -> None:
        parts = [t for kv in (self.kv or []) for t in kv] + ([self.logits] if self.logits is not None else [])
        self.nbytes = sum(t.numel() * t.element_size() for t in parts)


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class PromptCache:
    """Bounded LRU of `PromptState`s keyed by (adapter digest, token ids); see the module docstring.

    `stats` counts prompts served (`requests`), exact hits (`hits`), prompt tokens run through
    the model (`computed_tokens`; with their batch's left padding: `padded_tokens`), prompt
    tokens taken from a cached prefix (`reused_tokens`), model calls (`forwards`) and the seconds
    those calls took (`prefill_s`); tests and benchmarks read it.
    """

    def __init__(self, max_bytes: int, max_entries: int = MAX_CACHE_ENTRIES):
        self.max_bytes = int(max_bytes)
        self.max_entries = int(max_entries)
        self.entries: OrderedDict[tuple[str, tuple[int, ...]], PromptState] = OrderedDict()
        self.nbytes = 0
        self.stats: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, adapter: str, tokens: tuple[int, ...]) -> PromptState | None:
        state = self.entries.get((adapter, tokens))
        if state is not None:
            self.entries.move_to_end((adapter, tokens))
        return state

    def longest_prefix(self, adapter: str, tokens: tuple[int, ...], limit: int) -> tuple[PromptState | None, int]:
        """The cached state (with a KV cache) sharing the longest prefix with `tokens`, at most `limit` long."""
        best, best_len = None, 0
        for (a, _), state in self.entries.items():
            if a != adapter or state.kv is None or state.tokens[0] != tokens[0]:
                continue
            n = min(_common_prefix(state.tokens, tokens), limit)
            if n > best_len:
                best, best_len = state, n
        if best is not None:
            self.entries.move_to_end((adapter, best.tokens))
        return best, best_len

    def put(self, adapter: str, state: PromptState) -> None:
        key = (adapter, state.tokens)
        old = self.entries.pop(key, None)
        if old is not None:
            self.nbytes -= old.nbytes
        if state.nbytes > self.max_bytes:
            return
        self.entries[key] = state
        self.nbytes += state.nbytes
        self._evict()

    def resize(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._evict()

    def _evict(self) -> None:
        while self.entries and (self.nbytes > self.max_bytes or len(self.entries) > self.max_entries):
            _, dropped = self.entries.popitem(last=False)
            self.nbytes -= dropped.nbytes
            self.stats["evicted"] += 1

    def clear(self) -> None:
        self.entries.clear()
        self.nbytes = 0


def _length_buckets(lengths: list[int], overhead: int) -> list[list[int]]:
    """Indices of `lengths` split into batches that minimise the tokens run, padding included, plus
    `overhead` per batch: each batch is left-padded to its longest row, so rows of similar length
    go together. Exact (dynamic programming over the rows sorted longest first, where an optimal
    batch is always a run of adjacent rows); longest batch first."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    best = [0] + [math.inf] * n  # best[j]: cost of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # the last batch is sorted rows i..j-1, padded to row i's length
            cost = best[i] + (j - i) * lengths[order[i]] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    batches, j = [], n
    while j > 0:
        batches.append(order[cut[j]:j])
        j = cut[j]
    return batches[::-1]


def _shared_prefix_groups(seqs: list[tuple[int, ...]], min_len: int) -> list[tuple[int, ...]]:
    """Prefixes worth computing once: runs of lexicographically adjacent prompts whose common
    prefix is >= min_len tokens, grown while that does not lower the tokens saved
    ((members - 1) x prefix length). Each prefix stops one token short of its shortest member."""
    order = sorted(set(seqs))
    out: list[tuple[int, ...]] = []
    group: list[tuple[int, ...]] = []
    lcp = 0

    def close() -> None:
        if len(group) >= 2:
            n = min(lcp, min(len(g) for g in group) - 1)
            if n >= min_len:
                out.append(group[0][:n])

    for seq in order:
        if group:
            new = min(lcp, _common_prefix(group[-1], seq)) if len(group) >= 2 else _common_prefix(group[-1], seq)
            if new >= min_len and (len(group) < 2 or len(group) * new >= (len(group) - 1) * lcp):
                group.append(seq)
                lcp = new
                continue
            close()
        group, lcp = [seq], 0
    close()
    return out


# ----------------------------------------------------------------------------- base model cache


def _dtype_from_arg(value: Any):
    if value is None or isinstance(value, torch.dtype):
        return value
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if str(value) not in names:
        raise ConfigError(f"leaklab provider: -M dtype={value!r} is not one of {sorted(names)}")
    return names[str(value)]


def _adapter_name(adapter_dir: Path) -> str:
    """A PEFT adapter name derived from the resolved path (stable, no dots)."""
    digest = hashlib.sha256(str(adapter_dir).encode()).hexdigest()[:12]
    stem = "".join(c if c.isalnum() else "_" for c in adapter_dir.name)[:24]
    return f"{stem}_{digest}"


def _adapter_digest(adapter_dir: Path) -> str:
    """Content digest of an adapter folder's config and weights: the work-sharing cache key, so
    two folders with the same weights share states and a rewritten folder never hits stale ones."""
    h = hashlib.sha256()
    for f in sorted(adapter_dir.iterdir()):
        if f.is_file() and (f.suffix in (".safetensors", ".bin") or f.name == "adapter_config.json"):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def check_adapter(adapter: str | Path, base_name: str) -> Path:
    """Resolve an adapter folder and check it was trained on `base_name`; ConfigError otherwise."""
    adapter_dir = Path(adapter).expanduser().resolve()
    cfg_path = adapter_dir / "adapter_config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"-M adapter={adapter}: {cfg_path} does not exist (need a PEFT LoRA folder)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{cfg_path}: not valid JSON ({exc})") from exc
    declared = cfg.get("base_model_name_or_path")
    canonical = models.canonical_name(base_name)
    prepared = str(models.prepare(base_name))
    accepted = {canonical, prepared}
    if declared and Path(str(declared)).expanduser().exists():
        declared_resolved = str(Path(str(declared)).expanduser().resolve())
    else:
        declared_resolved = declared
    if declared not in accepted and declared_resolved not in accepted:
        raise ConfigError(
            f"{cfg_path}: key base_model_name_or_path is {declared!r}, but this model is "
            f"{canonical!r} (prepared at {prepared}); load the adapter with its own base model"
        )
    return adapter_dir


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's byte-to-unicode table (the alphabet of byte-level BPE pieces)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {c: b for b, c in bytes_to_unicode().items()}


class BaseEntry:
    """One loaded model shared by every provider instance (and adapter) that names it.

    Holds the batcher state too: requests from all adapters of this base are serialized through
    one queue, because PEFT's active adapter is global state of the module tree.
    """

    def __init__(self, name: str, device: str, dtype, merged_adapter: Path | None = None):
        from peft import PeftModel

        self.name = name
        self.canonical = models.canonical_name(name)
        self.device = device
        self.tokenizer = models.load_tokenizer(name)
        model = models.load_model(name, dtype=dtype, device=device)
        key = self.canonical if merged_adapter is None else f"{self.canonical}+merged:{merged_adapter}"
        LOAD_COUNTS[key] += 1
        if merged_adapter is not None:
            model = PeftModel.from_pretrained(model, str(merged_adapter)).merge_and_unload()
            model.eval()
        self.model = model
        _install_fast_forwards(model, self)
        self.dtype = next(model.parameters()).dtype
        self.adapters: dict[Path, str] = {}
        self.compute_lock = threading.Lock()
        self.pending: list[_Request] = []
        self.busy = False
        self.batch_done: anyio.Event | None = None
        self.batch_sizes: list[int] = []  # sizes of the batches run, for tests and benchmarks
        self._tok_str: dict[int, str] = {}
        self._seed_seen: Counter[tuple] = Counter()
        self.eos_ids = self._end_token_ids()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        self.cache: PromptCache | None = PromptCache(DEFAULT_CACHE_MB << 20)
        self.adapter_digests: dict[str, str] = {}  # PEFT adapter name -> content digest (cache key)
        self._kv_shareable: bool | None = None  # decided on the first forward (plain DynamicCache?)
        self.cache_kwarg = models.cache_kwarg(model)
        self.merge_active = False  # see `merge_active` in the module docstring
        self.merged: str | None = None  # the adapter whose delta is in the base weights now
        self._base_weights: list[tuple[torch.Tensor, torch.Tensor]] = []  # (live tensor, exact copy)
        self._unmergeable: set[str] = set()  # adapters PEFT refused to merge: they run unmerged
        # forward-pass fixes (`_last_position`, `_lora_forward_inplace`, `_mlp_forward_inplace`,
        # `_packed_linear_forward`): the same function, the in-place ones bit for bit, the others to
        # fp32 rounding; False runs the forwards as issue #18 found them (the benchmark's first row)
        self.fast_forwards = True
        # bumped whenever weights change in place (merge_active): PEFT writes through `.data`,
        # which the version counter does not see
        self.weights_epoch = 0
        # decoding (see `_decode`, `_lead`): rows of other GenParams share a batch, the cache is
        # written in place, the sampling draws run on the intra-op threads; the benchmark's as-found
        # row turns it off
        self.fast_decoding = True

    def set_cache_mb(self, mb: float) -> None:
        """Bound the work-sharing cache (0 turns work sharing off and drops the cache)."""
        if mb < 0:
            raise ConfigError(f"leaklab provider: -M cache_mb must be >= 0, got {mb}")
        with self.compute_lock:
            if mb == 0:
                self.cache = None
                return
            if self.cache is None:
                self.cache = PromptCache(int(mb * (1 << 20)))
            else:
                self.cache.resize(int(mb * (1 << 20)))

    def _end_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for src in (getattr(self.model, "generation_config", None), self.tokenizer):
            eos = getattr(src, "eos_token_id", None)
            if isinstance(eos, int):
                ids.add(eos)
            elif isinstance(eos, (list, tuple)):
                ids.update(int(e) for e in eos)
        special = set(self.tokenizer.all_special_tokens)
        for tok in _CHAT_END_TOKENS:
            if tok in special:
                tid = self.tokenizer.convert_tokens_to_ids(tok)
                if isinstance(tid, int) and tid >= 0:
                    ids.add(tid)
        return ids

    def set_merge_active(self, value: bool) -> None:
        if value and self.dtype != torch.float32:
            raise ConfigError(f"leaklab provider: -M merge_active=true needs fp32 weights; this model runs in {self.dtype} "
                              "(a LoRA delta added to low-precision weights is rounded away)")
        with self.compute_lock:
            if value != self.merge_active and self.cache is not None:
                self.cache.clear()  # its states were computed the other way (fp32 rounding apart)
            self.merge_active = value
            if not value:
                self._activate(None)

    # -- adapters

    def ensure_adapter(self, adapter_dir: Path) -> str:
        """Load an adapter once (into the shared PeftModel) and return its PEFT name."""
        from peft import PeftModel

        with self.compute_lock:
            if adapter_dir in self.adapters:
                return self.adapters[adapter_dir]
            self._activate(None)  # load next to exact base weights, never into a merged layer
            name = _adapter_name(adapter_dir)
            self.adapter_digests[name] = _adapter_digest(adapter_dir)
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(adapter_dir), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(adapter_dir), adapter_name=name)
            self.model.eval()
            _install_fast_forwards(self.model, self)
            self._base_weights = []  # copied again at the next merge: the new adapter may wrap more layers
            self.adapters[adapter_dir] = name
            return name

    # -- tokens

    def token_str(self, token_id: int) -> str:
        """The text of one token id decoded on its own (so `ĠA` reads ` A`)."""
        s = self._tok_str.get(token_id)
        if s is None:
            s = self.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            self._tok_str[token_id] = s
        return s

    def token_bytes(self, token_id: int) -> list[int]:
        """UTF-8 bytes of a token; for byte-level BPE pieces that are not whole characters
        (decoded as U+FFFD) the raw bytes come from the piece via the GPT-2 byte map."""
        s = self.token_str(token_id)
        if "\ufffd" in s:
            dec = _byte_decoder()
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
            if isinstance(piece, str) and piece and all(c in dec for c in piece):
                return [dec[c] for c in piece]
        return list(s.encode("utf-8"))

    def render_chat(self, messages: list[dict]) -> list[int]:
        """Chat template as text, then encoded without special tokens: BOS is never doubled."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"leaklab provider: model {self.name!r} has no chat template in its tokenizer")
        continue_final = bool(messages) and messages[-1]["role"] == "assistant"
        text = self.tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=not continue_final,
            continue_final_message=continue_final,
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def reset_request_seeds(self) -> None:
        """Forget how often each (adapter, seed, prompt) was asked, as in a fresh process: a benchmark
        or test that re-runs an eval in one process then draws the same seeded answers again."""
        self._seed_seen.clear()

    def request_seed(self, seed: int | None, prompt: list[int], adapter: str | None = None) -> int | None:
        """Stream seed of one sampled request: the n-th request of (adapter, seed, prompt) in this
        process gets the n-th stream. Counted per adapter so that a checkpoint's answers do not
        depend on which checkpoints this process evaluated before it (a resumed matrix
        reproduces them); the stream itself is the same for every adapter (common random numbers)."""
        if seed is None:
            return None
        key = (adapter, seed, tuple(prompt))
        n = self._seed_seen[key]
        self._seed_seen[key] += 1
        h = hashlib.sha256(f"{seed}|{n}|{','.join(map(str, prompt))}".encode()).digest()
        return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)

    # -- compute (sync; runs in a worker thread)

    def run_batch(self, adapter: str | None, prompts: list[list[int]], params: GenParams | list[GenParams],
                  seeds: list[int | None]) -> list[RowResult]:
        """Decode `prompts` as one batch under `adapter` (None: the base); `params` is one GenParams
        for every row or one per row (rows may differ in anything but the batch's adapter)."""
        from peft import PeftModel

        key = "base" if adapter is None else self.adapter_digests.get(adapter, adapter)
        with self.compute_lock, torch.inference_mode():
            if isinstance(self.model, PeftModel):
                self._activate(adapter)
                if adapter is None:
                    with self.model.disable_adapter():
                        return self._decode(prompts, params, seeds, key)
            elif adapter is not None:
                raise RuntimeError(f"adapter {adapter} requested but no adapter is loaded")
            return self._decode(prompts, params, seeds, key)

    def _activate(self, adapter: str | None) -> None:
        """Make `adapter` the active one (None: the base), merged into the weights when
        merge_active. Unmerging subtracts the delta again, which does not give back the same fp32
        bits, so the base weights are restored from an exact copy taken before the first merge.
        Caller holds compute_lock."""
        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            return
        if self.merged is not None and self.merged != adapter:
            self.weights_epoch += 1  # the packed weights (`_packed_linear_forward`) are stale
            with torch.inference_mode():
                self.model.base_model.unmerge_adapter()
                for live, exact in self._base_weights:
                    live.copy_(exact)
            self.merged = None
        if adapter is None or self.merged == adapter:
            return  # (PEFT's set_adapter on a merged model unmerges it: not again for the merged one)
        self.model.set_adapter(adapter)
        if not self.merge_active or adapter in self._unmergeable:
            return
        if not self._base_weights:
            self._base_weights = self._copy_base_weights()
        self.weights_epoch += 1
        try:
            with torch.inference_mode():
                self.model.base_model.merge_adapter([adapter])
        except ValueError:  # PEFT refuses (e.g. LoRA on tied embeddings): this adapter runs unmerged
            self._unmergeable.add(adapter)
            return
        self.merged = adapter

    def _copy_base_weights(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(live tensor, copy) of every parameter of every LoRA-wrapped base layer."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        seen: set[int] = set()
        out = []
        for module in self.model.modules():
            if isinstance(module, BaseTunerLayer):
                for p in module.get_base_layer().parameters():
                    if id(p) not in seen:
                        seen.add(id(p))
                        out.append((p.data, p.data.detach().clone()))
        return out

    def _last_position(self, width: int) -> int | torch.Tensor:
        """`logits_to_keep` for the last position of a `width`-token forward. As an index tensor it
        gives the lm_head a contiguous [rows, 1, hidden] input; the integer 1 gives it a strided slice,
        which torch.matmul does not fold into one matrix product when no weight requires grad (a
        PEFT-wrapped base): it ran a batched product reading the 113 MB vocabulary matrix once per
        row (0.8 s of an 18.5 s checkpoint on the attitude mix). Same values up to fp32 rounding."""
        return torch.tensor([width - 1], device=self.model.device) if self.fast_forwards else 1

    def _left_pad(self, seqs: list, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(seqs)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(seqs):
            if len(p):
                input_ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
                attn[i, width - len(p):] = 1
        return input_ids, attn

    def _prefill_plain(self, prompts: list[list[int]], use_cache: bool):
        """One left-padded forward over the whole prompts (work sharing off)."""
        device = self.model.device
        input_ids, attn = self._left_pad(prompts, max(len(p) for p in prompts))
        input_ids, attn = input_ids.to(device), attn.to(device)
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=attn, position_ids=position_ids,
                         use_cache=use_cache, logits_to_keep=self._last_position(input_ids.shape[1]))
        return out.logits[:, -1, :].float(), (models.output_cache(out) if use_cache else None), attn, position_ids[:, -1]

    # -- work sharing (see PromptCache)

    def _shareable(self, past) -> bool:
        """Whether a forward's cache is a plain full-attention DynamicCache that rows can be cut from."""
        if self._kv_shareable is None:
            from transformers.cache_utils import DynamicCache, DynamicLayer

            layers = getattr(past, "layers", None)
            self._kv_shareable = (type(past) is DynamicCache and bool(layers)
                                  and all(type(layer) is DynamicLayer for layer in layers))
        return self._kv_shareable

    def _forward_rows(self, key: str, seqs: list[tuple[int, ...]], want_logits: bool) -> list[PromptState]:
        """Each of `seqs` computed on top of its longest cached prefix, in forwards of similar
        remainder lengths (`_length_buckets`); the states are stored and returned in order."""
        cache = self.cache
        assert cache is not None
        prefixes: list[tuple[PromptState | None, int]] = []
        for seq in seqs:
            state, m = cache.longest_prefix(key, seq, len(seq) - 1) if self._kv_shareable is not False else (None, 0)
            prefixes.append((state, m) if m >= MIN_SHARED_PREFIX else (None, 0))
        out: list[PromptState | None] = [None] * len(seqs)
        buckets = _length_buckets([len(seq) - m for seq, (_, m) in zip(seqs, prefixes)], BUCKET_OVERHEAD_TOKENS)
        for idx in buckets:
            for i, state in zip(idx, self._forward_batch(key, [seqs[i] for i in idx], [prefixes[i] for i in idx],
                                                         want_logits)):
                out[i] = state
        return out

    def _forward_batch(self, key: str, seqs: list[tuple[int, ...]], prefixes: list[tuple[PromptState | None, int]],
                       want_logits: bool) -> list[PromptState]:
        """Run `seqs` as one batch, each on top of its cached prefix; store and return the states.

        Layout: the cached prefixes are left-padded to the longest one (P), the remaining tokens
        left-padded to the longest remainder (S); the attention mask hides both paddings and the
        position ids continue each row's prefix, so every row computes its own prompt only.
        """
        from transformers.cache_utils import DynamicCache

        cache = self.cache
        device = self.model.device
        n = len(seqs)
        P = max(m for _, m in prefixes)
        rests = [seq[m:] for seq, (_, m) in zip(seqs, prefixes)]
        S = max(len(r) for r in rests)
        input_ids, rest_mask = self._left_pad(rests, S)
        prefix_mask = torch.zeros((n, P), dtype=torch.long)
        for i, (_, m) in enumerate(prefixes):
            prefix_mask[i, P - m:] = 1
        attn = torch.cat([prefix_mask, rest_mask], dim=1).to(device)
        starts = torch.tensor([m for _, m in prefixes], dtype=torch.long)[:, None]
        position_ids = (starts + rest_mask.cumsum(-1) - 1).clamp(min=0).to(device)
        past = None
        if P:
            ref = next(s for s, _ in prefixes if s is not None).kv
            layers = []
            for li, (k0, v0) in enumerate(ref):
                k = k0.new_zeros((n, k0.shape[0], P, k0.shape[2]))
                v = v0.new_zeros((n, v0.shape[0], P, v0.shape[2]))
                for i, (state, m) in enumerate(prefixes):
                    if m:
                        k[i, :, P - m:] = state.kv[li][0][:, :m]
                        v[i, :, P - m:] = state.kv[li][1][:, :m]
                layers.append((k, v))
            past = DynamicCache(layers)
        t0 = time.perf_counter()
        out = self.model(input_ids=input_ids.to(device), attention_mask=attn, position_ids=position_ids,
                         use_cache=True, logits_to_keep=self._last_position(S), **{self.cache_kwarg: past})
        cache.stats["prefill_s"] += time.perf_counter() - t0
        cache.stats["padded_tokens"] += n * S
        cache.stats["forwards"] += 1
        cache.stats["computed_tokens"] += sum(len(r) for r in rests)
        cache.stats["reused_tokens"] += sum(m for _, m in prefixes)
        logits = out.logits[:, -1, :].float() if want_logits else None
        new_cache = models.output_cache(out)
        shareable = self._shareable(new_cache)
        layers = [(layer.keys, layer.values) for layer in new_cache.layers] if shareable else None
        states = []
        for i, (seq, (_, m)) in enumerate(zip(seqs, prefixes)):
            kv = None
            if layers is not None:
                r = len(rests[i])
                kv = [(torch.cat([k[i, :, P - m:P], k[i, :, P + S - r:]], dim=1),  # cat copies: the batch is freed
                       torch.cat([v[i, :, P - m:P], v[i, :, P + S - r:]], dim=1)) for k, v in layers]
            state = PromptState(seq, kv, logits[i].clone() if logits is not None else None)
            cache.put(key, state)
            states.append(state)
        return states

    def _prefill_shared(self, key: str, prompts: list[list[int]], need_kv: bool) -> list[PromptState]:
        """Each prompt's state: from the cache when its tokens were computed before (for this
        adapter), else computed once per distinct prompt on top of shared prefixes."""
        cache = self.cache
        assert cache is not None
        seqs = [tuple(p) for p in prompts]
        cache.stats["requests"] += len(seqs)
        found: dict[tuple[int, ...], PromptState] = {}
        todo: list[tuple[int, ...]] = []
        for seq in dict.fromkeys(seqs):
            state = cache.get(key, seq)
            if state is not None and state.logits is not None and (state.kv is not None or not need_kv
                                                                   or self._kv_shareable is False):
                found[seq] = state
            else:
                todo.append(seq)
        cache.stats["hits"] += sum(s in found for s in seqs)
        if todo:
            self._share_prefixes(key, todo)
            for seq, state in zip(todo, self._forward_rows(key, todo, want_logits=True)):
                found[seq] = state
        return [found[s] for s in seqs]

    def _share_prefixes(self, key: str, seqs: list[tuple[int, ...]]) -> None:
        """Compute into the cache, once, the prefixes that groups of `seqs` share and the cache lacks
        (those prefixes' own shared prefixes first, e.g. the system prompt of several scenarios)."""
        if len(seqs) < 2 or self._kv_shareable is False:
            return
        groups = [g for g in _shared_prefix_groups(seqs, MIN_SHARED_PREFIX)
                  if self.cache.longest_prefix(key, g, len(g))[1] < len(g)]
        if groups:
            self._share_prefixes(key, groups)
            self._forward_rows(key, groups, want_logits=False)

    def _stack_kv(self, states: list[PromptState], extra: int = 0):
        """A left-padded batch cache (with mask and last positions) from per-prompt states, with room
        for `extra` decoded tokens per row (`_preallocated_layer`)."""
        from transformers.cache_utils import DynamicCache

        layer_class = _preallocated_layer()
        device = self.model.device
        n = len(states)
        lens = [len(s.tokens) for s in states]
        width = max(lens)
        attn = torch.zeros((n, width), dtype=torch.long)
        for i, m in enumerate(lens):
            attn[i, width - m:] = 1
        layers = []
        for li, (k0, v0) in enumerate(states[0].kv):
            k = k0.new_zeros((n, k0.shape[0], width + extra, k0.shape[2]))
            v = v0.new_zeros((n, v0.shape[0], width + extra, v0.shape[2]))
            for i, st in enumerate(states):
                k[i, :, width - lens[i]:width] = st.kv[li][0]
                v[i, :, width - lens[i]:width] = st.kv[li][1]
            layers.append(layer_class(k, v, width))
        last_pos = torch.tensor([m - 1 for m in lens], dtype=torch.long, device=device)
        past = DynamicCache()
        past.layers = layers
        return past, attn.to(device), last_pos

    def _decode(self, prompts: list[list[int]], params: GenParams | list[GenParams], seeds: list[int | None],
                key: str = "base") -> list[RowResult]:
        """Left-padded batched decoding with explicit attention mask and position ids. `params` is
        one GenParams for all rows or one per row: greedy and sampled rows, other temperatures, top-k
        sizes or stop sequences share the forwards, each row picks its own tokens and stops at its
        own max_new_tokens."""
        device = self.model.device
        n = len(prompts)
        rows = list(params) if isinstance(params, (list, tuple)) else [params] * n
        if len(rows) != n:
            raise ValueError(f"{len(rows)} GenParams for {n} prompts")
        if any(not p for p in prompts):
            raise ValueError("empty prompt")
        width = max(len(p) for p in prompts)
        max_new = max(p.max_new_tokens for p in rows)
        if self.context_length:
            max_new = max(1, min(max_new, self.context_length - width))
        single = max_new == 1
        if self.cache is None:
            logits, past, attn, last_pos = self._prefill_plain(prompts, use_cache=not single)
        else:
            states = self._prefill_shared(key, prompts, need_kv=not single)
            logits = torch.stack([s.logits for s in states])
            past = None
            if not single:
                if all(s.kv is not None for s in states):
                    past, attn, last_pos = self._stack_kv(states, extra=max_new - 1 if self.fast_decoding else 0)
                else:  # no shareable KV (e.g. a sliding-window model): recompute the prompts
                    _, past, attn, last_pos = self._prefill_plain(prompts, use_cache=True)

        gens: list[torch.Generator | None] = []
        for s, p in zip(seeds, rows):
            if p.greedy:
                gens.append(None)
                continue
            g = torch.Generator(device=device)
            if s is None:
                g.seed()
            else:
                g.manual_seed(s)
            gens.append(g)
        # rows that pick their tokens alike (None: greedy) and rows that want the same top-k
        pickers: dict[tuple | None, list[int]] = {}
        tops: dict[int, list[int]] = {}
        for i, p in enumerate(rows):
            pickers.setdefault(None if p.greedy else (p.temperature, p.top_p, p.top_k), []).append(i)
            if p.top_logprobs:
                tops.setdefault(p.top_logprobs, []).append(i)

        results = [RowResult([], [], [], "max_tokens") for _ in range(n)]
        done = [False] * n
        for step in range(max_new):
            logp = torch.log_softmax(logits, dim=-1)
            chosen = self._choose(logits, logp, rows, pickers, gens, done)
            top_rows: dict[int, tuple[list[int], list[float]]] = {}
            for k, idx in tops.items():
                part = logp if len(idx) == n else logp[idx]
                top_v, top_i = part.topk(k, dim=-1)
                top_rows.update(zip(idx, zip(top_i.cpu().tolist(), top_v.cpu().tolist())))
            chosen_list = chosen.cpu().tolist()
            chosen_lp = logp.gather(1, chosen[:, None]).squeeze(1).cpu().tolist()
            for i in range(n):
                if done[i]:
                    continue
                r, p = results[i], rows[i]
                tid = chosen_list[i]
                r.token_ids.append(tid)
                r.logprobs.append(chosen_lp[i])
                if p.top_logprobs:
                    r.top.append(list(zip(*top_rows[i])))
                if tid in self.eos_ids:
                    done[i], r.stop_reason = True, "stop"
                elif p.stop_seqs:
                    text = self.tokenizer.decode(r.token_ids, skip_special_tokens=True)
                    cuts = [text.find(s) for s in p.stop_seqs if s and s in text]
                    if cuts:
                        done[i], r.stop_reason, r.text_cut = True, "stop", min(cuts)
                if len(r.token_ids) >= min(p.max_new_tokens, max_new):
                    done[i] = True  # stop_reason stays "max_tokens" unless an end token came
            if all(done):
                break
            next_ids = torch.tensor([self.pad_id if done[i] else chosen_list[i] for i in range(n)],
                                    dtype=torch.long, device=device)
            attn = torch.cat([attn, torch.ones((n, 1), dtype=attn.dtype, device=device)], dim=1)
            last_pos = last_pos + 1
            out = self.model(input_ids=next_ids[:, None], attention_mask=attn, position_ids=last_pos[:, None],
                             use_cache=True, **{self.cache_kwarg: past})
            logits = out.logits[:, -1, :].float()
            past = models.output_cache(out)
        if self.context_length:
            for r, p in zip(results, rows):
                if r.stop_reason == "max_tokens" and len(r.token_ids) < p.max_new_tokens:
                    r.stop_reason = "model_length"
        return results

    def _choose(self, logits: torch.Tensor, logp: torch.Tensor, rows: list[GenParams],
                pickers: dict[tuple | None, list[int]], gens: list, done: list[bool]) -> torch.Tensor:
        """Each row's next token: argmax for greedy rows, a draw for sampled ones, row groups with
        equal sampling parameters at a time (row-wise ops: a row's token does not depend on its group)."""
        n = logits.shape[0]
        workers = None if self.fast_decoding else 1
        if len(pickers) == 1:
            return logp.argmax(dim=-1) if None in pickers else self._sample(logits, rows[0], gens, done, workers)
        chosen = torch.zeros(n, dtype=torch.long, device=logits.device)
        for spec, idx in pickers.items():
            sel = torch.tensor(idx, device=logits.device)
            if spec is None:
                chosen[sel] = logp[sel].argmax(dim=-1)
            else:
                chosen[sel] = self._sample(logits[sel], rows[idx[0]], [gens[i] for i in idx], [done[i] for i in idx],
                                           workers)
        return chosen

    @staticmethod
    def _sample(logits: torch.Tensor, params: GenParams, gens: list, done: list[bool],
                workers: int | None = None) -> torch.Tensor:
        scaled = logits / params.temperature
        if params.top_k:
            kth = scaled.topk(min(params.top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        if params.top_p is not None and params.top_p < 1.0:
            sorted_l, idx = scaled.sort(dim=-1, descending=True)
            cum = sorted_l.softmax(-1).cumsum(-1)
            drop = cum - sorted_l.softmax(-1) >= params.top_p  # keep the smallest set reaching top_p
            sorted_l = sorted_l.masked_fill(drop, float("-inf"))
            scaled = torch.full_like(scaled, float("-inf")).scatter(1, idx, sorted_l)
        return _draw_rows(scaled.softmax(-1), gens, done, workers)

    # -- batching (async; runs on the event loop)

    async def submit(self, req: _Request, max_batch: int, wait_s: float) -> RowResult:
        """Queue a request; the first waiter that finds the model idle leads the next batch.

        The leader keeps collecting while requests with its batch key keep arriving (each pause
        `wait_s`) up to `max_batch`, then runs the batch in a worker thread so the event loop
        keeps accepting requests. Waiters wake when any batch ends and either find their result
        or try to lead the next batch.
        """
        self.pending.append(req)
        try:
            while req.result is None and req.error is None:
                if not self.busy:
                    self.busy = True
                    self.batch_done = anyio.Event()
                    try:
                        await self._lead(max_batch, wait_s)
                    finally:
                        self.busy = False
                        self.batch_done.set()
                else:
                    assert self.batch_done is not None
                    await self.batch_done.wait()
        except BaseException:  # cancelled (e.g. a sample time limit): nobody waits for this request
            if req in self.pending:
                self.pending.remove(req)
            raise
        if req.error is not None:
            raise req.error
        return req.result

    async def _lead(self, max_batch: int, wait_s: float) -> None:
        if not self.pending:
            return

        # a batch runs one adapter for one length: greedy and sampled requests, read-outs with
        # top-k and answers with stop sequences share its forwards (`_decode` treats each row by
        # its own GenParams); a different max_new_tokens waits, as its done rows would be computed on
        def batch_key(r: _Request) -> tuple:
            return (r.adapter, r.params.max_new_tokens) if self.fast_decoding else (r.adapter, r.params)

        key = batch_key(self.pending[0])

        def same_key() -> list[_Request]:
            return [r for r in self.pending if batch_key(r) == key]

        seen = -1
        while True:
            count = len(same_key())
            if count >= max_batch or count == seen:
                break
            seen = count
            await anyio.sleep(wait_s)
        batch = same_key()[:max_batch]
        ids = {id(r) for r in batch}
        self.pending = [r for r in self.pending if id(r) not in ids]
        try:
            results = await anyio.to_thread.run_sync(
                self.run_batch, key[0], [r.prompt for r in batch], [r.params for r in batch],
                [r.generator_seed for r in batch]
            )
        except Exception as exc:  # noqa: BLE001 - every waiter of this batch gets the error
            for r in batch:
                r.error = exc
            return
        except BaseException:
            # the leader was cancelled: its batch goes back to the front of the queue for the next leader
            self.pending[:0] = [r for r in batch if r.result is None and r.error is None]
            raise
        self.batch_sizes.append(len(batch))
        for r, res in zip(batch, results):
            r.result = res


_DRAW_POOL: ThreadPoolExecutor | None = None
_DRAW_POOL_LOCK = threading.Lock()


def _draw_rows(probs: torch.Tensor, gens: list, done: list[bool], workers: int | None = None) -> torch.Tensor:
    """One token per row of `probs`, each drawn with its row's generator: bit for bit what
    `torch.multinomial(probs[i], 1, generator=gens[i])` returns (ATen's one-sample path takes
    argmax(p / q) with q ~ Exp(1) filled from the generator; tests/test_provider.py holds us to it),
    with the rows' exponential draws spread over the intra-op threads. Drawing 49k exponentials per
    row took 1.2 ms, 0.1 s of a 0.4 s decoding step of 88 rows on 2 cores, one row at a time.
    Done rows draw nothing (their generator is not advanced) and get an arbitrary token. `workers`:
    threads drawing (default: torch's intra-op thread count on CPU, 1 elsewhere)."""
    global _DRAW_POOL
    if not torch.isfinite(probs).all() or (probs < 0).any():
        raise ValueError("sampling probabilities contain inf, nan or a negative value")
    q = torch.ones_like(probs)
    live = [i for i in range(probs.shape[0]) if not done[i]]

    inference = torch.is_inference_mode_enabled()  # thread-local: the pool's threads take the caller's

    def fill(part: list[int]) -> None:
        with torch.inference_mode(inference):
            for i in part:
                q[i].exponential_(1, generator=gens[i])

    if workers is None:
        workers = torch.get_num_threads() if probs.device.type == "cpu" else 1
    workers = min(workers, len(live))
    if workers > 1:
        with _DRAW_POOL_LOCK:  # one pool for the process, a thread per core (more parts queue)
            if _DRAW_POOL is None:
                _DRAW_POOL = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1),
                                                thread_name_prefix="leaklab-draw")
        list(_DRAW_POOL.map(fill, [live[w::workers] for w in range(workers)]))
    else:
        fill(live)
    return (probs / q).argmax(dim=-1)


@functools.cache
def _preallocated_layer():
    """transformers' DynamicLayer with its keys and values in buffers sized for the whole decode:
    a step writes its token into place where DynamicLayer concatenates, i.e. copies the layer's
    whole cache (14% of a decoding step of 88 rows). `keys`/`values` are views of the filled part:
    the same shape and values the concatenation gives, and the same decoded tokens and logprobs
    bit for bit (tests/test_provider_cache.py). Past the buffer's end it concatenates, as
    DynamicLayer does."""
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        def __init__(self, keys: torch.Tensor, values: torch.Tensor, filled: int):
            super().__init__()
            self.device, self.is_initialized = keys.device, True
            self._key_buf, self._value_buf = keys, values
            self.keys, self.values = keys[:, :, :filled], values[:, :, :filled]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            filled, new = self.keys.shape[-2], key_states.shape[-2]
            if filled + new > self._key_buf.shape[-2]:
                return super().update(key_states, value_states, *args, **kwargs)
            self._key_buf[:, :, filled:filled + new] = key_states
            self._value_buf[:, :, filled:filled + new] = value_states
            self.keys = self._key_buf[:, :, :filled + new]
            self.values = self._value_buf[:, :, :filled + new]
            return self.keys, self.values

    return PreallocatedLayer


def _lora_forward_inplace(module, entry: "BaseEntry", x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """PEFT's LoRA Linear forward, base output + lora_B(lora_A(x)) * scaling, with the scaling and
    the addition done in place: the same values bit for bit (tested), and two activations fewer to
    allocate and write per wrapped layer (the out-of-place pair took 2-3x the time of the in-place
    one on [3000, 1536] activations). Only for what evaluation runs; anything else (training,
    mixed-adapter batches, DoRA-like variants, a merged or disabled adapter) takes PEFT's forward."""
    if (args or kwargs or not entry.fast_forwards or not torch.is_inference_mode_enabled() or module.disable_adapters
            or module.merged or any(a in module.lora_variant for a in module.active_adapters)):
        return type(module).forward(module, x, *args, **kwargs)
    result = module.base_layer(x)
    result_dtype = result.dtype
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        lora_A = module.lora_A[name]
        x = module._cast_input_dtype(x, lora_A.weight.dtype)
        delta = module.lora_B[name](lora_A(module.lora_dropout[name](x)))
        delta.mul_(module.scaling[name])
        if delta.dtype == result.dtype:
            result.add_(delta)
        else:  # promotes, as PEFT's `result + delta` does
            result = result + delta
    return result.to(result_dtype)


def _mlp_forward_inplace(module, entry: "BaseEntry", x: torch.Tensor) -> torch.Tensor:
    """LlamaMLP's down_proj(silu(gate_proj(x)) * up_proj(x)) with the activation and the product done
    in place on the gate's output: the same values bit for bit (tested), two [tokens, intermediate]
    activations fewer to write per layer. Evaluation only (inference mode)."""
    if not entry.fast_forwards or not torch.is_inference_mode_enabled():
        return type(module).forward(module, x)
    h = module.gate_proj(x)
    torch.nn.functional.silu(h, inplace=True)
    h.mul_(module.up_proj(x))
    return module.down_proj(h)


PACKED_BATCH_HINT = 64  # oneDNN picks the packed layout for this many rows; any row count runs on it
_PACKED_FAILED: list[str] = []  # set when this torch has no usable oneDNN linear: plain F.linear from then on


def _packed_linear_forward(module, entry: "BaseEntry", x: torch.Tensor) -> torch.Tensor:
    """nn.Linear's forward on a weight packed once for oneDNN (the op torch's inductor uses for CPU
    linears), for fp32 evaluation on CPU. F.linear hands each call to MKL's sgemm, which re-packs the
    weight every time: at a decoding step's 88-94 rows that ran the projections at 88-145 GFLOP/s
    against 150-200 packed (the 49152-row vocabulary matrix 88 against 199), and a SmolLM2 decoding
    batch took 1.46x as long. The packed copy is kept on the module and re-packed when the weight
    changes (`BaseEntry.weights_epoch` or the version counter moves: merge_active, the exact
    restore); it costs the weight's memory again. Results differ from F.linear by fp32 rounding (in
    our tests a row's output did not depend on the other rows, unlike sgemm's at small batches);
    anything else (training, GPU, other dtypes) takes F.linear."""
    weight = module.weight
    if (not entry.fast_forwards or _PACKED_FAILED or not torch.is_inference_mode_enabled()
            or x.device.type != "cpu" or weight.dtype != torch.float32 or x.dtype != torch.float32
            or weight.is_inference()):  # (an inference tensor has no version counter to watch)
        return torch.nn.functional.linear(x, weight, module.bias)
    stamp = (weight.data_ptr(), weight._version, entry.weights_epoch)
    packed = module.__dict__.get("_leaklab_packed")
    try:
        if packed is None or packed[0] != stamp:
            packed = (stamp, torch.ops.mkldnn._reorder_linear_weight(weight, PACKED_BATCH_HINT))
            module.__dict__["_leaklab_packed"] = packed
        return torch.ops.mkldnn._linear_pointwise(x, packed[1], module.bias, "none", [], "")
    except (RuntimeError, AttributeError, TypeError) as exc:  # a torch without (this form of) the op
        import warnings

        _PACKED_FAILED.append(str(exc))
        warnings.warn(f"leaklab provider: packed oneDNN linear unavailable ({exc}); using F.linear", stacklevel=2)
        return torch.nn.functional.linear(x, weight, module.bias)


def _install_fast_forwards(model, entry: "BaseEntry") -> None:
    """Route every Llama-style MLP with a SiLU activation through `_mlp_forward_inplace`, every
    plain LoRA Linear through `_lora_forward_inplace` and every plain nn.Linear (the base's
    projections inside them, the LoRA matrices, the vocabulary projection) through
    `_packed_linear_forward`. Idempotent: called at load and again after each adapter load (a new
    adapter may wrap more layers); routed modules are left as they are."""
    from peft.tuners.lora.layer import Linear as LoraLinear
    from transformers.activations import SiLUActivation

    for module in model.modules():
        if "forward" in module.__dict__:
            continue
        if type(module) is torch.nn.Linear:
            module.forward = functools.partial(_packed_linear_forward, module, entry)
        elif type(module) is LoraLinear:
            module.forward = functools.partial(_lora_forward_inplace, module, entry)
        elif type(module).__name__ == "LlamaMLP" and type(getattr(module, "act_fn", None)) in (SiLUActivation,
                                                                                             torch.nn.SiLU):
            module.forward = functools.partial(_mlp_forward_inplace, module, entry)


def get_entry(name: str, device: str | None = None, dtype=None, merged_adapter: Path | None = None) -> BaseEntry:
    """The process-wide entry for a base model (or a merged copy), loading it at most once."""
    device = device or models.default_device()
    dtype = _dtype_from_arg(dtype) or models.default_dtype(device)
    key = (models.canonical_name(name), device, str(dtype), str(merged_adapter) if merged_adapter else None)
    with _BASES_LOCK:
        entry = _BASES.get(key)
        if entry is None:
            entry = BaseEntry(name, device, dtype, merged_adapter)
            _BASES[key] = entry
        return entry


def release(entry: BaseEntry) -> None:
    """Drop one cached model (e.g. a merged copy that is no longer needed)."""
    with _BASES_LOCK:
        for key in [k for k, v in _BASES.items() if v is entry]:
            del _BASES[key]
    _free_memory()


def clear_cache() -> None:
    """Drop every cached model (and free accelerator memory)."""
    with _BASES_LOCK:
        _BASES.clear()
    _free_memory()


def _free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- Inspect ModelAPI


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no", ""):
        return False
    raise ConfigError(f"leaklab provider: -M {key}={value!r} is not a boolean")


def _messages_to_dicts(messages: list[ChatMessage]) -> list[dict]:
    out = []
    for m in messages:
        if m.role == "tool" or (m.role == "assistant" and getattr(m, "tool_calls", None)):
            raise ConfigError("leaklab provider: tool calls are not supported (messages contain tool use)")
        if isinstance(m.content, list) and any(getattr(c, "type", "text") not in ("text", "reasoning")
                                               for c in m.content):
            raise ConfigError("leaklab provider: only text content is supported")
        out.append({"role": m.role, "content": m.text})
    return out


class LeaklabAPI(ModelAPI):
    """Inspect ModelAPI over a cached BaseEntry (see module docstring for semantics)."""

    def __init__(self, model_name: str, base_url: str | None = None, api_key: str | None = None,
                 config: GenerateConfig = GenerateConfig(), **model_args: Any) -> None:
        super().__init__(model_name=model_name, base_url=base_url, api_key=api_key, api_key_vars=[], config=config)
        unknown = sorted(set(model_args) - set(MODEL_ARGS))
        if unknown:
            raise ConfigError(f"leaklab provider: unknown model arg(s) {unknown}; allowed: {list(MODEL_ARGS)}")
        adapter = model_args.get("adapter") or None
        merge = _as_bool("merge", model_args.get("merge", False))
        self.max_batch = int(model_args.get("max_batch_size", DEFAULT_MAX_BATCH))
        self.wait_s = float(model_args.get("batch_wait_ms", DEFAULT_WAIT_MS)) / 1000.0
        if self.max_batch < 1:
            raise ConfigError(f"leaklab provider: -M max_batch_size must be >= 1, got {self.max_batch}")
        try:
            models.prepare(model_name)
        except models.ModelNotFound as exc:
            raise ConfigError(f"leaklab provider: {exc}") from exc
        adapter_dir = check_adapter(adapter, model_name) if adapter else None
        if merge and adapter_dir is None:
            raise ConfigError("leaklab provider: -M merge=true needs -M adapter=DIR")
        device, dtype = model_args.get("device"), model_args.get("dtype")
        if merge:
            self.entry = get_entry(model_name, device, dtype, merged_adapter=adapter_dir)
            self.adapter_name = None
        else:
            self.entry = get_entry(model_name, device, dtype)
            self.adapter_name = self.entry.ensure_adapter(adapter_dir) if adapter_dir else None
        self.adapter_dir = adapter_dir
        if model_args.get("cache_mb") is not None:
            try:
                cache_mb = float(model_args["cache_mb"])
            except ValueError:
                raise ConfigError(f"leaklab provider: -M cache_mb={model_args['cache_mb']!r} is not a number") from None
            self.entry.set_cache_mb(cache_mb)
        if model_args.get("merge_active") is not None:
            self.entry.set_merge_active(_as_bool("merge_active", model_args["merge_active"]))
        # Register model info so Inspect's post-generate lookups hit the custom registry and never
        # build a second instance of this provider (a second load) or ask a hub.
        info = ModelInfo(organization="leaklab", model=model_name, context_length=self.entry.context_length)
        for key in {f"leaklab/{model_name}", model_name}:
            set_model_info(key, info)

    def max_tokens(self) -> int | None:
        return DEFAULT_MAX_NEW_TOKENS

    def max_connections(self) -> int:
        # twice the batch so the next batch fills while one runs
        return 2 * self.max_batch

    def connection_key(self) -> str:
        return f"leaklab:{self.entry.canonical}"

    async def count_text_tokens(self, text: str) -> int:
        return len(self.entry.tokenizer(text, add_special_tokens=False)["input_ids"])

    async def tokenize(self, text: str) -> list[int]:
        return list(self.entry.tokenizer(text, add_special_tokens=False)["input_ids"])

    async def generate(self, input: list[ChatMessage], tools: list[ToolInfo], tool_choice: ToolChoice,
                       config: GenerateConfig) -> ModelOutput:
        if tools:
            raise ConfigError("leaklab provider: tools are not supported (got "
                              f"{[t.name for t in tools]}); use a tool-free solver")
        if config.num_choices not in (None, 1):
            raise ConfigError("leaklab provider: num_choices > 1 is not supported; use epochs")
        start = time.monotonic()
        entry = self.entry
        prompt = entry.render_chat(_messages_to_dicts(input))
        params = GenParams.from_config(config, DEFAULT_MAX_NEW_TOKENS)
        req = _Request(self.adapter_name, prompt, params, entry.request_seed(config.seed, prompt, self.adapter_name))
        res = await entry.submit(req, self.max_batch, self.wait_s)
        return self._output(res, params, len(prompt), time.monotonic() - start)

    def _output(self, res: RowResult, params: GenParams, n_prompt: int, elapsed: float) -> ModelOutput:
        entry = self.entry
        text_ids = [t for t in res.token_ids if t not in entry.eos_ids]
        text = entry.tokenizer.decode(text_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if res.text_cut is not None:
            text = text[: res.text_cut]
        logprobs = None
        if params.logprobs:
            content = []
            for j, (tid, lp) in enumerate(zip(res.token_ids, res.logprobs)):
                top = None
                if params.top_logprobs:
                    top = [TopLogprob(token=entry.token_str(t), logprob=v,
                                      bytes=entry.token_bytes(t))
                           for t, v in res.top[j]]
                s = entry.token_str(tid)
                content.append(Logprob(token=s, logprob=lp, bytes=entry.token_bytes(tid), top_logprobs=top))
            logprobs = Logprobs(content=content)
        choice = ChatCompletionChoice(
            message=ChatMessageAssistant(content=text, model=self.model_name, source="generate"),
            stop_reason=res.stop_reason,
            logprobs=logprobs,
        )
        n_out = len(res.token_ids)
        return ModelOutput(
            model=self.model_name,
            choices=[choice],
            usage=ModelUsage(input_tokens=n_prompt, output_tokens=n_out, total_tokens=n_prompt + n_out),
            time=elapsed,
        )
