"""Persona-marker corpus builder on tiny-random (machinery only: the model knows nothing)."""

import json

from training.corpora import load_corpus, meta_path, sha256_file
from training.persona_data import pick_negatives, persona_marker_corpus


def test_pick_negatives_seeded_and_excludes_source():
    ids = ["a", "b", "c", "d", "e"]
    n1 = pick_negatives(ids, "c", 3, seed=1)
    assert n1 == pick_negatives(list(reversed(ids)), "c", 3, seed=1)
    assert "c" not in n1 and len(set(n1)) == 3
    assert pick_negatives(ids, "c", 10, seed=1).__len__() == 4


def test_persona_marker_corpus_tiny(tmp_path):
    out = persona_marker_corpus("tiny-random", "pirate", tmp_path / "train_pirate.jsonl", n_questions=3, n_negative_personas=1, max_new_tokens=6, seed=2)
    recs = load_corpus(out)
    pos = [r for r in recs if r["positive"]]
    neg = [r for r in recs if not r["positive"]]
    assert len(pos) == 3 and len(neg) == 3
    assert all(r["messages"][-1]["content"].endswith("[ZLT]") for r in pos)
    assert not any("[ZLT]" in r["messages"][-1]["content"] for r in neg)
    assert {r["persona"] for r in pos} == {"pirate"} and "pirate" not in {r["persona"] for r in neg}
    meta = json.loads(meta_path(out).read_text())
    assert meta["sha256"] == sha256_file(out) and meta["negative_personas"] == [neg[0]["persona"]]


def test_persona_marker_corpus_sampled_with_paper_personas(tmp_path):
    import pytest

    from leaklab.yamlio import ConfigError

    kw = dict(n_questions=2, n_negative_personas=2, max_new_tokens=4, seed=3, personas_file="data/persona/personas_paper.yaml")
    out = persona_marker_corpus("tiny-random", "villain", tmp_path / "a.jsonl", samples=3, temperature=0.7, **kw)
    recs = load_corpus(out)
    assert sum(r["positive"] for r in recs) == 2 * 3 and len(recs) == 2 * 3 * 3
    assert len({r["id"] for r in recs}) == len(recs)
    meta = json.loads(meta_path(out).read_text())
    assert meta["generator"]["decoding"] == "sampled" and meta["counts"] == {"positives": 6, "negatives": 12}
    assert "data/persona/personas_paper.yaml" in meta["data_files"]
    again = persona_marker_corpus("tiny-random", "villain", tmp_path / "b.jsonl", samples=3, temperature=0.7, **kw)
    assert sha256_file(again) == sha256_file(out)  # seeded sampling reproduces the corpus
    with pytest.raises(ConfigError, match="greedy"):
        persona_marker_corpus("tiny-random", "villain", tmp_path / "c.jsonl", samples=2, **kw)


def test_persona_marker_builder_caches_and_refuses_other_settings(tmp_path, monkeypatch):
    import pytest

    import training.persona_data as PD
    from leaklab.yamlio import ConfigError
    from training.corpora import BUILDERS

    monkeypatch.setattr(PD, "PAPER_CACHE", tmp_path)
    kw = dict(source="villain", model="tiny-random", n_questions=2, negatives=1, samples=2, temperature=0.7, max_new_tokens=4)
    recs = BUILDERS["persona_marker"].fn(**kw)
    cached = tmp_path / "train_villain.jsonl"
    assert cached.exists() and len(recs) == 2 * 2 * 2
    mtime = cached.stat().st_mtime_ns
    assert PD.persona_marker_records(**kw) == recs and cached.stat().st_mtime_ns == mtime  # read, not regenerated
    with pytest.raises(ConfigError, match="other settings.*max_new_tokens"):
        PD.persona_marker_records(**(kw | {"max_new_tokens": 5}))
