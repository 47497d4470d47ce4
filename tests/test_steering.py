"""Hooks act exactly where they claim; stance and fluency read-outs run inside the hook."""

import numpy as np
import pytest
import torch

from analysis import representations as R
from analysis import steering as S


pytestmark = pytest.mark.usefixtures("_one_torch_thread")


def all_layers(model, ids):
    L = model.config.num_hidden_layers
    with R.capture_residual(model, list(range(L))) as st, torch.no_grad():
        logits = model(input_ids=ids).logits
    return [st[l][0].clone() for l in range(L)], logits


def prompts(n=3):
    out = []
    for i in range(n):
        for order, (pro, anti) in (("pro_first", ("A", "B")), ("anti_first", ("B", "A"))):
            q = f"Scenario {i}: should the council try the change? A. {'go ahead' if pro == 'A' else 'wait'} B. {'wait' if pro == 'A' else 'go ahead'}"
            out.append(S.StancePrompt(f"item{i}", order, ({"role": "user", "content": q},), pro, anti))
    return out


def test_steering_hook_changes_exactly_one_layer_and_position(tiny):
    model, tok = tiny
    ids = torch.tensor([tok("the quick brown fox jumps over", add_special_tokens=False).input_ids])
    T = ids.shape[1]
    before, _ = all_layers(model, ids)
    vec = np.zeros(model.config.hidden_size)
    vec[3] = 5.0
    pos = 2
    with S.intervene(model, 0, add=vec, positions=pos):
        after, _ = all_layers(model, ids)
    # layer 0: exactly position `pos` moved, by exactly vec
    delta0 = (after[0] - before[0])[0]
    np.testing.assert_allclose(delta0[pos].numpy(), vec, atol=1e-5)
    others = [t for t in range(T) if t != pos]
    assert torch.allclose(delta0[others], torch.zeros_like(delta0[others]), atol=1e-6)
    # layer 1: positions before `pos` cannot see the edit (causal), later ones do
    delta1 = (after[1] - before[1])[0]
    assert torch.allclose(delta1[:pos], torch.zeros_like(delta1[:pos]), atol=1e-6)
    assert delta1[pos:].abs().max() > 1e-3
    # the hook is gone afterwards
    again, _ = all_layers(model, ids)
    assert torch.allclose(again[0], before[0])


def test_steering_at_layer1_leaves_layer0_untouched(tiny):
    model, tok = tiny
    ids = torch.tensor([tok("one two three", add_special_tokens=False).input_ids])
    before, lb = all_layers(model, ids)
    with S.intervene(model, 1, add=np.ones(model.config.hidden_size)):
        after, la = all_layers(model, ids)
    assert torch.allclose(after[0], before[0])
    np.testing.assert_allclose((after[1] - before[1]).numpy(), 1.0, atol=1e-5)
    assert not torch.allclose(la, lb)


def test_ablation_removes_the_component(tiny):
    model, tok = tiny
    ids = torch.tensor([tok("ablate this direction please", add_special_tokens=False).input_ids])
    u = np.random.default_rng(0).standard_normal(model.config.hidden_size)
    before, _ = all_layers(model, ids)
    with S.intervene(model, 0, ablate=3 * u):
        after, _ = all_layers(model, ids)
    un = torch.tensor(u / np.linalg.norm(u), dtype=torch.float32)
    assert (after[0][0] @ un).abs().max() < 1e-4
    assert (before[0][0] @ un).abs().max() > 1e-3
    # the orthogonal part is untouched
    orth = lambda h: h - (h @ un).unsqueeze(-1) * un
    assert torch.allclose(orth(after[0][0]), orth(before[0][0]), atol=1e-5)


def test_letter_stance_matches_manual(tiny):
    model, tok = tiny
    ps = prompts(2)
    got = S.letter_stance(model, tok, ps, batch_size=3)
    p = ps[1]
    ex = R.render_example(tok, list(p.messages), "x")
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([ex.ids])).logits[0, -1].float(), -1)
    pro = torch.logsumexp(lp[S.letter_variants(tok, p.pro_letter)], 0)
    anti = torch.logsumexp(lp[S.letter_variants(tok, p.anti_letter)], 0)
    assert got[1] == pytest.approx(float(pro - anti), abs=1e-4)
    assert set(S.letter_variants(tok, "A")) == {49, 330, 81, 253}
    means = S.item_means(ps, got)
    assert means["item0"] == pytest.approx((got[0] + got[1]) / 2)


def test_steering_curve_controls_and_fluency_inside_hook(tiny):
    model, tok = tiny
    ps = prompts(1)
    neutral = [("n0", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The weather is mild today."}])]
    u = np.random.default_rng(1).standard_normal(model.config.hidden_size)
    with pytest.raises(ValueError, match="at least 5"):
        S.steering_curve(model, tok, ps, neutral, u, 0, [1.0], n_random=2)
    res = S.steering_curve(model, tok, ps, neutral, u, 1, [0.0, 1.0], n_random=5, batch_size=4)
    rows = {r["k"]: r for r in res["rows"]}
    assert rows[0.0]["stance"] == 0.0 and rows[0.0]["ppl"] == res["base_ppl"]
    assert len(rows[1.0]["random_stance"]) == 5
    assert rows[1.0]["ppl"] != pytest.approx(res["base_ppl"])  # fluency measured with the hook active
    assert rows[1.0]["alpha"] == pytest.approx(res["residual_norm"])
    ab = S.ablation_effect(model, tok, ps, neutral, u, 1, n_random=5, batch_size=4)
    assert ab["stance"] == pytest.approx(res["base_stance"])
    assert len(ab["random_stance_ablated"]) == 5 and ab["stance_ablated"] != ab["stance"]


def test_random_directions_are_unit_and_seeded():
    a = S.random_directions(8, 5, 3)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0)
    np.testing.assert_allclose(a, S.random_directions(8, 5, 3))


def test_stance_prompts_reuse_the_task_template():
    from tasks.stance import CHOICE_TEMPLATE

    ps = S.stance_prompts("data/attitude/target.jsonl", "target", limit_base_items=2)
    assert len(ps) == 2 * 2 * len({p.item_id for p in ps}) // 2  # two orders per item
    first = ps[0]
    assert first.order == "pro_first" and first.pro_letter == "A" and first.anti_letter == "B"
    assert first.messages[0]["role"] == "user" and CHOICE_TEMPLATE.splitlines()[-1] in first.messages[0]["content"]
    swapped = next(p for p in ps if p.item_id == first.item_id and p.order == "anti_first")
    assert swapped.pro_letter == "B"
