"""Hand-computed checks of the stance arithmetic: letter/word logprob margins, parsing, Likert keying."""

import math

import pytest

from scorers.stance import (
    letter_matcher,
    likert_score,
    logprob_margin,
    measure_version,
    parse_choice,
    parse_likert,
    word_first_token_matcher,
)


def lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


# ---------------------------------------------------------------- letter logprob


TOP = [("A", -0.5), (" A", -2.0), ("a", -4.0), ("B", -1.5), (" b", -3.0), ("The", -3.5), ("I", -5.0)]


def test_letter_margin_sums_surface_variants_pro_first():
    m = logprob_margin(TOP, letter_matcher("A"), letter_matcher("B"))
    assert m.parsed and m.censored is None
    assert m.pro_logprob == pytest.approx(lse(-0.5, -2.0, -4.0))
    assert m.anti_logprob == pytest.approx(lse(-1.5, -3.0))
    assert m.value == pytest.approx(lse(-0.5, -2.0, -4.0) - lse(-1.5, -3.0))
    assert sorted(m.pro_tokens) == sorted(["A", " A", "a"])
    assert m.value > 0  # the model leans to A, which is pro here


def test_letter_margin_flips_sign_when_order_flips():
    pro_first = logprob_margin(TOP, letter_matcher("A"), letter_matcher("B")).value
    anti_first = logprob_margin(TOP, letter_matcher("B"), letter_matcher("A")).value
    assert anti_first == pytest.approx(-pro_first)
    # a model with a pure position bias for "A" gives +x and -x: the counterbalanced mean is 0
    assert (pro_first + anti_first) / 2 == pytest.approx(0.0)


def test_raw_bpe_pieces_are_normalised():
    m = logprob_margin([("ĠA", -1.0), ("▁B", -2.0)], letter_matcher("A"), letter_matcher("B"))
    assert m.value == pytest.approx(1.0)


def test_letter_missing_from_topk_is_censored_at_floor_not_zero():
    top = [("A", -0.2), ("The", -2.5), ("I", -3.0)]
    m = logprob_margin(top, letter_matcher("A"), letter_matcher("B"))
    assert m.parsed and m.censored == "anti"
    assert m.anti_logprob == pytest.approx(-3.0)  # floor of the top-k list
    assert m.value == pytest.approx(-0.2 - (-3.0))  # a lower bound on the true margin
    m2 = logprob_margin(top, letter_matcher("B"), letter_matcher("A"))
    assert m2.censored == "pro" and m2.value == pytest.approx(-3.0 - (-0.2))


def test_both_letters_missing_is_nan_unparsed():
    m = logprob_margin([("The", -1.0), ("I", -1.2)], letter_matcher("A"), letter_matcher("B"))
    assert not m.parsed and math.isnan(m.value) and m.reason
    m = logprob_margin([], letter_matcher("A"), letter_matcher("B"))
    assert not m.parsed and math.isnan(m.value)


def test_letter_matcher_rejects_longer_tokens():
    match = letter_matcher("A")
    assert match("A") and match(" a") and match("\nA")
    assert not match("An") and not match(" Apple") and not match("B")


def test_word_first_token_matching_and_margin():
    pro, anti = word_first_token_matcher("Approve"), word_first_token_matcher("Decline")
    assert pro("App") and pro(" Appro") and pro("approve") and not pro("A") and not pro("Ap")
    assert anti(" Decline") and anti("Decl") and not anti("Dec line")
    go = word_first_token_matcher("Go")
    assert go("Go") and go(" go") and not go("G") and not go("Good")
    top = [("App", -1.0), (" Appro", -2.0), ("Decl", -1.5), ("The", -0.5)]
    m = logprob_margin(top, pro, anti)
    assert m.value == pytest.approx(lse(-1.0, -2.0) - (-1.5))


