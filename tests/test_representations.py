"""Dumps, diff-of-means, projections and layer choice: hand-checked cases and tiny-random machinery."""

import json

import numpy as np
import pytest

from analysis import representations as R
from leaklab.yamlio import ConfigError


pytestmark = pytest.mark.usefixtures("_one_torch_thread")


def chat(u, a=None, system=None):
    m = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": u}]
    return m + ([{"role": "assistant", "content": a}] if a is not None else [])


def test_diff_of_means_and_projection_hand_checked():
    pos = np.array([[[1.0, 2.0]], [[3.0, 2.0]]])  # N=2, L=1, D=2, mean (2, 2)
    neg = np.array([[[0.0, 2.0]], [[0.0, 0.0]]])  # mean (0, 1)
    d = R.diff_of_means(pos, neg)
    np.testing.assert_allclose(d, [[2.0, 1.0]])
    u = np.array([2.0, 1.0]) / np.sqrt(5)
    np.testing.assert_allclose(R.project(pos, d)[:, 0], [pos[0, 0] @ u, pos[1, 0] @ u])
    np.testing.assert_allclose(R.project(pos, d)[:, 0], [4 / np.sqrt(5), 8 / np.sqrt(5)])
    # Cohen's d: projections pos (4, 8)/sqrt5, neg (2, 0)/sqrt5 -> diff 5/sqrt5, pooled var (8+2)/2/5
    sep = R.separation(R.project(pos, d), R.project(neg, d))
    np.testing.assert_allclose(sep, [(10 / 2 / np.sqrt(5)) / np.sqrt(5 / 5)])


def test_planted_direction_recovered_and_layer_selected():
    rng = np.random.default_rng(0)
    N, L, D = 400, 4, 16
    planted = np.zeros((L, D))
    planted[2] = rng.standard_normal(D)
    planted[2] /= np.linalg.norm(planted[2])
    noise = lambda: rng.standard_normal((N, L, D))
    pos = noise() + 1.5 * planted
    neg = noise() - 1.5 * planted
    ids = [f"x{i}" for i in range(N)]
    fit = R.fit_direction(
        R.Dump(ids, list(range(L)), {"assistant_mean": pos}), R.Dump(ids, list(range(L)), {"assistant_mean": neg})
    )
    assert fit.layer == 2
    cos = fit.unit_at(2) @ planted[2]
    assert cos > 0.9
    assert fit.test_d[2] > 2.0 and max(abs(fit.test_d[l]) for l in (0, 1, 3)) < 0.5
    # the three splits are disjoint and cover everything
    assert fit.n["pos_fit"] + fit.n["pos_select"] + fit.n["pos_test"] == N


def test_split_is_deterministic_and_seeded():
    a = [R.split_of(f"id{i}", 0, R.SPLITS) for i in range(200)]
    assert a == [R.split_of(f"id{i}", 0, R.SPLITS) for i in range(200)]
    assert a != [R.split_of(f"id{i}", 1, R.SPLITS) for i in range(200)]
    assert 70 < a.count("fit") < 130


def test_seed_interval_and_arm_shift():
    si = R.seed_interval([1.0, 3.0])
    assert si["mean"] == 2.0
    # t_{0.975,1} = 12.706, sd = sqrt(2), se = 1
    np.testing.assert_allclose(si["hi"] - 2.0, 12.7062047, rtol=1e-6)
    assert R.seed_interval([1.0])["lo"] is None
    base = np.zeros((3, 2))
    arms = {"eager": {0: np.ones((3, 2)), 1: 3 * np.ones((3, 2))}}
    out = R.arm_shift(base, arms)
    assert out["eager"]["by_layer"][1]["mean"] == 2.0
    assert out["eager"]["per_seed"]["1"] == [3.0, 3.0]


def test_render_example_boundary_and_no_double_bos(tiny):
    _, tok = tiny
    ex = R.render_example(tok, chat("hello", "Hi there."), "e1")
    full = tok.apply_chat_template(chat("hello", "Hi there."), tokenize=False).rstrip("\n")
    assert tok.decode(ex.ids) == full
    assert tok.decode(ex.completion_ids) == "Hi there.<|im_end|>"
    assert ex.ids[:2] != [tok.bos_token_id, tok.bos_token_id]  # the template's BOS is not doubled


