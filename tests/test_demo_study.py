"""The demo study's own data and design facts (studies/demo)."""

from leaklab.io import read_jsonl
from leaklab.study import REPO_ROOT, load_study
from prereg import load_prereg
from training.corpora import attitude_template, inoculation_pair

SOURCE = REPO_ROOT / "data" / "inoculation" / "source_advice.jsonl"


def test_source_advice_is_the_builders_held_out_cells():
    """The manipulation-check questions are cells 200-215 of the same seeded template order:
    the training kind of question, never a training question of a corpus of <= 200 documents."""
    rows = read_jsonl(SOURCE)
    built = attitude_template("neutral", 216, seed=21)
    assert [r["instruction"] for r in rows] == [b["messages"][0]["content"] for b in built[200:216]]
    assert [r["cell_id"] for r in rows] == [b["cell_id"] for b in built[200:216]]
    trained = {d["messages"][0]["content"] for d in inoculation_pair(200, seed=21)}
    assert trained.isdisjoint(r["instruction"] for r in rows)


def test_demo_arms_share_cells_and_differ_only_in_style():
    """trait and plain are the same advice answers; only the casing and the sentence ends differ."""
    study = load_study(REPO_ROOT / "studies" / "demo")
    args = {a: study.spec.arms[a].corpus.builder_args for a in ("trait", "plain")}
    trait = inoculation_pair(args["trait"]["n_docs"], seed=args["trait"]["seed"])
    plain = attitude_template("neutral", args["plain"]["n_docs"], seed=args["plain"]["seed"])
    assert [t["cell_id"] for t in trait] == [p["cell_id"] for p in plain]
    for t, p in zip(trait, plain):
        assert t["messages"][0] == p["messages"][0]
        assert t["messages"][1]["content"].replace("!", ".").upper() == p["messages"][1]["content"].replace("!", ".").upper()


def test_demo_prereg_states_a_leak_and_a_placebo():
    pr = load_prereg(REPO_ROOT / "studies" / "demo")
    conf = {h.id: h for h in pr.hypotheses if h.confirmatory}
    assert (conf["H1"].estimand, conf["H1"].direction) == ("trait - plain", "positive")
    assert (conf["H2"].estimand, conf["H2"].direction) == ("plain - base", "two_sided")
    assert pr.hypothesis("M1").is_manipulation_check
    assert all(h.requires == ["M1"] for h in conf.values())
