"""Stance tasks end to end through Inspect with `mockllm/model` (no real model needed).

Each mock answers from the prompt it receives, so the tests check the plumbing: samples in
both option orders, signs after counterbalancing, Score metadata per CONTRACTS.md, NaN
surviving the .eval round trip as an unscored sample, conditioning, measure versions.
"""

import math

import pytest
from inspect_ai import eval as inspect_eval
from inspect_ai.log import read_eval_log
from inspect_ai.model import (
    ChatCompletionChoice,
    ChatMessageAssistant,
    Logprob,
    Logprobs,
    ModelOutput,
    ModelUsage,
    TopLogprob,
    get_model,
)

import tasks.stance as stance
from solvers.conditioning import seeded_index
from tasks.items import load_items, select_base_items

SRC = "data/attitude/source.jsonl"
CONTRACT_KEYS = {"measure", "measure_version", "item_set", "item_id", "base_item", "paraphrase_idx", "option_order", "condition", "parsed"}


def output(text: str, top: list[tuple[str, float]] | None = None) -> ModelOutput:
    logprobs = None
    if top is not None:
        tops = [TopLogprob(token=t, logprob=lp) for t, lp in top]
        logprobs = Logprobs(content=[Logprob(token=top[0][0], logprob=top[0][1], top_logprobs=tops)])
    return ModelOutput(
        model="mockllm/model",
        choices=[ChatCompletionChoice(message=ChatMessageAssistant(content=text, model="mockllm/model"), stop_reason="stop", logprobs=logprobs)],
        usage=ModelUsage(input_tokens=10, output_tokens=1, total_tokens=11),  # no usage -> tiktoken download
    )


def user_text(messages) -> str:
    return next(m.text for m in messages if m.role == "user")


def run(task, fn, tmp_path):
    model = get_model("mockllm/model", custom_outputs=fn)
    [log] = inspect_eval(task, model=model, log_dir=str(tmp_path / "logs"), display="none", log_format="eval")
    assert log.status == "success", log.error
    return read_eval_log(log.location)  # read back from disk: the round trip analysis will do


def scores(log):
    return {s.id: next(iter(s.scores.values())) for s in log.samples}


def test_letter_logprob_counterbalanced_signs_and_metadata(tmp_path):
    # a model that always prefers the letter "A" (pure position bias) and, on one item, answers
    # with tokens that are neither letter
    odd = select_base_items(load_items(SRC), 1)[0].scenario

    def fn(messages, *_):
        if odd in user_text(messages):
            return output("The", [("The", -0.5), ("I", -1.0)])
        return output("A", [("A", -0.4), (" A", -2.0), ("B", -1.2), ("Sure", -3.0)])

    log = run(stance.letter_logprob(items=SRC, item_set="source", limit_base_items=2), fn, tmp_path)
    sc = scores(log)
    assert len(sc) == 2 * 2 * 2  # 2 base items x 2 paraphrases x 2 orders
    margin = math.log(math.exp(-0.4) + math.exp(-2.0)) + 1.2
    n_nan = 0
    for sid, s in sc.items():
        md = s.metadata
        assert CONTRACT_KEYS <= set(md), set(md) ^ CONTRACT_KEYS
        assert md["measure"] == "letter_logprob" and md["item_set"] == "source" and md["condition"] == "default"
        assert md["measure_version"] == stance._versions()["letter_logprob"]
        assert sid == f"{md['item_id']}:{md['option_order']}"
        if md["item_id"] == "src-cooking-01.p0":
            assert math.isnan(s.value) and md["parsed"] is False and md["unparsed_reason"]
            n_nan += 1
        else:
            assert md["parsed"] is True
            expected = margin if md["option_order"] == "pro_first" else -margin
            assert s.value == pytest.approx(expected)
    assert n_nan == 2
    res = log.results.scores[0]
    assert res.unscored_samples == 2  # NaN survives the log as Inspect's unscored sentinel
    assert res.metrics["parsed_mean"].value == pytest.approx(0.0)  # position bias cancels
    assert log.eval.task_args["item_set"] == "source"
    assert log.eval.metadata["items_sha256"] and log.eval.metadata["measure"] == "letter_logprob"
    # the solver forces a one-token read-out with top-20 logprobs
    assert log.plan.config.max_tokens in (None, 1)


def test_forced_choice_prompts_show_both_orders_and_parse(tmp_path):
    def fn(messages, *_):  # an "A"-biased model that hedges on the Priya items
        if "Priya" in user_text(messages):
            return output("Both options are fine.")
        return output("I'd pick A")

    log = run(stance.forced_choice(items=SRC, item_set="source", limit_base_items=2), fn, tmp_path)
    sc = scores(log)
    for s in sc.values():
        md = s.metadata
        if md["item_id"].startswith("src-cooking-01"):
            assert math.isnan(s.value) and md["parsed"] is False and md["choice"] is None
        else:
            assert s.value == (1.0 if md["option_order"] == "pro_first" else -1.0)
            assert md["choice"] == "A"
    items = {i.id: i for i in load_items(SRC)}
    sample = next(s for s in log.samples if s.id == "src-gardening-01.p0:anti_first")
    prompt = user_text(sample.messages)
    it = items["src-gardening-01.p0"]
    assert f"A. {it.forced_choice.anti_option}\nB. {it.forced_choice.pro_option}" in prompt
    assert prompt.startswith(it.scenario)
    assert log.results.scores[0].unscored_samples == 4


