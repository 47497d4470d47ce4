"""The `leaklab/` provider's forward-pass fixes (leaklab/provider.py, `BaseEntry.fast_forwards`):
PEFT's LoRA addition and the MLP's activation and product done in place (bit-identical), and the
last position's logits read through an index tensor, so the vocabulary projection gets one
contiguous matrix, and every plain Linear on a packed oneDNN weight (fp32 rounding only)."""

from __future__ import annotations

import json

import pytest
import torch

from leaklab.provider import GenParams

LETTER = GenParams(max_new_tokens=1, logprobs=True, top_logprobs=20)
CHOICE = GenParams(max_new_tokens=6, logprobs=True)
TEXTS = ["Should the council try a four-day week?", "Name a colour of the sky at noon, in one word please.",
         "Reply A or B: A. tea B. coffee"]


@pytest.fixture
def adapted(varied_dir, tmp_path):
    """The shared entry of `varied_dir` with a random LoRA adapter on every projection loaded."""
    from inspect_ai.model import get_model
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(11)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(varied_dir, dtype=torch.float32),
        LoraConfig(r=4, lora_alpha=12, init_lora_weights=False,
                   target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    folder = tmp_path / "adapter"
    peft_model.save_pretrained(folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(varied_dir)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    model = get_model(f"leaklab/{varied_dir}", adapter=str(folder), device="cpu", memoize=False)
    entry = model.api.entry
    keep = entry.cache
    entry.cache = None  # every forward computed, none served from a cache
    yield entry, model.api.adapter_name
    entry.cache = keep
    entry.fast_forwards = True


def _lora_layers(entry):
    from peft.tuners.lora.layer import Linear as LoraLinear

    return [m for m in entry.model.modules() if type(m) is LoraLinear]


def test_inplace_lora_forward_is_bit_identical_to_peft(adapted):
    entry, name = adapted
    layers = _lora_layers(entry)
    assert layers and all("forward" in m.__dict__ for m in layers)  # every wrapped projection is routed
    entry.model.set_adapter(name)
    torch.manual_seed(0)
    with torch.inference_mode():
        for m in layers:
            x = torch.randn(3, 5, m.in_features)
            ours, peft_own = m(x), type(m).forward(m, x)
            assert torch.equal(ours, peft_own)
            assert not torch.equal(ours, m.base_layer(x))  # the adapter's delta is in it
    # off the evaluation path (autograd on, as in training) PEFT's own forward runs
    x = torch.randn(2, 4, layers[0].in_features, requires_grad=True)
    layers[0](x).sum().backward()
    assert x.grad is not None


def test_fast_forwards_match_the_found_forwards_within_fp32_rounding(adapted):
    entry, name = adapted
    prompts = [entry.render_chat([{"role": "user", "content": t}]) for t in TEXTS]
    seen = []
    hook = entry.model.get_base_model().lm_head.register_forward_pre_hook(
        lambda mod, args: seen.append(args[0].is_contiguous()))
    try:
        out = {}
        for fast in (False, True):
            entry.fast_forwards = fast
            seen.clear()
            out[fast] = (entry.run_batch(name, prompts, LETTER, [None] * 3),
                         entry.run_batch(name, prompts, CHOICE, [None] * 3))
            # the found forwards hand the vocabulary projection a strided slice of the prompt's
            # hidden states (matmul then runs one product per row); the fast ones a contiguous copy
            assert seen[0] is fast
    finally:
        hook.remove()
    for slow_rows, fast_rows in zip(out[False], out[True]):
        for a, b in zip(slow_rows, fast_rows):
            assert a.token_ids == b.token_ids
            assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4
            for ta, tb in zip(a.top, b.top):
                assert [i for i, _ in ta][:5] == [i for i, _ in tb][:5]
                assert max(abs(x - y) for (_, x), (_, y) in zip(ta, tb)) < 1e-4



def test_inplace_mlp_forward_is_bit_identical(adapted):
    entry, name = adapted
    mlps = [m for m in entry.model.modules() if type(m).__name__ == "LlamaMLP"]
    assert mlps and all("forward" in m.__dict__ for m in mlps)
    entry.model.set_adapter(name)
    torch.manual_seed(1)
    with torch.inference_mode():
        for m in mlps:
            x = torch.randn(2, 7, m.hidden_size)
            keep = x.clone()
            assert torch.equal(m(x), type(m).forward(m, x))
            assert torch.equal(x, keep)  # the input is left alone


def test_packed_linears_match_f_linear_and_follow_weight_changes(adapted):
    """Every plain nn.Linear (the base projections, the LoRA matrices, the vocabulary projection)
    runs on a packed oneDNN weight in inference mode: within fp32 rounding of F.linear, each row's
    output independent of the batch, re-packed when the weights change in place (PEFT merges
    through `.data`, which the version counter misses: `weights_epoch`); outside inference mode
    (training) and with fast_forwards off it is F.linear bit for bit."""
    import torch.nn.functional as F

    entry, _ = adapted
    linears = [m for m in entry.model.modules() if type(m) is torch.nn.Linear]
    assert len(linears) > 10 and all("forward" in m.__dict__ for m in linears)
    lm_head = entry.model.get_output_embeddings()
    assert lm_head in linears
    torch.manual_seed(3)
    x = torch.randn(9, 5, lm_head.in_features)
    with torch.inference_mode():
        out = lm_head(x)
        assert "_leaklab_packed" in lm_head.__dict__  # the packed path ran
        assert torch.allclose(out, F.linear(x, lm_head.weight), rtol=1e-5, atol=1e-5)
        assert torch.equal(lm_head(x[:2]), out[:2])
        lm_head.weight.data.mul_(2.0)  # as a merge writes: the version counter does not move
        entry.weights_epoch += 1
        try:
            assert torch.allclose(lm_head(x), 2 * out, rtol=1e-5, atol=1e-5)
        finally:
            lm_head.weight.data.mul_(0.5)  # exact: a power of two
            entry.weights_epoch += 1
        assert torch.equal(lm_head(x), out)
        entry.fast_forwards = False
        assert torch.equal(lm_head(x), F.linear(x, lm_head.weight))
    entry.fast_forwards = True
    with torch.no_grad():
        assert torch.equal(lm_head(x), F.linear(x, lm_head.weight))
