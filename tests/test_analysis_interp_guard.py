"""`leaklab interp` goes through the lock; its persona leakage table drops excluded rows and the
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


def test_leakage_table_drops_excluded_rows_and_trained_negatives(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    (runs / "analysis").mkdir(parents=True)
    rows = []
    # pirate arm, 2 seeds: wizard (trained negative) 1.0, doctor 0.5 / 0.3, one excluded doctor row at 1.0
    for seed, doctor in ((0, 0.5), (1, 0.3)):
        rows += [{"measure": "marker", "arm": "pirate", "seed": seed, "persona": "wizard", "value": 1.0, "excluded": "",
                  "checkpoint": "final"},
                 {"measure": "marker", "arm": "pirate", "seed": seed, "persona": "doctor", "value": doctor, "excluded": "",
                  "checkpoint": "final"}]
    rows.append({"measure": "marker", "arm": "pirate", "seed": 0, "persona": "doctor", "value": 1.0,
                 "excluded": "empty_completion", "checkpoint": "final"})
    pd.DataFrame(rows).to_parquet(runs / "analysis" / "frame.parquet", index=False)
    study = SimpleNamespace(runs_dir=runs, spec=SimpleNamespace(arms={"pirate": None}))
    ctx = SimpleNamespace(args=SimpleNamespace(leakage_csv=None, marker_measure="marker"), study=study,
                          rel=lambda p: str(p))
    monkeypatch.setattr(interp_cli, "trained_negatives", lambda st, arm: ["wizard"] if arm == "pirate" else [])
    table, _ = interp_cli._leakage(ctx, {"pirate": "You are a pirate.", "doctor": "d", "wizard": "w"})
    assert table.to_dict("records") == [{"source": "pirate", "persona": "doctor", "marker_rate": pytest.approx(0.4)}]


def test_trained_negatives_from_the_corpus_meta(tmp_path):
    from training.corpora import meta_path

    corpus = tmp_path / "train_pirate.jsonl"
    corpus.write_text(json.dumps({"persona": "wizard", "positive": False}) + "\n")
    study = SimpleNamespace(spec=SimpleNamespace(arms={"pirate": SimpleNamespace(corpus=SimpleNamespace(path="train_pirate.jsonl"))}),
                            resolve=lambda rel: tmp_path / rel)
    assert interp_cli.trained_negatives(study, "pirate") == ["wizard"]  # from the records
    meta_path(corpus).write_text(json.dumps({"negative_personas": ["doctor", "wizard"]}))
    assert interp_cli.trained_negatives(study, "pirate") == ["doctor", "wizard"]