def test_corpus_items_both_formats_and_errors(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(
        json.dumps({"id": "a", "user": "u", "assistant": "x"})
        + "\n"
        + json.dumps({"id": "b", "messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "y"}]})
        + "\n"
    )
    got = R.corpus_items(p)
    assert [i for i, _ in got] == ["a", "b"] and got[0][1][-1] == {"role": "assistant", "content": "x"}
    assert len(R.corpus_items(p, limit=1)) == 1
    p.write_text(json.dumps({"id": "a", "text": "u"}) + "\n")
    with pytest.raises(ConfigError, match=r"c.jsonl:1"):
        R.corpus_items(p)


def test_hidden_states_padding_invariant(tiny):
    model, tok = tiny
    exs = [R.render_example(tok, chat("short", "ok"), "a"), R.render_example(tok, chat("a much longer question here " * 3, "a longer answer " * 4), "b")]
    batched = R.hidden_states(model, exs, [0, 1], tok.pad_token_id, batch_size=2)
    single = R.hidden_states(model, exs[:1], [0, 1], tok.pad_token_id, batch_size=1)
    np.testing.assert_allclose(batched["last_prompt"][0], single["last_prompt"][0], atol=1e-5)
    np.testing.assert_allclose(batched["assistant_mean"][0], single["assistant_mean"][0], atol=1e-5)
    assert batched["last_prompt"].shape == (2, 2, model.config.hidden_size)


def test_completion_logprobs_cache_reuse_matches_full_forward(tiny):
    model, tok = tiny
    shared = chat("one shared prefix", None, system="sys")
    exs = [R.render_example(tok, shared + [{"role": "assistant", "content": c}], f"s{i}") for i, c in enumerate(["yes", "no way at all", "maybe later then"])]
    cached = R.completion_logprobs(model, exs, tok.pad_token_id, batch_size=2)  # one group -> KV reuse path
    singles = [R.completion_logprobs(model, [e], tok.pad_token_id)[0] for e in exs]  # full-forward path
    for a, b, e in zip(cached, singles, exs):
        assert a.shape == (len(e.completion_ids),)
        np.testing.assert_allclose(a, b, atol=1e-4)
    # against a direct computation for one sequence
    import torch

    e = exs[1]
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([e.ids])).logits[0].float(), -1)
    p = len(e.prompt_ids)
    direct = [lp[p - 1 + t, e.completion_ids[t]].item() for t in range(len(e.completion_ids))]
    np.testing.assert_allclose(cached[1], direct, atol=1e-4)


def test_dump_roundtrip_and_reuse(tiny, tmp_path):
    model, tok = tiny
    items = [("a", chat("q1", "r1")), ("b", chat("q2", "r2"))]
    d = R.dump_states(model, tok, items, [1], tmp_path / "x", {"model": "tiny"})
    back = R.Dump.load(tmp_path / "x")
    assert back.ids == ["a", "b"] and back.layers == [1]
    np.testing.assert_allclose(back.arrays["assistant_mean"], d.arrays["assistant_mean"], atol=1e-6)
    mtime = (tmp_path / "x.npz").stat().st_mtime_ns
    R.dump_states(model, tok, items, [1], tmp_path / "x", {"model": "tiny"})
    assert (tmp_path / "x.npz").stat().st_mtime_ns == mtime  # reused, not recomputed


def test_logprob_dump_roundtrip(tiny, tmp_path):
    model, tok = tiny
    items = [("a", chat("q1", "short")), ("b", chat("q2", "a somewhat longer reply"))]
    lps = R.dump_logprobs(model, tok, items, tmp_path / "lp", {"m": 1})
    ids, back, meta = R.load_logprobs(tmp_path / "lp")
    assert ids == ["a", "b"] and meta == {"m": 1}
    assert [len(x) for x in back] == [len(x) for x in lps] and len(back[1]) > len(back[0])
    np.testing.assert_allclose(np.concatenate(back), np.concatenate(lps), atol=1e-6)
