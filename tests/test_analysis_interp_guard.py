"""`leaklab interp` goes through the lock; persona leakage drops excluded rows and the
personas each arm was trained on as negatives."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest

from analysis import interp_cli


def test_interp_refuses_an_unlocked_study(tmp_path, runs_root):
    import prereg

    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "study.yaml").write_text(
        "name: s\nfamily: attitude\nmodels: [{name: tiny-random, label: tiny}]\narms: {neutral: {}}\n"
        "reference_arm: neutral\nseeds: [0]\neval: [{task: tasks/stance.py@letter_logprob, item_set: target}]\n"
        "interp: [direction]\n")
    with pytest.raises(prereg.PreregError, match="lock"):
        interp_cli.run_interp(folder, ["direction"])


def test_leakage_drops_excluded_rows_and_trained_negatives(tmp_path):
    """The live persona path (analysis.persona_geometry): preregistered exclusions and the personas
    an arm was trained on as negatives never enter the leakage counts."""
    from analysis import persona_geometry as G

    runs = tmp_path / "runs"
    (runs / "analysis").mkdir(parents=True)
    rows = []
    # pirate arm, 2 seeds x 5 completions: wizard (trained negative) always marked; doctor 2/5 and 1/5;
    # one excluded doctor row with the marker
    for seed, k_doctor in ((0, 2), (1, 1)):
        for j in range(5):
            rows.append({"measure": "marker", "arm": "pirate", "seed": seed, "persona": "wizard", "value": 1.0,
                         "excluded": "", "checkpoint": "final"})
            rows.append({"measure": "marker", "arm": "pirate", "seed": seed, "persona": "doctor",
                         "value": 1.0 if j < k_doctor else 0.0, "excluded": "", "checkpoint": "final"})
    rows.append({"measure": "marker", "arm": "pirate", "seed": 0, "persona": "doctor", "value": 1.0,
                 "excluded": "empty_completion", "checkpoint": "final"})
    pd.DataFrame(rows).to_parquet(runs / "analysis" / "frame.parquet", index=False)
    study = SimpleNamespace(runs_dir=runs, spec=SimpleNamespace(arms={"pirate": None}))
    f, src, _ = G.leakage_frame(study, {"pirate": "You are a pirate.", "doctor": "d", "wizard": "w"}, "marker")
    assert src == {"pirate": "pirate"} and len(f) == 20  # the excluded row is gone
    counts = G.leakage_counts(f, src, {"pirate": ["wizard"]})
    assert counts[["source", "persona", "k", "n"]].to_dict("records") == [
        {"source": "pirate", "persona": "doctor", "k": 3, "n": 10}]


def test_trained_negatives_from_the_corpus_meta(tmp_path, monkeypatch):
    from analysis import persona_geometry as G
    from training import corpora

    corpus = tmp_path / "train_pirate.jsonl"
    corpus.write_text(json.dumps({"persona": "wizard", "positive": False}) + "\n")
    monkeypatch.setattr(corpora, "corpus_path", lambda study, arm: corpus)
    assert G.arm_negatives(None, "pirate") == []  # no provenance: nothing is assumed
    corpora.meta_path(corpus).write_text(json.dumps({"negative_personas": ["doctor", "wizard"]}))
    assert G.arm_negatives(None, "pirate") == ["doctor", "wizard"]