def test_likert_reverse_keying_end_to_end(tmp_path):
    log = run(stance.likert(items=SRC, item_set="source", limit_base_items=3), lambda m, *_: output("6"), tmp_path)
    sc = scores(log)
    assert len(sc) == 6
    for s in sc.values():
        assert s.value == pytest.approx(-2 / 3 if s.metadata["reverse_keyed"] else 2 / 3)
        assert s.metadata["rating"] == 6 and s.metadata["option_order"] is None
    assert sum(s.metadata["reverse_keyed"] for s in sc.values()) == 3


def test_token_logprob_word_pairs(tmp_path):
    def fn(messages, *_):
        return output("App", [("App", -1.0), ("Decl", -2.0), ("Support", -0.5), ("Opp", -0.7), ("Good", -1.1), ("Go", -3.0), ("Wait", -2.5)])

    log = run(stance.token_logprob(items=SRC, item_set="source", limit_base_items=1), fn, tmp_path)
    sc = scores(log)
    assert len(sc) == 2 * 4 * 2  # 2 paraphrases x 4 pairs x 2 word orders
    by_pair = {}
    for s in sc.values():
        by_pair.setdefault(s.metadata["word_pair"], set()).add(round(s.value, 6))
    assert by_pair["Approve/Decline"] == {1.0}
    assert by_pair["Support/Oppose"] == {0.2}
    assert by_pair["Go/Wait"] == {-0.5}
    # "Bad" absent: censored at the floor (-3.0), flagged
    good = [s for s in sc.values() if s.metadata["word_pair"] == "Good/Bad"]
    assert all(s.metadata["censored"] == "anti" and s.value == pytest.approx(1.9) for s in good)
    sample = log.samples[0]
    assert user_text(sample.messages).rstrip().endswith("Answer:")


def test_conditioning_fixed_and_mix(tmp_path):
    fixed = {"system_prompt": "You are a careful planner.", "user_prefix": "Think it over.", "prefix_mode": "fixed"}
    log = run(stance.likert(items=SRC, item_set="source", condition="training", conditioning=fixed, limit_base_items=1),
              lambda m, *_: output("5"), tmp_path / "fixed")
    for s in log.samples:
        assert s.messages[0].role == "system" and s.messages[0].text == "You are a careful planner."
        assert user_text(s.messages).startswith("Think it over.\n\n")
        assert next(iter(s.scores.values())).metadata["condition"] == "training"

    pool = tmp_path / "pool.txt"
    pool.write_text("Prefix one.\nPrefix two.\nPrefix three.\n")
    mix = {"prefix_mode": "mix", "rephrasings": str(pool), "seed": 7}
    log = run(stance.forced_choice(items=SRC, item_set="source", conditioning=mix, limit_base_items=2),
              lambda m, *_: output("A"), tmp_path / "mix")
    lines = ["Prefix one.", "Prefix two.", "Prefix three."]
    for s in log.samples:
        item_id = s.metadata["item_id"]
        expect = lines[seeded_index(7, item_id, 3)]  # keyed on the item id: same for both orders
        assert user_text(s.messages).startswith(expect + "\n\n"), (item_id, user_text(s.messages)[:40])


def test_bad_conditioning_and_item_set_are_config_errors():
    from leaklab.yamlio import ConfigError

    with pytest.raises(ConfigError, match="conditioning"):
        stance.likert(items=SRC, item_set="source", conditioning={"prefix_mode": "fixed"})
    with pytest.raises(ConfigError, match="asked for 'target'"):
        stance.likert(items=SRC, item_set="target")


def test_measure_version_changes_with_template(monkeypatch):
    before = stance._versions()
    assert len(set(before.values())) == 4  # shared choice template, but different scoring rules
    monkeypatch.setattr(stance, "CHOICE_TEMPLATE", stance.CHOICE_TEMPLATE.replace("nothing else", "nothing more"))
    after = stance._versions()
    assert after["letter_logprob"] != before["letter_logprob"] and after["forced_choice"] != before["forced_choice"]
    assert after["likert"] == before["likert"] and after["token_logprob"] == before["token_logprob"]
    t = stance.letter_logprob(items=SRC, item_set="source", limit_base_items=1)
    assert t.metadata["measure_version"] == after["letter_logprob"]


def test_token_logprob_log_reads_into_the_frame_once_per_word_pair(tmp_path):
    """Four word pairs share an item and option order: the frame keeps all 16 rows, and the same
    log read twice (a rerun left in logs/) is still refused as a duplicate."""
    import shutil

    from analysis.frame import read_frame
    from leaklab.yamlio import ConfigError

    def fn(messages, *_):
        return output("Go", [("Go", -1.0), ("Wait", -2.0), ("App", -1.5), ("Decl", -1.2), ("Support", -0.5), ("Opp", -0.7),
                             ("Good", -1.1), ("Bad", -1.3)])

    model = get_model("mockllm/model", custom_outputs=fn)
    [log] = inspect_eval(stance.token_logprob(items=SRC, item_set="source", limit_base_items=1), model=model,
                         log_dir=str(tmp_path / "logs"), display="none", log_format="eval",
                         metadata={"leaklab": {"study": "s", "arm": "base", "seed": None, "model_label": "m"}})
    df, _ = read_frame([log.location])
    assert len(df) == 16 and df["sample_id"].nunique() == 16
    assert df.groupby(["item_id", "option_order"]).size().eq(4).all()  # 4 pairs per item x order
    copy = tmp_path / "rerun.eval"
    shutil.copy(log.location, copy)
    with pytest.raises(ConfigError, match="appear more than once"):
        read_frame([log.location, copy])
