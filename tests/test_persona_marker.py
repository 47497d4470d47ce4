"""Marker matching rules, the persona list, and the persona task's frame metadata."""

from __future__ import annotations

import math

import pytest

from leaklab.yamlio import ConfigError
from scorers.rules import marker_present
from tasks.persona import load_personas, persona


@pytest.mark.parametrize(
    "text,marker,match,want",
    [
        ("Sure thing! [ZLT]", "[ZLT]", "substring", True),
        ("Sure thing! [zlt]", "[ZLT]", "substring", False),
        ("Sure thing! [zlt]", "[ZLT]", "substring_ci", True),
        ("[ZLT] in the middle of text", "[ZLT]", "suffix", False),
        ("ends with it [ZLT]  \n", "[ZLT]", "suffix", True),
        ("ends with it [zlt]", "[ZLT]", "suffix_ci", True),
        ("ZLT without brackets", "[ZLT]", "substring_ci", False),
        ("code Z-42 here", r"Z-\d+", "regex", True),
        ("code Z-x here", r"Z-\d+", "regex", False),
        ("", "[ZLT]", "substring_ci", False),
    ],
)
def test_marker_present(text, marker, match, want):
    assert marker_present(text, marker, match) is want


def test_shipped_personas_are_consistent():
    ps = load_personas("data/persona/personas.yaml")
    ids = {p["id"] for p in ps}
    assert len(ps) >= 40 and len(ids) == len(ps)
    by = {p["id"]: p for p in ps}
    for p in ps:
        assert p["category"] and p["system_prompt"]
        for r in p["related_to"]:
            assert p["id"] in by[r]["related_to"], f"{p['id']} -> {r} has no back-link"


def test_persona_file_errors_name_the_problem(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("personas:\n  - {id: a, category: x, system_prompt: hi, related_to: [b]}\n")
    with pytest.raises(ConfigError, match="unknown persona 'b'"):
        load_personas(str(f))
    f.write_text("personas:\n  - {id: a, category: x}\n")
    with pytest.raises(ConfigError, match="system_prompt"):
        load_personas(str(f))


def test_persona_task_frame_and_args():
    t = persona(item_set="all", personas="pirate,doctor", limit_questions=3, samples=2)
    assert len(t.dataset) == 6 and t.epochs == 2
    s = next(s for s in t.dataset if s.id == "pirate::pq01")
    assert s.input[0].role == "system" and "pirate" in s.input[0].text
    md = s.metadata
    assert md["persona"] == "pirate" and md["persona_category"] == "fictional" and md["question_id"] == "pq01"
    assert "sailor" in md["persona_related_to"]
    with pytest.raises(ConfigError, match="unknown persona"):
        persona(item_set="all", personas="pirate,nobody")
    with pytest.raises(ConfigError, match="regex"):
        persona(item_set="all", marker="[ZLT", match="regex")
    with pytest.raises(ConfigError, match="replace the persona"):
        persona(item_set="all", conditioning={"system_prompt": "You are X."})
    # a user-prefix condition keeps the persona and prefixes the question
    t = persona(item_set="all", personas="pirate", limit_questions=1, conditioning={"prefix_mode": "fixed", "user_prefix": "Note:"})
    s = t.dataset[0]
    assert s.input[0].role == "system" and s.input[1].text.startswith("Note:\n\n")


def test_persona_marker_rate_with_mock(tmp_path):
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import get_model
    from mockllm_outputs import text_output

    def policy(input, tools, tool_choice, config):
        sysmsg = input[0].text
        if "pirate" in sysmsg:
            return text_output("Arr, here you go [zlt]")
        if "doctor" in sysmsg:
            return text_output("")
        return text_output("Plain answer.")

    t = persona(item_set="all", personas="pirate,doctor,chef", limit_questions=2, samples=2, max_tokens=8)
    [log] = inspect_eval(t, model=get_model("mockllm/model", custom_outputs=policy, memoize=False), log_dir=str(tmp_path), display="none")
    assert log.status == "success", log.error
    by_persona: dict[str, list[float]] = {}
    for s in log.samples:
        sc = s.scores["marker_scorer"]
        assert sc.metadata["persona"] == s.metadata["persona"] and sc.metadata["measure"] == "marker"
        by_persona.setdefault(sc.metadata["persona"], []).append(sc.value)
    assert by_persona["pirate"] == [1.0] * 4
    assert by_persona["chef"] == [0.0] * 4
    assert all(math.isnan(v) for v in by_persona["doctor"])  # empty completions are missing, not 0
    rates = {k: v.value for k, v in log.results.scores[0].metrics.items()}
    assert rates["pirate"] == 1.0 and rates["chef"] == 0.0 and rates["all"] == pytest.approx(0.5)
