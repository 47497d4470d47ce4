"""Work sharing in the `leaklab/` provider (leaklab/provider.py, PromptCache): identical prompts
computed once per adapter, shared prefixes computed once, results equal to the unshared
computation (bit for bit on exact hits, fp32 rounding on prefix reuse), memory bounded."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest
import torch

from leaklab import provider
from leaklab.provider import GenParams, PromptCache, PromptState, _length_buckets, _shared_prefix_groups

LETTER = GenParams(max_new_tokens=1, logprobs=True, top_logprobs=20)  # the letter read-out
CHOICE = GenParams(max_new_tokens=6)  # the forced choice (greedy, a few tokens)

SCENARIOS = [
    "Our town is considering a four-day work week trial for council staff, starting next spring.",
    "The city plans free public transit for a year, paid for by a parking levy downtown.",
]
QUESTION = "Should the council go ahead with the change?"


def _choice_prompt(entry, scenario: str, order: int) -> list[int]:
    a, b = ("Go ahead with it", "Do not do it") if order == 0 else ("Do not do it", "Go ahead with it")
    text = f"{scenario}\n\n{QUESTION}\n\nA. {a}\nB. {b}\n\nReply with the letter of your choice, A or B."
    return entry.render_chat([{"role": "user", "content": text}])


@pytest.fixture
def entry(varied_dir):
    e = provider.get_entry(str(varied_dir), device="cpu")
    e.set_cache_mb(0)
    e.set_cache_mb(64)  # a fresh, empty cache
    yield e
    e.set_cache_mb(0)
    e.set_cache_mb(provider.DEFAULT_CACHE_MB)


def _plain(entry, prompts, params, seeds=None):
    """The same batch with work sharing off (today's computation)."""
    keep = entry.cache
    entry.cache = None
    try:
        return entry.run_batch(None, prompts, params, seeds or [None] * len(prompts))
    finally:
        entry.cache = keep


def _same(a, b):
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.logprobs for r in a] == [r.logprobs for r in b]
    assert [r.top for r in a] == [r.top for r in b]
    assert [r.stop_reason for r in a] == [r.stop_reason for r in b]


def test_shared_prefix_groups_hand_computed():
    sys_ = tuple(range(100, 120))  # 20 tokens shared by all (a system prompt)
    x1, x2 = sys_ + tuple(range(40)) + (1, 2), sys_ + tuple(range(40)) + (3, 4, 5)
    y1, y2 = sys_ + (7,) * 30 + (1,), sys_ + (7,) * 30 + (2,)
    z = (9, 9, 9)
    groups = _shared_prefix_groups([x1, x2, y1, y2, z, x1], min_len=16)
    assert sorted(groups) == sorted([x1[:60], y1[:50]])
    # the two group prefixes share the system prompt: one outer group of 20 tokens
    assert _shared_prefix_groups(groups, min_len=16) == [sys_]
    assert _shared_prefix_groups([x1, x2], min_len=61) == []  # shorter than min_len: not grouped
    # a prefix stops one token short of its shortest member (its logits need a computed token)
    assert _shared_prefix_groups([x1[:60], x1], min_len=16) == [x1[:59]]


def test_length_buckets_hand_computed():
    # one long row among short ones: alone 100 + 50, the rest 20 x 10 + 50 = 400 < 21 x 100 + 50
    assert _length_buckets([10] * 10 + [100] + [10] * 10, overhead=50) == [[10], list(range(10)) + list(range(11, 21))]
    # close lengths stay together: 2 x 100 + 128 = 328 < 100 + 90 + 2 x 128 = 446
    assert _length_buckets([90, 100], overhead=128) == [[1, 0]]
    # three levels, each worth its own forward at overhead 10: 3 x 60 + 3 x 30 + 3 x 5 + 30 = 315
    lengths = [5, 60, 30, 5, 60, 30, 5, 60, 30]
    assert _length_buckets(lengths, overhead=10) == [[1, 4, 7], [2, 5, 8], [0, 3, 6]]
    assert _length_buckets(lengths, overhead=1000) == [[1, 4, 7, 2, 5, 8, 0, 3, 6]]  # one forward
    assert _length_buckets([], overhead=10) == []


