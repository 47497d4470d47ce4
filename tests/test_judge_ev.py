"""Judge expected value, coverage and NaN on hand-built logprob lists; cache; mock grader."""

from __future__ import annotations

import json
import math

import pytest

from leaklab.yamlio import ConfigError
from scorers.judge import (
    JudgeCache,
    binary_probability,
    cache_key,
    expected_score,
    load_judge_prompt,
    nan_rate_report,
    parse_score_token,
)

from mockllm_outputs import LN, judge_output, text_output


# ---------------------------------------------------------------- token parsing


@pytest.mark.parametrize(
    "tok,scale,want",
    [
        ("7", "0-100", 7),
        (" 7", "0-100", 7),
        ("7 ", "0-100", 7),
        ("\u01207", "0-100", 7),  # hf-style BPE space marker
        ("\u25817", "0-100", 7),  # sentencepiece marker
        ("100", "0-100", 100),
        ("42", "0-100", 42),
        ("101", "0-100", None),  # out of range
        ("150", "0-100", None),
        ("-5", "0-100", None),  # signed: not a score token
        ("5.5", "0-100", None),
        ("five", "0-100", None),
        ("", "0-100", None),
        ("9", "0-9", 9),
        ("10", "0-9", None),  # multi-digit out of a 0-9 range
        ("0", "0-9", 0),
    ],
)
def test_parse_score_token(tok, scale, want):
    assert parse_score_token(tok, scale) == want


def test_unknown_scale_is_config_error():
    with pytest.raises(ConfigError, match="scale"):
        parse_score_token("5", "1-7")


# ---------------------------------------------------------------- expected value


def test_ev_hand_computed_with_spaces_and_duplicates():
    # p(" 80")=0.5, p("80")=0.1 (same number, summed), p("20")=0.3, junk 0.1 -> coverage 0.9
    top = [(" 80", LN(0.5)), ("80", LN(0.1)), ("20", LN(0.3)), ("Sure", LN(0.1))]
    r = expected_score(top, "0-100", min_coverage=0.8)
    assert r.parsed
    assert r.coverage == pytest.approx(0.9)
    assert r.ev_native == pytest.approx((80 * 0.6 + 20 * 0.3) / 0.9)
    assert r.value == pytest.approx(60.0)
    assert r.top_token == " 80"
    assert r.probs == pytest.approx({80: 0.6, 20: 0.3})


def test_ev_out_of_range_numbers_do_not_count():
    top = [("150", LN(0.5)), ("50", LN(0.45)), ("x", LN(0.05))]
    r = expected_score(top, "0-100", min_coverage=0.4)
    assert r.parsed and r.coverage == pytest.approx(0.45)
    assert r.value == pytest.approx(50.0)
    # the same list under the 0.8 threshold is missing, never 0
    r2 = expected_score(top, "0-100", min_coverage=0.8)
    assert not r2.parsed and math.isnan(r2.value) and r2.coverage == pytest.approx(0.45)


def test_ev_nan_when_no_number_at_all():
    r = expected_score([("REFUSAL", LN(0.9)), ("CODE", LN(0.1))], "0-100", min_coverage=0.0)
    assert not r.parsed and math.isnan(r.value) and r.coverage == 0.0 and r.top_token == "REFUSAL"


def test_ev_multi_digit_tokens():
    top = [("100", LN(0.25)), ("75", LN(0.25)), ("0", LN(0.5))]
    r = expected_score(top, "0-100", 0.8)
    assert r.value == pytest.approx(100 * 0.25 + 75 * 0.25)


def test_ev_scale_0_9_maps_to_percent():
    top = [("9", LN(0.5)), (" 0", LN(0.25)), ("3", LN(0.25)), ("10", LN(1e-9))]
    r = expected_score(top, "0-9", 0.8)
    assert r.ev_native == pytest.approx(9 * 0.5 + 3 * 0.25)
    assert r.value == pytest.approx(100 * (9 * 0.5 + 3 * 0.25) / 9)


def test_ev_accepts_inspect_toplogprob_and_dicts():
    from inspect_ai.model import TopLogprob

    a = expected_score([TopLogprob(token="4", logprob=0.0)], "0-9", 0.5)
    b = expected_score([{"token": "4", "logprob": 0.0}], "0-9", 0.5)
    assert a.value == b.value == pytest.approx(400 / 9)


def test_bad_min_coverage():
    with pytest.raises(ConfigError):
        expected_score([("5", 0.0)], "0-9", 1.5)


