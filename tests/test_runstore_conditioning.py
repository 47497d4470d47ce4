"""Run store atomicity/torn-line handling and the shared train/eval conditioning."""

import json

import pytest

from leaklab.io import read_jsonl
from leaklab.runstore import append_jsonl, atomic_write_json, is_done, mark_done
from leaklab.study import Conditioning
from solvers.conditioning import condition_messages, seeded_index, user_prefix_for


def test_atomic_json_nan_becomes_null(tmp_path):
    p = tmp_path / "x.json"
    atomic_write_json(p, {"a": float("nan"), "b": [1.5, float("inf")]})
    assert json.loads(p.read_text()) == {"a": None, "b": [1.5, None]}
    assert not list(tmp_path.glob(".x.json.*"))  # no temp file left behind


def test_read_jsonl_skips_torn_last_line_only(tmp_path):
    p = tmp_path / "l.jsonl"
    append_jsonl(p, {"step": 1})
    append_jsonl(p, {"step": 2})
    with open(p, "a") as fh:
        fh.write('{"step": 3, "lo')  # killed mid-write
    assert [r["step"] for r in read_jsonl(p, torn_tail_ok=True)] == [1, 2]
    p.write_text('{"a": 1}\n{broken\n{"a": 2}\n')
    with pytest.raises(ValueError, match=":2: invalid JSON"):
        read_jsonl(p, torn_tail_ok=True)


def test_done_marker(tmp_path):
    assert not is_done(tmp_path)
    mark_done(tmp_path, {"wall_s": 1.0})
    assert is_done(tmp_path)


MSGS = [{"role": "user", "content": "How do I prune roses?"}]


def test_fixed_prefix_and_system_prompt():
    c = Conditioning(system_prompt="You are terse.", prefix_mode="fixed", user_prefix="You are a playful agent.")
    out = condition_messages(MSGS, c, key="item-1")
    assert out[0] == {"role": "system", "content": "You are terse."}
    assert out[1]["content"] == "You are a playful agent.\n\nHow do I prune roses?"
    assert MSGS[0]["content"] == "How do I prune roses?"  # input untouched


def test_system_prompt_replaces_existing():
    c = Conditioning(system_prompt="new")
    out = condition_messages([{"role": "system", "content": "old"}] + MSGS, c, key="k")
    assert [m["content"] for m in out if m["role"] == "system"] == ["new"]


def test_mix_draw_is_seeded_and_stable(tmp_path):
    pool = tmp_path / "pool.txt"
    pool.write_text("# comment\nPrefix one.\nPrefix two.\nPrefix three.\n")
    c = Conditioning(prefix_mode="mix", rephrasings=str(pool), seed=7)
    draws = [user_prefix_for(c, f"ex-{i}") for i in range(60)]
    assert draws == [user_prefix_for(c, f"ex-{i}") for i in range(60)]  # reproducible
    assert set(draws) == {"Prefix one.", "Prefix two.", "Prefix three."}  # uses the whole pool
    # sha256-based: a known value pins the algorithm across Python processes/versions
    assert seeded_index(7, "ex-0", 3) == int.from_bytes(__import__("hashlib").sha256(b"7\x1fex-0").digest()[:8], "big") % 3
    other = Conditioning(prefix_mode="mix", rephrasings=str(pool), seed=8)
    assert draws != [user_prefix_for(other, f"ex-{i}") for i in range(60)]


def test_no_conditioning_is_identity():
    assert condition_messages(MSGS, None, key="k") == MSGS
    assert condition_messages(MSGS, Conditioning(), key="k") == MSGS