def test_rows_of_different_lengths_run_in_separate_forwards(entry, monkeypatch):
    """Short prompts beside long ones are not padded to their length: they get their own forward
    (fewer padded tokens, more forwards than one batch), and every row's read-out equals the
    unshared computation within fp32 noise."""
    long_ = [_choice_prompt(entry, s, o) for s in SCENARIOS for o in (0, 1)]
    short = [entry.render_chat([{"role": "user", "content": w}]) for w in ("Hi", "Yes?", "Go")]
    prompts = long_ + short
    assert min(map(len, long_)) > 2 * max(map(len, short))

    def run(overhead):
        monkeypatch.setattr(provider, "BUCKET_OVERHEAD_TOKENS", overhead)
        entry.set_cache_mb(0)
        entry.set_cache_mb(64)
        out = entry.run_batch(None, prompts, LETTER, [None] * len(prompts))
        return out, dict(entry.cache.stats)

    one, st_one = run(10 ** 9)  # never split: every forward one padded batch, as before bucketing
    split, st_split = run(4)
    assert st_split["padded_tokens"] < st_one["padded_tokens"] and st_split["forwards"] > st_one["forwards"]
    assert st_split["computed_tokens"] == st_one["computed_tokens"]
    ref = _plain(entry, prompts, LETTER)
    for a, b, c in zip(split, one, ref):
        assert a.token_ids == b.token_ids == c.token_ids
        assert a.logprobs[0] == pytest.approx(c.logprobs[0], abs=1e-4)
        assert a.logprobs[0] == pytest.approx(b.logprobs[0], abs=1e-4)


def test_no_sharing_is_bit_identical_to_plain(entry):
    """Prompts with no common prefix: the shared path runs today's single left-padded forward."""
    prompts = [[5, 6, 7, 8, 9], [40, 41, 42], [70, 71, 72, 73, 74, 75, 76, 77]]
    shared = entry.run_batch(None, prompts, CHOICE, [None] * 3)
    assert entry.cache.stats["forwards"] == 1 and entry.cache.stats["reused_tokens"] == 0
    _same(shared, _plain(entry, prompts, CHOICE))
    shared1 = entry.run_batch(None, prompts, LETTER, [None] * 3)
    _same(shared1, _plain(entry, prompts, LETTER))


def test_identical_prompt_runs_one_prefill(entry, monkeypatch):
    """Letter read-out then forced choice on the same prompts: the second needs no prefill, and
    both equal the unshared computation bit for bit."""
    prompts = [_choice_prompt(entry, s, o) for s in SCENARIOS for o in (0, 1)]
    plain_letter, plain_choice = _plain(entry, prompts, LETTER), _plain(entry, prompts, CHOICE)
    calls = []
    real_forward = entry.model.forward

    def counting_forward(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape)
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(entry.model, "forward", counting_forward)
    monkeypatch.setattr(provider, "MIN_SHARED_PREFIX", 10_000)  # exact hits only in this test
    letter = entry.run_batch(None, prompts, LETTER, [None] * 4)
    assert len(calls) == 1
    _same(letter, plain_letter)
    calls.clear()
    choice = entry.run_batch(None, prompts, CHOICE, [None] * 4)
    assert all(shape[1] == 1 for shape in calls)  # decode steps only: no prompt recomputed
    assert len(calls) <= CHOICE.max_new_tokens - 1
    _same(choice, plain_choice)
    calls.clear()
    again = entry.run_batch(None, prompts + prompts[:1], LETTER, [None] * 5)  # duplicates too
    assert calls == []
    _same(again, plain_letter + plain_letter[:1])
    assert entry.cache.stats["hits"] == 4 + 5