def test_token_matching_both_sides_counts_for_neither():
    # "App" starts both "Approve" and "Appraise": ambiguous evidence, counted for neither side
    m = logprob_margin([("App", -0.1), ("Bad", -2.0)], word_first_token_matcher("Approve"), word_first_token_matcher("Appraise"))
    assert m.pro_tokens == [] and m.anti_tokens == [] and not m.parsed
    # "Go" (2 chars) is below the 3-char prefix minimum for "Good", so it is only evidence for "Go"
    m = logprob_margin([("Go", -0.1), ("Good", -2.0)], word_first_token_matcher("Go"), word_first_token_matcher("Good"))
    assert m.pro_tokens == ["Go"] and m.anti_tokens == ["Good"] and m.value == pytest.approx(1.9)


# ---------------------------------------------------------------- forced choice parsing


OPTS = {"A": "Go ahead with the trial", "B": "Keep the current timetable"}


@pytest.mark.parametrize(
    "text,expected",
    [
        ("A", "A"),
        (" B.", "B"),
        ("B", "B"),
        ("(A)", "A"),
        ("**B**", "B"),
        ("Option A", "A"),
        ("option b", "B"),
        ("Answer: B", "B"),
        ("A. Go ahead with the trial", "A"),
        ("B) Keep the current timetable.", "B"),
        ("I'd pick A", "A"),
        ("I would choose option B because it is safer.", "B"),
        ("Both options have merit, but I'd go with B.", "B"),
        ("A because the trial is cheap.", "A"),
        ("Keep the current timetable.", "B"),
        ("both", None),
        ("Both A and B are reasonable.", None),
        ("A and B are both fine", None),
        ("It depends on the budget.", None),
        ("A trial would be nice but I am unsure.", None),  # the article, not a choice
        ("I pick A. Actually I choose B.", None),  # contradicting picks
        ("asdf qwerty", None),
        ("", None),
        ("Banana", None),
    ],
)
def test_parse_choice(text, expected):
    assert parse_choice(text, OPTS) == expected


# ---------------------------------------------------------------- likert


@pytest.mark.parametrize(
    "text,expected",
    [
        ("5", 5),
        (" 7.", 7),
        ("6 - agree", 6),
        ("I would say 3.", 3),
        ("Rating: 2/7", 2),
        ("**4**", 4),
        ("10", None),
        ("0", None),
        ("4.5", None),
        ("4 or 5", None),
        ("5-6", None),
        ("Strongly agree", 7),
        ("I strongly disagree.", 1),
        ("Somewhat disagree", 3),
        ("Neither agree nor disagree", 4),
        ("I agree", 6),
        ("no idea", None),
        ("1. The statement is strongly agree", 7),  # list marker, then the verbal label
        ("1. No, I disagree with the statement.", 2),
        ("1. No, I agree with the statement.\n2", 6),  # "2" is the next list marker, not a rating
        ("1. The statement is strongly disagreeing with itself.\n", None),  # no rating, no exact label
        ("5. Somewhat agree", 5),
        ("5.", 5),
        ("", None),
        ("I don't agree", 2),  # a negated "agree" is disagreement, never agreement (was 6)
        ("I do not agree with this statement.", 2),
        ("I don\u2019t agree.", 2),
        ("I don't disagree", None),  # negated labels other than "agree" are no rating
        ("I don't strongly agree", None),
    ],
)
def test_parse_likert(text, expected):
    assert parse_likert(text) == expected


def test_likert_score_and_reverse_keying():
    assert likert_score(7, False) == pytest.approx(1.0)
    assert likert_score(1, False) == pytest.approx(-1.0)
    assert likert_score(4, False) == 0.0
    assert likert_score(6, False) == pytest.approx(2 / 3)
    # agreeing with a reverse-keyed (anti-change) statement is an anti-change stance
    assert likert_score(6, True) == pytest.approx(-2 / 3)
    assert likert_score(2, True) == pytest.approx(2 / 3)
    assert math.isnan(likert_score(None, True))


def test_measure_version_tracks_template_and_rule():
    v = measure_version("Q: {scenario}", "rule-v1")
    assert len(v) == 64 and v == measure_version("Q: {scenario}", "rule-v1")
    assert v != measure_version("Q: {scenario} ", "rule-v1")
    assert v != measure_version("Q: {scenario}", "rule-v2")
