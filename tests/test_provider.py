"""Tests for the Inspect provider `leaklab/<model>` (leaklab/provider.py).

The prepared tiny-random model puts almost all its mass on "\\n", so the decoding tests use a
second random Llama with a wide initialisation (`varied_dir`) whose greedy outputs differ per
prompt and per step; that makes "same tokens" and "outputs differ" assertions meaningful.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from leaklab import models, provider
from leaklab.provider import GenParams
from leaklab.yamlio import ConfigError

PROMPTS = [
    "Hi",
    "A or B? Choose one letter only please.",
    "What is the capital of France, and why is it there? Answer in one long sentence.",
    "Say something.",
]


def _make_adapter(base_dir: Path, out: Path, seed: int, declared_base: str | None) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, cfg)
    peft_model.save_pretrained(out)
    if declared_base is not None:
        cfg_path = out / "adapter_config.json"
        data = json.loads(cfg_path.read_text())
        data["base_model_name_or_path"] = declared_base
        cfg_path.write_text(json.dumps(data))
    return out


@pytest.fixture(scope="module")
def adapters(varied_dir, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("adapters")
    a = _make_adapter(varied_dir, root / "A", 1, str(varied_dir))  # declared as the canonical path
    b = _make_adapter(varied_dir, root / "B", 2, None)  # whatever peft wrote (the folder it loaded)
    return a, b


@pytest.fixture(scope="module")
def entry(varied_dir):
    """The varied model with work sharing off: these tests check the computation itself
    (tests/test_provider_cache.py checks the sharing against it)."""
    e = provider.get_entry(str(varied_dir), device="cpu")
    e.set_cache_mb(0)
    yield e
    e.set_cache_mb(provider.DEFAULT_CACHE_MB)


def _prompts(entry):
    return [entry.render_chat([{"role": "user", "content": p}]) for p in PROMPTS]


GREEDY8 = GenParams(max_new_tokens=8, logprobs=True, top_logprobs=5)


def test_greedy_is_deterministic(entry):
    prompts = _prompts(entry)
    r1 = entry.run_batch(None, prompts, GREEDY8, [None] * len(prompts))
    r2 = entry.run_batch(None, prompts, GREEDY8, [None] * len(prompts))
    assert [r.token_ids for r in r1] == [r.token_ids for r in r2]
    assert [r.logprobs for r in r1] == [r.logprobs for r in r2]
    assert len({tuple(r.token_ids) for r in r1}) == len(prompts)  # the varied model really varies


def test_batch_equals_single(entry):
    prompts = _prompts(entry)
    assert len({len(p) for p in prompts}) > 1  # different lengths, so left padding is exercised
    batched = entry.run_batch(None, prompts, GREEDY8, [None] * len(prompts))
    for p, b in zip(prompts, batched):
        (s,) = entry.run_batch(None, [p], GREEDY8, [None])
        assert s.token_ids == b.token_ids
        assert s.logprobs == pytest.approx(b.logprobs, abs=1e-4)
        for ts, tb in zip(s.top, b.top):
            assert [t for t, _ in ts] == [t for t, _ in tb]


def test_decoding_matches_transformers_generate(entry):
    """Our KV-cache loop reproduces HF greedy generate token for token, logprobs included."""
    (p,) = _prompts(entry)[2:3]
    (ours,) = entry.run_batch(None, [p], GREEDY8, [None])
    with torch.inference_mode():
        ref = entry.model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                   max_new_tokens=8, do_sample=False, output_logits=True,
                                   return_dict_in_generate=True, eos_token_id=sorted(entry.eos_ids),
                                   pad_token_id=entry.pad_id)
    ref_ids = ref.sequences[0, len(p):].tolist()
    assert ours.token_ids == ref_ids
    ref_lp = [torch.log_softmax(lg[0].float(), -1)[t].item() for lg, t in zip(ref.logits, ref_ids)]
    assert ours.logprobs == pytest.approx(ref_lp, abs=1e-4)


def test_single_forward_equals_first_generated_token(entry, monkeypatch):
    prompts = _prompts(entry)
    long = entry.run_batch(None, prompts, GenParams(max_new_tokens=5, logprobs=True, top_logprobs=20), [None] * 4)
    calls = []
    real_forward = entry.model.forward

    def counting_forward(*args, **kwargs):
        calls.append(kwargs.get("use_cache"))
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(entry.model, "forward", counting_forward)
    one = entry.run_batch(None, prompts, GenParams(max_new_tokens=1, logprobs=True, top_logprobs=20), [None] * 4)
    assert calls == [False]  # exactly one forward, no KV cache
    for lg, sh in zip(long, one):
        assert sh.token_ids == lg.token_ids[:1]
        assert sh.logprobs[0] == pytest.approx(lg.logprobs[0], abs=1e-5)
        assert [t for t, _ in sh.top[0]] == [t for t, _ in lg.top[0]]
        assert sh.stop_reason == "max_tokens"


def test_key_value_cache_passed_under_the_current_name(entry):
    """transformers renamed the forward's `past_key_values` to `cache` (the old name warns on every
    call and is removed in 5.40, inside our pin): decoding, plain and from shared prefixes, uses
    whichever name the installed version takes."""
    import warnings

    prompts = _prompts(entry)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".past_key_values", category=FutureWarning)
        plain = entry.run_batch(None, prompts, GREEDY8, [None] * len(prompts))
        entry.set_cache_mb(64)
        try:
            shared = entry.run_batch(None, prompts + prompts[:1], GREEDY8, [None] * (len(prompts) + 1))
        finally:
            entry.set_cache_mb(0)
    assert [r.token_ids for r in shared[:-1]] == [r.token_ids for r in plain]
    assert all(len(r.token_ids) > 1 for r in plain)  # decoding ran on the returned cache


def test_logprobs_are_normalised_log_probabilities(entry):
    (r,) = entry.run_batch(None, _prompts(entry)[:1], GenParams(max_new_tokens=1, top_logprobs=20), [None])
    top = r.top[0]
    assert r.token_ids[0] == top[0][0] and r.logprobs[0] == pytest.approx(top[0][1])
    assert all(a[1] >= b[1] for a, b in zip(top, top[1:]))
    assert 0 < sum(math.exp(v) for _, v in top) <= 1 + 1e-6


def test_render_chat_has_one_bos_and_matches_template_tokenisation(entry):
    tok = entry.tokenizer
    ids = entry.render_chat([{"role": "user", "content": "A or B?"}])
    assert ids.count(tok.bos_token_id) == ids.count(tok.convert_tokens_to_ids("<|im_start|>"))
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    ref = tok.apply_chat_template([{"role": "user", "content": "A or B?"}], tokenize=True,
                                  add_generation_prompt=True, return_dict=False)
    assert ids == list(ref)
    # a final assistant message is continued, not closed
    pre = entry.render_chat([{"role": "user", "content": "A or B?"}, {"role": "assistant", "content": "Answer:"}])
    assert tok.decode(pre).endswith("Answer:")


def test_token_strings_are_decoded_not_vocab_pieces(entry):
    tok = entry.tokenizer
    a_id = tok.convert_tokens_to_ids("ĠA")
    assert entry.token_str(a_id) == " A"
    assert entry.token_bytes(a_id) == [32, 65]
    rs = entry.run_batch(None, _prompts(entry), GenParams(max_new_tokens=4, top_logprobs=20), [None] * 4)
    strings = [entry.token_str(t) for r in rs for step in r.top for t, _ in step]
    assert strings and not any("Ġ" in s or "Ċ" in s for s in strings)


def test_seeded_sampling_reproducible_and_batch_independent(entry):
    prompts = _prompts(entry)
    params = GenParams(max_new_tokens=6, temperature=1.0)
    seeds = [11, 12, 13, 14]
    batched = entry.run_batch(None, prompts, params, seeds)
    single = [entry.run_batch(None, [p], params, [s])[0] for p, s in zip(prompts, seeds)]
    assert [r.token_ids for r in batched] == [r.token_ids for r in single]
    other = entry.run_batch(None, prompts, params, [21, 22, 23, 24])
    assert [r.token_ids for r in other] != [r.token_ids for r in batched]
    # repeated identical requests under one seed get distinct, reproducible stream seeds
    s1, s2 = entry.request_seed(5, prompts[0]), entry.request_seed(5, prompts[0])
    assert s1 != s2 and entry.request_seed(None, prompts[0]) is None
    # counted per adapter: an adapter's first request gets the first stream whatever ran before it
    # (so a checkpoint's answers do not depend on the matrix order or on a resume)
    a1, a2 = entry.request_seed(6, prompts[0], "A"), entry.request_seed(6, prompts[0], "A")
    b1, b2 = entry.request_seed(6, prompts[0], "B"), entry.request_seed(6, prompts[0], "B")
    assert a1 != a2 and (b1, b2) == (a1, a2)
    entry.reset_request_seeds()  # as a fresh process: the first stream again
    assert entry.request_seed(6, prompts[0], "A") == a1


def test_top_k_one_sampling_is_greedy(entry):
    prompts = _prompts(entry)
    greedy = entry.run_batch(None, prompts, GenParams(max_new_tokens=5), [None] * 4)
    topk1 = entry.run_batch(None, prompts, GenParams(max_new_tokens=5, temperature=1.5, top_k=1), [1, 2, 3, 4])
    assert [r.token_ids for r in greedy] == [r.token_ids for r in topk1]


@pytest.mark.parametrize("workers", [1, 3])
def test_draws_equal_torch_multinomial(workers):
    """`_draw_rows` returns torch.multinomial(row, 1, generator=row's generator) bit for bit and
    advances each generator as it does (fails if the draw or its order changes); done rows draw
    nothing. Under inference mode, as in decoding (the drawing threads must take it over)."""
    torch.manual_seed(0)
    probs = torch.randn(7, 5000).mul(3).softmax(-1)
    probs[2, :4000] = 0  # a row with a masked tail, as top-k / top-p leave it
    probs[2] /= probs[2].sum()
    done = [False, False, False, True, False, False, False]
    for seed in range(4):
        gens = [torch.Generator().manual_seed(100 * seed + i) for i in range(7)]
        refs = [torch.Generator().manual_seed(100 * seed + i) for i in range(7)]
        with torch.inference_mode():
            got = provider._draw_rows(probs, gens, done, workers=workers).tolist()
            for step in range(2):  # the generators go on alike
                want = [None if d else torch.multinomial(probs[i], 1, generator=refs[i]).item()
                        for i, d in enumerate(done)]
                assert [None if d else g for g, d in zip(got, done)] == want
                got = provider._draw_rows(probs, gens, done, workers=workers).tolist()
        untouched = torch.Generator().manual_seed(100 * seed + 3).get_state()
        assert torch.equal(gens[3].get_state(), untouched)
    bad = probs.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="nan"):
        provider._draw_rows(bad, gens, done)


def test_rows_with_different_params_share_a_batch(entry):
    """Greedy rows, sampled rows (two temperatures, top-k) and a shorter row in one batch: each
    row as it comes out alone (tokens, top-k tokens; logprobs within fp32 noise), each by its own
    parameters (a row run under another row's parameters differs)."""
    prompts = _prompts(entry)
    rows = [GenParams(max_new_tokens=6, logprobs=True, top_logprobs=3),
            GenParams(max_new_tokens=6, temperature=1.0),
            GenParams(max_new_tokens=6, temperature=1.7, top_k=5),
            GenParams(max_new_tokens=2, top_logprobs=2)]
    seeds = [None, 5, 6, None]
    mixed = entry.run_batch(None, prompts, rows, seeds)
    for p, params, seed, m in zip(prompts, rows, seeds, mixed):
        (alone,) = entry.run_batch(None, [p], params, [seed])
        assert alone.token_ids == m.token_ids and alone.stop_reason == m.stop_reason
        assert alone.logprobs == pytest.approx(m.logprobs, abs=1e-4)
        assert [[t for t, _ in top] for top in alone.top] == [[t for t, _ in top] for top in m.top]
    assert len(mixed[3].token_ids) <= 2 and [len(t) for t in mixed[3].top] == [2] * len(mixed[3].token_ids)
    assert len(mixed[0].top[0]) == 3 and mixed[1].top == [] and mixed[2].top == []
    as_greedy = entry.run_batch(None, prompts[1:2], rows[0], [None])[0]
    assert as_greedy.token_ids != mixed[1].token_ids  # the sampled row really sampled


def test_genparams_from_config():
    from inspect_ai.model import GenerateConfig

    assert GenParams.from_config(GenerateConfig(), 7).greedy
    assert GenParams.from_config(GenerateConfig(), 7).max_new_tokens == 7
    assert not GenParams.from_config(GenerateConfig(top_p=0.9), 7).greedy
    assert GenParams.from_config(GenerateConfig(temperature=0.7), 7).temperature == 0.7
    p = GenParams.from_config(GenerateConfig(top_logprobs=3, max_tokens=1), 7)
    assert p.logprobs and p.top_logprobs == 3 and p.max_new_tokens == 1
    with pytest.raises(ConfigError, match="max_tokens"):
        GenParams.from_config(GenerateConfig(max_tokens=0), 7)


def test_stop_sequence_truncates(entry):
    p = _prompts(entry)[2]
    (free,) = entry.run_batch(None, [p], GenParams(max_new_tokens=8), [None])
    text = entry.tokenizer.decode(free.token_ids, skip_special_tokens=True)
    stop = text[len(text) // 2: len(text) // 2 + 2]
    (cut,) = entry.run_batch(None, [p], GenParams(max_new_tokens=8, stop_seqs=(stop,)), [None])
    assert cut.stop_reason == "stop" and len(cut.token_ids) <= len(free.token_ids)
    assert entry.tokenizer.decode(cut.token_ids, skip_special_tokens=True)[: cut.text_cut] == text[: text.find(stop)]


def test_cancelled_leader_does_not_strand_its_batch(entry, monkeypatch):
    """A leader cancelled mid-batch (e.g. a sample time limit) hands its batch to the next leader."""
    import anyio

    from leaklab.provider import _Request

    prompts = _prompts(entry)
    params = GenParams(max_new_tokens=2)
    expected = entry.run_batch(None, prompts, params, [None] * 4)
    real = entry.run_batch

    def slow(*args):
        time.sleep(0.3)
        return real(*args)

    monkeypatch.setattr(entry, "run_batch", slow)
    reqs = [_Request(None, p, params, None) for p in prompts]

    async def scenario():
        async def leader():
            with anyio.move_on_after(0.1):
                await entry.submit(reqs[0], 8, 0.005)

        return await asyncio.gather(leader(), *[entry.submit(r, 8, 0.005) for r in reqs[1:]])

    out = asyncio.run(scenario())
    assert out[0] is None
    assert [r.token_ids for r in out[1:]] == [r.token_ids for r in expected[1:]]
    assert not entry.pending and not entry.busy


# ----------------------------------------------------------------------------- through Inspect


def _gen(model, prompt: str, **cfg):
    from inspect_ai.model import ChatMessageUser, GenerateConfig

    return model.generate([ChatMessageUser(content=prompt)], config=GenerateConfig(**cfg))


def _first_top(out) -> dict[str, float]:
    return {t.token: t.logprob for t in out.choices[0].logprobs.content[0].top_logprobs}


def test_seeded_answers_do_not_depend_on_what_ran_before(varied_dir, adapters):
    """A study's generation seed fixes each checkpoint's sampled answers: evaluating the base model
    first (as `leaklab eval` does) or resuming with the adapter alone gives the adapter the same answers."""
    from inspect_ai.model import get_model

    name, (a, _) = str(varied_dir), adapters

    def answers(*adapter_dirs):
        provider.clear_cache()  # a fresh process
        out = []
        for d in adapter_dirs:
            m = get_model(f"leaklab/{name}", **({"adapter": str(d)} if d else {}), device="cpu", memoize=False)
            out.append([asyncio.run(_gen(m, p, temperature=1.0, max_tokens=6, seed=7)).completion for p in PROMPTS[1:3]])
        return out

    (alone,) = answers(a)
    base, after_base = answers(None, a)
    assert after_base == alone and base != alone
    assert answers(a) == [alone]  # and again
    provider.clear_cache()


def test_adapter_switching_shares_one_base(varied_dir, adapters, monkeypatch):
    from inspect_ai.model import get_model
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    provider.clear_cache()
    provider.LOAD_COUNTS.clear()
    a, b = adapters
    name = str(varied_dir)
    base = get_model(f"leaklab/{name}", device="cpu", memoize=False)

    async def run(model):
        return await _gen(model, PROMPTS[1], temperature=0, max_tokens=3, logprobs=True, top_logprobs=20)

    base_before = asyncio.run(run(base))
    ma = get_model(f"leaklab/{name}", adapter=str(a), device="cpu", memoize=False)
    mb = get_model(f"leaklab/{name}", adapter=str(b), device="cpu", memoize=False)
    ma2 = get_model(f"leaklab/{name}", adapter=str(a), device="cpu", memoize=False)

    async def all_of_them():
        return await asyncio.gather(run(base), run(ma), run(mb), run(ma2))

    out_base, out_a, out_b, out_a2 = asyncio.run(all_of_them())
    assert provider.LOAD_COUNTS[models.canonical_name(name)] == 1
    assert len(provider._BASES) == 1
    entry = base.api.entry
    assert ma.api.entry is entry is mb.api.entry and len(entry.adapters) == 2
    # base unchanged by loading adapters (adapters disabled), adapters differ from base and each other
    assert _first_top(out_base) == pytest.approx(_first_top(base_before), abs=1e-5)
    tops = [_first_top(o) for o in (out_base, out_a, out_b)]
    for i in range(3):
        for j in range(i + 1, 3):
            assert tops[i] != tops[j]
    assert _first_top(out_a2) == pytest.approx(_first_top(out_a), abs=1e-5)
    # adapter A through the shared base equals a fresh PeftModel of A alone
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(varied_dir, dtype=torch.float32), str(a))
    prompt = entry.render_chat([{"role": "user", "content": PROMPTS[1]}])
    with torch.inference_mode():
        ref_lp = torch.log_softmax(ref(torch.tensor([prompt])).logits[0, -1].float(), -1)
    tok_a = out_a.choices[0].logprobs.content[0]
    a_id = entry.tokenizer.convert_tokens_to_ids(entry.tokenizer.tokenize(tok_a.token))
    assert tok_a.logprob == pytest.approx(ref_lp.max().item(), abs=1e-4)
    assert ref_lp.argmax().item() in a_id

    # merge=true: a separate instance whose outputs match the unmerged adapter
    mm = get_model(f"leaklab/{name}", adapter=str(a), merge=True, device="cpu", memoize=False)
    out_m = asyncio.run(run(mm))
    assert mm.api.entry is not entry
    assert provider.LOAD_COUNTS[models.canonical_name(name)] == 1
    assert sum(provider.LOAD_COUNTS.values()) == 2
    assert _first_top(out_m) == pytest.approx(_first_top(out_a), abs=1e-4)
    provider.clear_cache()


def test_active_adapter_is_merged_and_the_base_restored_bit_for_bit(varied_dir, adapters):
    """merge_active=true: an adapter's batch runs with its delta in the base weights; the side path
    (the default) gives the same tokens and logprobs within fp32 rounding; after adapters A and B
    the base weights and the base's outputs are bit-identical to before."""
    from peft.tuners.lora import LoraLayer

    provider.clear_cache()
    e = provider.get_entry(str(varied_dir), device="cpu")
    e.set_cache_mb(0)
    assert not e.merge_active  # off unless asked for
    e.set_merge_active(True)
    prompts = _prompts(e)
    seeds = [None] * len(prompts)
    weights_before = {k: v.clone() for k, v in e.model.state_dict().items()}
    a, b = (e.ensure_adapter(p) for p in adapters)
    base_before = e.run_batch(None, prompts, GREEDY8, seeds)  # through PEFT's disabled wrappers, as after
    lora_layers = [m for m in e.model.modules() if isinstance(m, LoraLayer)]

    merged_a = e.run_batch(a, prompts, GREEDY8, seeds)
    assert e.merged == a and all(m.merged_adapters == [a] for m in lora_layers)
    # a second batch of the merged adapter runs merged too (PEFT's set_adapter would unmerge it)
    again_a = e.run_batch(a, prompts, GREEDY8, seeds)
    assert e.merged == a and all(m.merged_adapters == [a] for m in lora_layers)
    assert [(r.token_ids, r.logprobs) for r in again_a] == [(r.token_ids, r.logprobs) for r in merged_a]
    merged_b = e.run_batch(b, prompts, GREEDY8, seeds)
    assert e.merged == b and all(m.merged_adapters == [b] for m in lora_layers)
    base_after = e.run_batch(None, prompts, GREEDY8, seeds)
    assert e.merged is None and not any(m.merged for m in lora_layers)
    assert [(r.token_ids, r.logprobs, r.top) for r in base_after] == [(r.token_ids, r.logprobs, r.top) for r in base_before]
    weights_after = {k: v for k, v in e.model.state_dict().items() if "lora_" not in k}
    assert len(weights_after) == len(weights_before)
    for (k0, v0), v1 in zip(weights_before.items(), weights_after.values()):
        assert torch.equal(v0, v1), k0

    e.set_merge_active(False)
    for name, merged in ((a, merged_a), (b, merged_b)):
        side = e.run_batch(name, prompts, GREEDY8, seeds)
        assert e.merged is None
        assert [r.token_ids for r in side] == [r.token_ids for r in merged]
        for s, m in zip(side, merged):
            assert s.logprobs == pytest.approx(m.logprobs, abs=1e-4)
    assert [r.token_ids for r in merged_a] != [r.token_ids for r in merged_b]  # the adapters do differ
    bf16 = provider.get_entry(str(varied_dir), device="cpu", dtype="bf16")
    with pytest.raises(ConfigError, match="fp32"):
        bf16.set_merge_active(True)
    provider.clear_cache()


def test_wrong_base_adapter_is_a_clear_error(varied_dir, tmp_path):
    bad = _make_adapter(varied_dir, tmp_path / "bad", 3, "someone/other-model")
    with pytest.raises(ConfigError) as err:
        provider.check_adapter(bad, str(varied_dir))
    msg = str(err.value)
    assert "someone/other-model" in msg and str(varied_dir) in msg and "adapter_config.json" in msg
    with pytest.raises(ConfigError, match="does not exist"):
        provider.check_adapter(tmp_path / "nowhere", str(varied_dir))


def test_alias_named_adapter_is_accepted(tmp_path):
    """An adapter whose config names the alias (the training contract) loads against that alias."""
    base_dir = models.prepare("tiny-random")
    ad = _make_adapter(base_dir, tmp_path / "alias", 4, "tiny-random")
    assert provider.check_adapter(ad, "tiny-random") == ad.resolve()
    ad2 = _make_adapter(base_dir, tmp_path / "prepared", 4, None)  # peft wrote the prepared folder
    assert provider.check_adapter(ad2, "tiny-random") == ad2.resolve()


def test_model_args_and_tools_errors(varied_dir):
    from inspect_ai.model import ChatMessageUser, GenerateConfig, get_model
    from inspect_ai.tool import ToolInfo

    with pytest.raises(ConfigError, match="unknown model arg"):
        get_model(f"leaklab/{varied_dir}", adapterz="x", memoize=False)
    with pytest.raises(ConfigError, match="merge=true needs"):
        get_model(f"leaklab/{varied_dir}", merge="true", memoize=False)
    with pytest.raises(ConfigError, match="unknown model"):
        get_model("leaklab/no-such-model", memoize=False)
    m = get_model(f"leaklab/{varied_dir}", device="cpu")

    async def with_tools():
        tool = ToolInfo(name="calc", description="adds")
        return await m.api.generate([ChatMessageUser(content="hi")], [tool], "auto", GenerateConfig())

    with pytest.raises(ConfigError, match="tools are not supported"):
        asyncio.run(with_tools())


def test_model_info_registered_no_second_instance(varied_dir, monkeypatch):
    from inspect_ai.model import get_model, get_model_info

    built = []
    real_init = provider.LeaklabAPI.__init__

    def counting_init(self, *args, **kwargs):
        built.append(args)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(provider.LeaklabAPI, "__init__", counting_init)
    m = get_model(f"leaklab/{varied_dir}", device="cpu", memoize=False)
    out = asyncio.run(_gen(m, "hi", temperature=0, max_tokens=2))
    info = get_model_info(f"leaklab/{varied_dir}")
    assert info is not None and info.organization == "leaklab" and info.context_length == 2048
    assert get_model_info(m).organization == "leaklab"
    assert len(built) == 1
    assert out.usage.input_tokens > 0 and 1 <= out.usage.output_tokens <= 2
    assert out.usage.total_tokens == out.usage.input_tokens + out.usage.output_tokens


def test_concurrent_requests_are_batched_and_match_unbatched(varied_dir):
    from inspect_ai.model import get_model

    m = get_model(f"leaklab/{varied_dir}", device="cpu", max_batch_size=8, memoize=False)
    entry = m.api.entry
    prompts = [f"{p} #{i}" for i in range(3) for p in PROMPTS]  # 12 requests

    async def burst():
        return await asyncio.gather(*[_gen(m, p, temperature=0, max_tokens=3, logprobs=True) for p in prompts])

    entry.batch_sizes.clear()
    outs = asyncio.run(burst())
    assert sorted(entry.batch_sizes, reverse=True)[0] == 8 and sum(entry.batch_sizes) == 12
    solo = get_model(f"leaklab/{varied_dir}", device="cpu", max_batch_size=1, memoize=False)
    for p, o in zip(prompts[:4], outs[:4]):
        s = asyncio.run(_gen(solo, p, temperature=0, max_tokens=3, logprobs=True))
        assert s.completion == o.completion
        assert [x.logprob for x in s.choices[0].logprobs.content] == pytest.approx(
            [x.logprob for x in o.choices[0].logprobs.content], abs=1e-4)


def test_requests_with_different_sampling_share_a_batch(varied_dir):
    """Concurrent requests of one length share a batch whatever their temperature or top-k; a
    one-token read-out (another length) runs in its own."""
    from inspect_ai.model import get_model

    m = get_model(f"leaklab/{varied_dir}", device="cpu", max_batch_size=8, memoize=False)
    entry = m.api.entry

    async def burst():
        return await asyncio.gather(
            *[_gen(m, p, temperature=0, max_tokens=3, logprobs=True, top_logprobs=2) for p in PROMPTS[:2]],
            *[_gen(m, p, temperature=1.0, max_tokens=3, seed=7) for p in PROMPTS[2:]],
            _gen(m, PROMPTS[0], temperature=0, max_tokens=1, logprobs=True))

    entry.batch_sizes.clear()
    outs = asyncio.run(burst())
    assert sorted(entry.batch_sizes) == [1, 4]
    assert len(outs[0].choices[0].logprobs.content[0].top_logprobs) == 2 and outs[2].choices[0].logprobs is None


TASK_FILE = '''
from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.scorer import includes
from inspect_ai.solver import generate


@task
def letters():
    return Task(
        dataset=[Sample(input=f"Answer A or B. Question {i}", target="A") for i in range(4)],
        solver=generate(),
        scorer=includes(),
    )
'''


def test_inspect_eval_cli_roundtrip(tmp_path):
    from inspect_ai.log import read_eval_log

    task_file = tmp_path / "letters_task.py"
    task_file.write_text(TASK_FILE)
    log_dir = tmp_path / "logs"
    inspect = Path(sys.executable).parent / "inspect"
    proc = subprocess.run(
        [str(inspect), "eval", task_file.name, "--model", "leaklab/tiny-random", "--log-dir", str(log_dir),
         "--temperature", "0", "--max-tokens", "2", "--logprobs", "--top-logprobs", "5",
         "--display", "none", "--no-log-realtime"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    logs = sorted(log_dir.glob("*.eval"))
    assert len(logs) == 1
    log = read_eval_log(str(logs[0]))
    assert log.status == "success", log.error
    assert log.eval.model == "leaklab/tiny-random"
    assert len(log.samples) == 4
    for s in log.samples:
        lp = s.output.choices[0].logprobs.content
        assert 1 <= len(lp) <= 2 and len(lp[0].top_logprobs) == 5
        assert not any("Ġ" in t.token for t in lp[0].top_logprobs)
        assert s.output.usage.input_tokens > 0