def test_duplicates_in_one_batch_are_computed_once(entry):
    p = _choice_prompt(entry, SCENARIOS[0], 0)
    out = entry.run_batch(None, [p, p, p], LETTER, [None] * 3)
    st = entry.cache.stats
    assert st["computed_tokens"] == st["padded_tokens"] == len(p) and st["forwards"] == 1 and st["prefill_s"] > 0
    # the batch ran one row: bit-identical to the prompt run alone (a batch of three identical rows
    # differs from it by fp32 rounding of the differently shaped matmuls, as any batching does)
    _same(out, _plain(entry, [p], LETTER) * 3)
    for a, b in zip(out, _plain(entry, [p, p, p], LETTER)):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_shared_prefix_is_computed_once_and_within_fp32_noise(entry):
    """The two option orders of an item share the system prompt, scenario and question: computed
    once; the rest on top of its key/value cache. Same greedy tokens, logprobs within 1e-4."""
    prompts = [_choice_prompt(entry, s, o) for s in SCENARIOS for o in (0, 1)]
    common = provider._common_prefix(tuple(prompts[0]), tuple(prompts[1]))
    assert common >= 30
    out = entry.run_batch(None, prompts, CHOICE, [None] * 4)
    st = entry.cache.stats
    assert st["reused_tokens"] >= 2 * common  # both orders of both items ran on a shared prefix
    assert st["computed_tokens"] < sum(len(p) for p in prompts) - common
    ref = _plain(entry, prompts, CHOICE)
    assert [r.token_ids for r in out] == [r.token_ids for r in ref]
    for a, b in zip(out, ref):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    # a later prompt sharing the scenario (another measure) reuses the cached prefix
    before = st["reused_tokens"]
    other = entry.render_chat([{"role": "user", "content": f"{SCENARIOS[0]}\n\n{QUESTION} One word:"}])
    (o,) = entry.run_batch(None, [other], LETTER, [None])
    assert st["reused_tokens"] - before >= 30
    (r,) = _plain(entry, [other], LETTER)
    assert o.token_ids == r.token_ids and o.logprobs[0] == pytest.approx(r.logprobs[0], abs=1e-4)
    assert [t for t, _ in o.top[0][:5]] == [t for t, _ in r.top[0][:5]]


def test_seeded_sampling_from_cached_state_is_reproducible(entry):
    prompts = [_choice_prompt(entry, s, 0) for s in SCENARIOS]
    params = GenParams(max_new_tokens=4, temperature=1.0)
    first = entry.run_batch(None, prompts, params, [3, 4])
    again = entry.run_batch(None, prompts, params, [3, 4])  # exact hits now
    assert [r.token_ids for r in first] == [r.token_ids for r in again]
    assert [r.token_ids for r in first] == [r.token_ids for r in _plain(entry, prompts, params, [3, 4])]


def test_memory_is_bounded():
    cache = PromptCache(max_bytes=3 * 4 * 10)  # three states of ten float32 logits
    for i in range(5):
        cache.put("a", PromptState((i,), None, torch.zeros(10)))
    assert len(cache) == 3 and cache.nbytes <= cache.max_bytes and cache.stats["evicted"] == 2
    assert cache.get("a", (0,)) is None and cache.get("a", (4,)) is not None
    cache.get("a", (2,))  # touched: the least recently used is now (3,)
    cache.put("a", PromptState((5,), None, torch.zeros(10)))
    assert cache.get("a", (3,)) is None and cache.get("a", (2,)) is not None
    cache.put("a", PromptState((6,), None, torch.zeros(100)))  # larger than the bound: not kept
    assert cache.get("a", (6,)) is None and cache.nbytes <= cache.max_bytes
    cache.resize(0)
    assert len(cache) == 0 and cache.nbytes == 0


def test_entry_cache_stays_within_its_bound(entry):
    entry.set_cache_mb(0.05)  # ~50 kB: a handful of states of the tiny model
    prompts = [_choice_prompt(entry, f"{s} Variant {i}.", 0) for i in range(6) for s in SCENARIOS]
    entry.run_batch(None, prompts, LETTER, [None] * len(prompts))
    assert entry.cache.nbytes <= entry.cache.max_bytes and entry.cache.stats["evicted"] > 0