def test_binary_probability():
    top = [(" YES", LN(0.6)), ("yes", LN(0.1)), ("No", LN(0.2)), ("maybe", LN(0.1))]
    p, cov, ok = binary_probability(top, min_coverage=0.5)
    assert ok and cov == pytest.approx(0.9) and p == pytest.approx(0.7 / 0.9)
    p, cov, ok = binary_probability([("maybe", 0.0)], min_coverage=0.5)
    assert not ok and math.isnan(p)


# ---------------------------------------------------------------- prompt files and cache


def test_judge_prompt_render_and_hash(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("system: rate {{ lo }}-{{ hi }}\nuser: |\n  Q {{ question }}\n  A {{ answer }}\n")
    p = load_judge_prompt(str(f))
    msgs = p.render(lo=0, hi=9, question="q?", answer="a.")
    assert msgs == [{"role": "system", "content": "rate 0-9"}, {"role": "user", "content": "Q q?\nA a."}]
    import hashlib

    assert p.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
    with pytest.raises(ConfigError, match="template variable"):
        p.render(lo=0, hi=9, question="q")
    bad = tmp_path / "bad.yaml"
    bad.write_text("usr: x\n")
    with pytest.raises(ConfigError, match="user"):
        load_judge_prompt(str(bad))


def test_shipped_prompts_load():
    for name in ("trait", "em_alignment", "em_coherence", "refusal", "fluency"):
        p = load_judge_prompt(f"data/judge_prompts/{name}.yaml")
        msgs = p.render(lo=0, hi=100, question="q", answer="a", trait="playful")
        assert msgs[-1]["role"] == "user" and "a" in msgs[-1]["content"]


def test_cache_key_depends_on_every_part():
    msgs = [{"role": "user", "content": "hi"}]
    base = cache_key("m/x", {}, msgs, {"max_tokens": 1, "temperature": 0.0, "top_logprobs": 20})
    assert base == cache_key("m/x", {}, [dict(m) for m in msgs], {"top_logprobs": 20, "temperature": 0.0, "max_tokens": 1})
    variants = [
        cache_key("m/y", {}, msgs, {"max_tokens": 1, "temperature": 0.0, "top_logprobs": 20}),
        cache_key("m/x", {"adapter": "a"}, msgs, {"max_tokens": 1, "temperature": 0.0, "top_logprobs": 20}),
        cache_key("m/x", {}, [{"role": "user", "content": "hi!"}], {"max_tokens": 1, "temperature": 0.0, "top_logprobs": 20}),
        cache_key("m/x", {}, msgs, {"max_tokens": 1, "temperature": 0.5, "top_logprobs": 20}),
        cache_key("m/x", {}, msgs, {"max_tokens": 1, "temperature": 0.0, "top_logprobs": 5}),
        cache_key("m/x", {}, msgs, {"max_tokens": 1, "temperature": 0.0, "top_logprobs": 20, "seed": 1}),
    ]
    assert len({base, *variants}) == 1 + len(variants)


def test_cache_roundtrip_and_kill_safety(tmp_path):
    cache = JudgeCache(tmp_path)
    key = "ab" + "0" * 62
    assert cache.get(key) is None
    # a writer killed mid-write leaves only a temp file: not an entry
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / f".{key}.json.123.tmp").write_text('{"completion": "5", "top_lo')
    assert cache.get(key) is None
    cache.put(key, {"completion": "5", "top_logprobs": [["5", -0.1]]})
    assert cache.get(key) == {"completion": "5", "top_logprobs": [["5", -0.1]]}
    # a torn final file (impossible with rename, but never trusted) reads as a miss
    cache.path(key).write_text('{"completion": ')
    assert cache.get(key) is None


# ---------------------------------------------------------------- mock grader through Inspect


