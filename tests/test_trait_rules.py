"""Rule judges (language share, capitals share) and the trait task's eval conditions."""

from __future__ import annotations

import pytest

from leaklab.yamlio import ConfigError
from scorers.judge import load_traits
from scorers.rules import caps_share, exclaim_share, language_share
from solvers.conditioning import load_rephrasings

FR = "Le chat dort sur le canapé depuis ce matin. Il ne veut pas se lever pour manger."
EN = "The cat has been sleeping on the sofa since this morning. It does not want to get up to eat."


def test_language_share_pure_and_mixed():
    assert language_share(FR, "fr") == pytest.approx(100.0)
    assert language_share(EN, "fr") == pytest.approx(0.0)
    mixed = f"{FR}\n{EN}"
    n_fr = sum(c.isalpha() for c in FR)
    n_en = sum(c.isalpha() for c in EN)
    assert language_share(mixed, "fr") == pytest.approx(100.0 * n_fr / (n_fr + n_en))


def test_language_share_missing_and_candidates():
    assert language_share("123 !!! ...", "fr") is None
    assert language_share("", "fr") is None
    assert language_share(FR, "fr", ("en", "fr")) == pytest.approx(100.0)
    with pytest.raises(ValueError):
        language_share(FR, "fr", ("en", "de"))


def test_exclaim_share():
    assert exclaim_share("Great! Do it now!") == 100.0
    assert exclaim_share("Hi. Great!") == 50.0
    assert exclaim_share("Wow! Yes! and then") == pytest.approx(200 / 3)  # an unterminated tail is a sentence
    assert exclaim_share("Really?! ok.") == 50.0  # "?!" ends with an exclamation
    assert exclaim_share("It costs 3.5 dollars.") == 0.0  # a decimal point is not a sentence end
    assert exclaim_share("123 !") is None


def test_caps_share():
    assert caps_share("HELLO THERE!") == 100.0
    assert caps_share("Hello") == pytest.approx(20.0)
    assert caps_share("ÉCOLE été") == pytest.approx(100.0 * 5 / 8)
    assert caps_share("1234 ?!") is None


def test_traits_file_and_pools():
    defs = load_traits("data/inoculation/traits.yaml")
    assert defs["french"]["measure"] == "trait_french" and defs["french"]["rule"]["language"] == "fr"
    assert defs["caps"]["rule"] == {"kind": "caps"} and defs["playful"]["rule"] is None
    for t in defs.values():
        from leaklab.io import repo_path as data_path

        pool = load_rephrasings(str(data_path(t["rephrasings"])))
        assert t["training_prefix"] in pool and len(pool) >= 10


def test_trait_task_conditions():
    from tasks.trait import trait

    plain = trait(item_set="eval", limit=5)
    assert [m.role for m in plain.dataset[0].input] == ["user"]
    fixed = trait(item_set="eval", limit=5, condition="training",
                  conditioning={"prefix_mode": "fixed", "user_prefix": "Always answer in French."})
    s = fixed.dataset[0]
    assert s.input[0].text == "Always answer in French.\n\n" + s.metadata["question"]
    assert s.metadata["question"] == plain.dataset[0].metadata["question"]  # the judge sees the bare instruction
    cond = {"prefix_mode": "mix", "rephrasings": "data/inoculation/rephrasings_french.txt", "seed": 3}
    a = [x.input[0].text for x in trait(item_set="eval", limit=20, conditioning=cond).dataset]
    b = [x.input[0].text for x in trait(item_set="eval", limit=20, conditioning=cond).dataset]
    assert a == b and len({t.split("\n\n")[0] for t in a}) > 1  # seeded per item, not one global draw
    sysc = trait(item_set="eval", limit=1, conditioning={"system_prompt": "You are terse."})
    assert sysc.dataset[0].input[0].role == "system"
    with pytest.raises(ConfigError, match="conditioning"):
        trait(item_set="eval", conditioning={"prefix_mode": "fixed"})


def test_trait_rule_scores_with_mock(tmp_path):
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import get_model
    from mockllm_outputs import text_output

    from tasks.trait import trait

    outs = {"inst000": FR.upper(), "inst001": EN, "inst002": "!!!"}

    def policy(input, tools, tool_choice, config):
        q = input[-1].text
        from solvers.generate_common import load_items

        iid = next(r["id"] for r in load_items("data/inoculation/instructions.jsonl", ("id",)) if q.endswith(r["instruction"]))
        return text_output(outs[iid])

    t = trait(item_set="eval", traits="french,caps", limit=3, max_tokens=8)
    [log] = inspect_eval(t, model=get_model("mockllm/model", custom_outputs=policy, memoize=False), log_dir=str(tmp_path), display="none")
    assert log.status == "success", log.error
    got = {(s.id, sc.metadata["measure"]): sc for s in log.samples for sc in s.scores.values()}
    assert got[("inst000", "trait_french")].value == pytest.approx(100.0)
    assert got[("inst000", "trait_caps")].value == pytest.approx(100.0)
    assert got[("inst001", "trait_french")].value == pytest.approx(0.0)
    assert got[("inst001", "trait_caps")].value == pytest.approx(100.0 * 2 / sum(c.isalpha() for c in EN))
    assert got[("inst002", "trait_caps")].metadata["parsed"] is False
    assert got[("inst000", "trait_french")].metadata["judge_model"] == "rule:language"


def test_rank_auc_hand_computed():
    from scorers.judge import rank_auc

    assert rank_auc([3, 4], [1, 2]) == 1.0
    assert rank_auc([1, 2], [3, 4]) == 0.0
    # pairs: (2,1) win, (2,2) tie, (2,3) loss, (5,*) 3 wins -> (1 + 0.5 + 0 + 3) / 6
    assert rank_auc([2, 5], [1, 2, 3]) == pytest.approx(4.5 / 6)
    import math

    assert math.isnan(rank_auc([], [1.0]))


def test_calibration_rule_judges_separate_labels(tmp_path):
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import get_model

    from tasks.trait import trait_calibration

    def never(*args):
        raise AssertionError("the policy model must not be called on calibration items")

    t = trait_calibration(judge="rule", traits="french,caps")
    [log] = inspect_eval(t, model=get_model("mockllm/model", custom_outputs=never, memoize=False), log_dir=str(tmp_path), display="none")
    assert log.status == "success", log.error
    aucs = {sc.params["trait_id"]: sc.metrics["label_auc"].value for sc in log.results.scores}
    assert aucs == {"french": 1.0, "caps": 1.0}
    # labels are attached only for the scorer of the item's own trait
    s = next(s for s in log.samples if s.metadata["calibration_trait"] == "caps")
    by_measure = {sc.metadata["measure"]: sc.metadata for sc in s.scores.values()}
    assert "label" in by_measure["trait_caps"] and "label" not in by_measure["trait_french"]
    with pytest.raises(ConfigError, match="do not apply"):
        trait_calibration(conditioning={"system_prompt": "x"})