def test_states_are_keyed_by_adapter_content(varied_dir, tmp_path, entry):
    from inspect_ai.model import get_model
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(varied_dir, dtype=torch.float32),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    a = tmp_path / "a"
    peft_model.save_pretrained(a)
    cfg = json.loads((a / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(varied_dir)
    (a / "adapter_config.json").write_text(json.dumps(cfg))
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    assert provider._adapter_digest(a) == provider._adapter_digest(copy)
    ma = get_model(f"leaklab/{varied_dir}", adapter=str(a), device="cpu", memoize=False)
    assert ma.api.entry is entry
    name = ma.api.adapter_name
    p = _choice_prompt(entry, SCENARIOS[0], 0)
    (base,) = entry.run_batch(None, [p], LETTER, [None])
    (ad,) = entry.run_batch(name, [p], LETTER, [None])
    assert base.top != ad.top  # no cross-adapter hit
    assert entry.cache.stats["hits"] == 0
    mc = get_model(f"leaklab/{varied_dir}", adapter=str(copy), device="cpu", memoize=False)
    (ad2,) = entry.run_batch(mc.api.adapter_name, [p], LETTER, [None])
    assert entry.cache.stats["hits"] == 1 and ad2.top == ad.top  # same weights: same states


def test_cache_mb_model_arg(varied_dir):
    from inspect_ai.model import get_model

    from leaklab.yamlio import ConfigError

    m = get_model(f"leaklab/{varied_dir}", device="cpu", cache_mb=0, memoize=False)
    assert m.api.entry.cache is None
    m = get_model(f"leaklab/{varied_dir}", device="cpu", cache_mb="8", memoize=False)
    assert m.api.entry.cache.max_bytes == 8 << 20
    with pytest.raises(ConfigError, match="cache_mb"):
        get_model(f"leaklab/{varied_dir}", device="cpu", cache_mb="lots", memoize=False)
    m.api.entry.set_cache_mb(provider.DEFAULT_CACHE_MB)


def test_through_inspect_letter_and_choice_share_the_prefill(varied_dir, entry):
    """Two measures of one prompt issued through Inspect's generate: one prefill per prompt."""
    from inspect_ai.model import ChatMessageUser, GenerateConfig, get_model

    m = get_model(f"leaklab/{varied_dir}", device="cpu", memoize=False)
    texts = [f"{s}\n\n{QUESTION}\n\nA. Yes\nB. No" for s in SCENARIOS]
    letter = GenerateConfig(temperature=0, max_tokens=1, logprobs=True, top_logprobs=20)
    choice = GenerateConfig(temperature=0, max_tokens=4)

    async def both():
        return await asyncio.gather(*[m.generate([ChatMessageUser(content=t)], config=c)
                                      for c in (letter, choice) for t in texts])

    outs = asyncio.run(both())
    st = entry.cache.stats
    assert st["requests"] == 4 and st["hits"] == 2
    for lo, co in zip(outs[:2], outs[2:]):
        first = lo.choices[0].logprobs.content[0].token
        assert co.completion.startswith(first) or first in entry.tokenizer.all_special_tokens


def test_decoding_writes_its_cache_in_place_with_the_concatenation_s_results(entry, monkeypatch):
    """Decoding from shared states writes each step's keys and values into buffers allocated for
    the whole answer (`_preallocated_layer`); tokens, logprobs and top-k equal, bit for bit, a
    decode whose buffers have no room (every step concatenates, as transformers' DynamicLayer)."""
    prompts = [_choice_prompt(entry, s, o) for s in SCENARIOS for o in (0, 1)]
    params = GenParams(max_new_tokens=7, temperature=1.0, logprobs=True, top_logprobs=3)
    real = provider.BaseEntry._stack_kv
    made = []

    def spy(self, states, extra=0):
        made.append(real(self, states, extra))
        return made[-1]

    monkeypatch.setattr(provider.BaseEntry, "_stack_kv", spy)
    in_place = entry.run_batch(None, prompts, params, [1, 2, 3, 4])
    layer = made[0][0].layers[0]
    width = made[0][1].shape[1]
    assert layer.keys.data_ptr() == layer._key_buf.data_ptr()  # still the buffer: no concatenation
    assert layer.keys.shape[-2] == width + max(len(r.token_ids) for r in in_place) - 1
    monkeypatch.setattr(provider.BaseEntry, "_stack_kv", lambda self, states, extra=0: real(self, states, 0))
    entry.reset_request_seeds()
    _same(in_place, entry.run_batch(None, prompts, params, [1, 2, 3, 4]))