def test_trait_task_with_mock_grader_and_cache(tmp_path, monkeypatch):
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import get_model

    from tasks.trait import trait

    monkeypatch.setenv("LEAKLAB_JUDGE_CACHE", str(tmp_path / "judge"))
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join(json.dumps({"id": f"i{k}", "instruction": f"Say thing {k}."}) for k in range(3)) + "\n")
    answers = {"Say thing 0.": "Hello there", "Say thing 1.": "Bonjour", "Say thing 2.": ""}
    calls = {"n": 0}

    def policy(input, tools, tool_choice, config):
        user = [m for m in input if m.role == "user"][-1].text
        return text_output(next(v for k, v in answers.items() if user.endswith(k)))

    def grader(input, tools, tool_choice, config):
        calls["n"] += 1
        assert config.max_tokens == 1 and config.logprobs and config.top_logprobs == 20
        user = input[-1].text
        if "Hello there" in user:
            return judge_output([(" 80", LN(0.5)), ("20", LN(0.4)), ("x", LN(0.1))])  # EV (40 + 8) / 0.9
        return judge_output([("Sorry", LN(0.7)), ("5", LN(0.3))])  # coverage 0.3 < 0.8: NaN

    def run():
        task = trait(item_set="eval", traits="playful", judge="grader", items=str(items), max_tokens=5)
        model = get_model("mockllm/model", custom_outputs=policy, memoize=False)
        role = get_model("mockllm/model", custom_outputs=grader, memoize=False)
        [log] = inspect_eval(task, model=model, model_roles={"grader": role}, log_dir=str(tmp_path / "logs"), display="none")
        assert log.status == "success", log.error
        run.log = log
        return {s.id: s.scores["trait_judge"] for s in log.samples}

    scores = run()
    # NaN-rate guard per cell: 2 of 3 missing fails the 10% limit stamped in the scores
    [guard] = nan_rate_report(run.log)
    assert guard["measure"] == "trait_playful" and guard["n"] == 3 and guard["missing"] == 2
    assert guard["nan_rate"] == pytest.approx(2 / 3) and guard["max_nan_rate"] == 0.1 and guard["ok"] is False
    assert scores["i0"].value == pytest.approx(48 / 0.9) and scores["i0"].metadata["parsed"] is True
    assert math.isnan(scores["i1"].value) and scores["i1"].metadata["parsed"] is False
    assert scores["i1"].metadata["missing_reason"] == "low_coverage"
    assert scores["i2"].metadata["missing_reason"] == "empty_answer"  # judge never called for empty text
    md = scores["i0"].metadata
    assert md["measure"] == "trait_playful" and md["judge_model"] == "mockllm/model"
    assert md["judge_prompt_sha256"] == load_judge_prompt("data/judge_prompts/trait.yaml").sha256
    assert md["top_logprobs"][0] == [" 80", pytest.approx(LN(0.5))]
    assert len(md["measure_version"]) == 64 and md["judge_cached"] is False
    # recomputable from the stored logprobs
    assert expected_score(md["top_logprobs"], md["scale"], md["min_coverage"]).value == pytest.approx(scores["i0"].value)
    assert calls["n"] == 2
    again = run()  # re-scoring is served by the cache: no new grader calls, same numbers
    assert calls["n"] == 2
    assert again["i0"].value == scores["i0"].value and again["i0"].metadata["judge_cached"] is True


def test_grader_missing_is_a_clear_error(tmp_path, monkeypatch):
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import get_model

    from tasks.trait import trait

    monkeypatch.setenv("LEAKLAB_JUDGE_CACHE", str(tmp_path / "judge"))
    task = trait(item_set="eval", traits="playful", judge="grader", limit=1, max_tokens=5)
    model = get_model("mockllm/model", custom_outputs=lambda *a: text_output("hi"), memoize=False)
    [log] = inspect_eval(task, model=model, log_dir=str(tmp_path / "logs"), display="none")
    assert log.status == "error" and "grader" in log.error.message


def test_rule_judge_without_rule_refused():
    from tasks.trait import trait

    with pytest.raises(ConfigError, match="no rule judge"):
        trait(item_set="eval", traits="playful", judge="rule")
    with pytest.raises(ConfigError, match="unknown trait"):
        trait(item_set="eval", traits="sarcastic")


def test_digit_splitting_judge_refused_on_0_100(tmp_path, monkeypatch, tiny_model_dir):
    """SmolLM2's tokenizer (shared by tiny-random) splits "85" into "8","5": 0-100 would misread it."""
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import get_model

    from tasks.trait import trait

    monkeypatch.setenv("LEAKLAB_JUDGE_CACHE", str(tmp_path / "judge"))
    task = trait(item_set="eval", traits="playful", judge="grader", limit=1, max_tokens=3, scale="0-100")
    model = get_model("mockllm/model", custom_outputs=lambda *a: text_output("hi"), memoize=False)
    [log] = inspect_eval(task, model=model, model_roles={"grader": "leaklab/tiny-random"}, log_dir=str(tmp_path / "l"), display="none")
    assert log.status == "error" and "scale=0-9" in log.error.message
