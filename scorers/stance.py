"""Stance scorers: forced choice, letter logprob, first-token word logprob, Likert.

Sign convention: positive = pro-change. A value that cannot be read is NaN with
`parsed=False` in the Score metadata (never 0, never dropped silently). In inspect 0.3.285 a NaN
value is the "unscored" sentinel: it survives the .eval round trip with its metadata, metrics
skip it, and the log counts it in `results.scores[i].unscored_samples`.

The arithmetic lives in plain functions (`parse_choice`, `parse_likert`, `logprob_margin`) so
it can be tested on hand-built inputs; the `@scorer`s only move data in and out of Inspect.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
from inspect_ai.scorer import Score, Target, metric, scorer
from inspect_ai.scorer._metric import Metric, SampleScore
from inspect_ai.solver import TaskState

from scorers.common import measure_version, parsed_mean, parsed_stderr  # noqa: F401  (measure_version: the tasks' import path)

# Bump a rule version whenever the parsing/arithmetic of that measure changes: it enters
# measure_version, so analysis refuses to pool scores computed under different rules.
RULE_VERSIONS = {
    "forced_choice": "forced_choice/parse-v1",
    "letter_logprob": "letter_logprob/variants-casefold-strip+floor-censor-v1",
    "token_logprob": "token_logprob/first-token-prefix>=3+floor-censor-v1",
    "likert": "likert/first-int-1..7+verbal+negation+skip-list-marker-v3",
}

# Score metadata keys copied from the sample (set by tasks/stance.py).
SAMPLE_KEYS = ("item_set", "item_id", "base_item", "paraphrase_idx", "domain", "option_order", "condition")


# --------------------------------------------------------------------------------------------
# forced choice


_MD = re.compile(r"[*_`#>]")
_LEAD = re.compile(
    r"^[\s(\[\"'.:-]*(?P<kw>(?:option|choice|answer)\s*[:\-]?\s*[(\[]?\s*)?(?P<letter>[AB])(?P<after>$|[\s.):,;!?\]\"'-].*)",
    re.IGNORECASE | re.DOTALL,
)
_KEYWORD = re.compile(
    r"\b(?:option|choice|answer(?:\s+is)?|pick|choose|chose|go\s+with|select|prefer|recommend|vote\s+for)\s*[:\-]?\s*[(\[\"']?\s*(?P<letter>[AB])(?![A-Za-z0-9])",
    re.IGNORECASE,
)
# words that cannot follow the article "A", so "A because ..." / "A is better" is the letter
_NOT_AFTER_ARTICLE = re.compile(r"\s+(?:because|since|as|is|seems|sounds|would|makes|and|or|for|then|please|here)\b")
_STANDALONE = re.compile(r"(?<![A-Za-z0-9'])([AB])(?![A-Za-z0-9'])")


def parse_choice(text: str, options: dict[str, str] | None = None) -> str | None:
    """The letter ('A' or 'B') a free-text answer picks, or None if it does not pick exactly one.

    Rules, in order:
    1. The answer opens with the letter ("B.", "(A)", "**A**", "Option A", "Answer: B"). A
       bare opening "A" followed by a lower-case word is the English article ("A trial would
       help"), not a choice, unless the letter is in upper case after a keyword. An opening
       letter followed in the same sentence by the other letter ("A and B both...") is
       ambiguous.
    2. A choice verb or noun followed by a letter anywhere ("I'd pick A", "I choose option B");
       all such mentions must agree.
    3. The full text of exactly one option appears in the answer.
    Anything else ("both", "it depends", garbage) is None.
    """
    if not text:
        return None
    t = _MD.sub("", text).strip()
    first_sentence = re.split(r"(?<=[.!?])\s|\n", t, maxsplit=1)[0]
    m = _LEAD.match(t)
    if m:
        letter = m.group("letter")
        case_ok = letter.isupper() or m.group("kw")
        after = m.group("after")
        article = (
            letter.upper() == "A"
            and not m.group("kw")
            and re.match(r"\s+[a-z]", after or "") is not None
            and re.match(_NOT_AFTER_ARTICLE, after or "") is None
        )
        if case_ok and not article:
            letter = letter.upper()
            other = "B" if letter == "A" else "A"
            rest = first_sentence[m.start("after") :] if m.start("after") < len(first_sentence) else ""
            if not _STANDALONE.search(rest) or other not in _STANDALONE.findall(rest):
                return letter
            return None
    picks = {k.group("letter").upper() for k in _KEYWORD.finditer(t)}
    if len(picks) == 1:
        return picks.pop()
    if len(picks) > 1:
        return None
    if options:
        low = t.casefold()
        hits = [k for k, v in options.items() if v and v.casefold().rstrip(".") in low]
        if len(hits) == 1:
            return hits[0]
    return None


# --------------------------------------------------------------------------------------------
# log-probability read-outs


def normalise_token(tok: str) -> str:
    """Map raw BPE/SentencePiece pieces to text ('ĠA' -> ' A', '▁A' -> ' A'); text passes through."""
    return tok.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\n")


def letter_matcher(letter: str) -> Callable[[str], bool]:
    """Surface variants of an answer letter: with/without leading whitespace, either case."""
    target = letter.casefold()
    return lambda tok: normalise_token(tok).strip().casefold() == target


def word_first_token_matcher(word: str, min_prefix: int = 3) -> Callable[[str], bool]:
    """A first generated token that starts a surface variant of `word`.

    The token (whitespace stripped, case folded) must be a prefix of the word at least
    `min_prefix` characters long (or the whole word when shorter): 'App', ' Appro', 'Decl',
    ' Decline' count for Approve/Decline; 'A' or 'op' do not (too unspecific).
    """
    w = word.casefold()
    need = min(min_prefix, len(w))

    def match(tok: str) -> bool:
        s = normalise_token(tok).strip().casefold()
        return len(s) >= need and w.startswith(s)

    return match


@dataclass
class Margin:
    """log p(pro) - log p(anti) at one position, from that position's top-k list."""

    value: float
    parsed: bool
    pro_logprob: float | None
    anti_logprob: float | None
    pro_tokens: list[str] = field(default_factory=list)
    anti_tokens: list[str] = field(default_factory=list)
    censored: str | None = None  # "pro" / "anti": that side was absent from the top-k
    floor: float | None = None  # smallest logprob in the top-k list
    topk_mass: float | None = None  # total probability in the top-k list
    reason: str | None = None


def _logsumexp(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def logprob_margin(
    top: Iterable[tuple[str, float]], pro: Callable[[str], bool], anti: Callable[[str], bool]
) -> Margin:
    """Sum (logsumexp) the probability of every top-k token matching each side; return the margin.

    Missing side: if no token of a side is in the top-k, its true log-mass is below the
    top-k floor (every listed token is at least as likely as any unlisted one), so the side
    is set to the floor and `censored` names it. The margin is then a bound (an upper bound
    when pro is missing, a lower bound when anti is missing) and is flagged, never 0. Both
    sides missing: NaN, parsed=False. A token matching both sides is counted for neither.
    """
    top = [(normalise_token(t), float(lp)) for t, lp in top]
    if not top:
        return Margin(math.nan, False, None, None, reason="no top_logprobs returned")
    floor = min(lp for _, lp in top)
    mass = float(sum(math.exp(lp) for _, lp in top))
    pro_hits = [(t, lp) for t, lp in top if pro(t) and not anti(t)]
    anti_hits = [(t, lp) for t, lp in top if anti(t) and not pro(t)]
    if not pro_hits and not anti_hits:
        return Margin(math.nan, False, None, None, floor=floor, topk_mass=mass, reason="neither side in top-k")
    censored = None
    pro_lp = _logsumexp([lp for _, lp in pro_hits]) if pro_hits else None
    anti_lp = _logsumexp([lp for _, lp in anti_hits]) if anti_hits else None
    if pro_lp is None:
        pro_lp, censored = floor, "pro"
    if anti_lp is None:
        anti_lp, censored = floor, "anti"
    return Margin(
        pro_lp - anti_lp,
        True,
        pro_lp,
        anti_lp,
        [t for t, _ in pro_hits],
        [t for t, _ in anti_hits],
        censored,
        floor,
        mass,
    )


def first_position_top(state: TaskState) -> list[tuple[str, float]] | None:
    """(token, logprob) pairs of the top-k list at the first generated position, or None."""
    choices = state.output.choices if state.output else []
    if not choices or choices[0].logprobs is None or not choices[0].logprobs.content:
        return None
    first = choices[0].logprobs.content[0]
    if first.top_logprobs:
        return [(t.token, t.logprob) for t in first.top_logprobs]
    return [(first.token, first.logprob)]


# --------------------------------------------------------------------------------------------
# likert

_VERBAL = [  # longest phrases first so "strongly disagree" is not read as "disagree"/"agree"
    (r"strongly\s+disagree", 1),
    (r"somewhat\s+disagree|slightly\s+disagree", 3),
    (r"strongly\s+agree", 7),
    (r"somewhat\s+agree|slightly\s+agree", 5),
    (r"neither\s+agree\s+nor\s+disagree|neutral", 4),
    (r"disagree", 2),
    (r"agree", 6),
]


# a negation right before "agree" / "disagree" (at most one word between)
_NEG = r"\b(?:do\s+not|don'?t|does\s+not|doesn'?t|did\s+not|didn'?t|cannot|can'?t|won'?t|would\s+not|wouldn'?t|not)"


def parse_likert(text: str, lo: int = 1, hi: int = 7) -> int | None:
    """The rating in an answer: the first standalone integer if it is in [lo, hi], else the verbal label.

    '5', '6 - agree', 'I would say 3.', 'Rating: 2/7' parse; '10', '4.5', '0' and two different
    ratings before any words ('4 or 5') do not. Verbal fallback: 'strongly agree' = 7 ... 'strongly
    disagree' = 1; a negated 'agree' ("I don't agree") = 2 (disagree), any other negated label
    ("I don't disagree", "I don't strongly agree") is not a rating (None).
    """
    if not text:
        return None
    t = _MD.sub("", text).strip()
    # "1. The statement is..." opens an enumerated list, not a rating (SmolLM2 does this):
    # drop the list marker and read the rest
    if re.match(r"^1[.)]\s+[A-Z]", t):  # an enumeration: drop every line-initial list marker
        t = re.sub(r"(?m)^\s*\d+(?:[.)](?:[ \t]+|$)|[ \t]*$)", "", t)
    nums = list(re.finditer(r"(?<![\d.])(\d+(?:\.\d+)?)(?![\d])", t))
    if nums:
        first = nums[0].group(1)
        if "." in first:
            return None
        r = int(first)
        if not (lo <= r <= hi):
            return None
        between = t[nums[0].end() : nums[1].start()] if len(nums) > 1 else ""
        if len(nums) > 1 and re.fullmatch(r"\s*(or|to|-|–|and|,)\s*", between) and int(nums[1].group(1)) != r:
            return None  # "4 or 5", "4-5": a range, not a rating
        return r
    low = t.casefold().replace("\u2019", "'")
    if re.search(_NEG + r"\s+agree\b", low):
        return 2  # "I don't agree" / "I do not agree": disagreement, never read as "agree"
    if re.search(_NEG + r"\s+(?:\w+\s+)?(?:dis)?agree\b", low):
        return None  # "I don't disagree", "I don't strongly agree": no rating on the scale
    for pat, val in _VERBAL:
        if re.search(r"\b(?:" + pat + r")\b", low):
            return val
    return None


def likert_score(rating: int | None, reverse_keyed: bool) -> float:
    """(r - 4) / 3, negated for reverse-keyed statements so positive = pro-change; NaN if missing."""
    if rating is None:
        return math.nan
    s = (rating - 4) / 3
    return -s if reverse_keyed else s


# --------------------------------------------------------------------------------------------
# metrics (NaN-aware: the mean is over parsed values only; unparsed are counted)


@metric
def n_censored() -> Metric:
    """How many logprob margins were bounds because one side fell outside the top-k."""

    def compute(scores: list[SampleScore]) -> int:
        return sum(1 for s in scores if (s.score.metadata or {}).get("censored"))

    return compute


# Unparsed samples are NaN = Inspect's "unscored" sentinel (0.3.285): metrics skip them and the
# log's EvalScore.unscored_samples counts them, so no separate count metric is needed here
# (one would always read 0: Inspect never hands unscored samples to a metric).
METRICS = [parsed_mean(), parsed_stderr()]
LOGPROB_METRICS = [parsed_mean(), parsed_stderr(), n_censored()]


def _base_metadata(state: TaskState, measure: str, version: str, parsed: bool) -> dict:
    md = {k: state.metadata.get(k) for k in SAMPLE_KEYS}
    md.update(measure=measure, measure_version=version, parsed=bool(parsed))
    return md


def _make_score(value: float, answer: str, meta: dict, reason: str | None = None) -> Score:
    """A Score; a missing value becomes Inspect's unscored NaN (kept in the log with its metadata,
    excluded from metrics, counted in EvalScore.unscored_samples)."""
    if math.isnan(value):
        meta["parsed"] = False
        return Score.unscored(reason=reason or "unparsed", answer=answer, metadata=meta)
    return Score(value=value, answer=answer, metadata=meta)


def _completion(state: TaskState) -> str:
    return state.output.completion if state.output else ""


@scorer(metrics=METRICS)
def forced_choice_scorer(measure_version: str):
    """+1 if the greedy answer picks the pro-change letter, -1 the anti letter, NaN otherwise."""

    async def score(state: TaskState, target: Target) -> Score:
        md = state.metadata
        options = {md["pro_letter"]: md["pro_option"], md["anti_letter"]: md["anti_option"]}
        text = _completion(state)
        letter = parse_choice(text, options)
        value = math.nan if letter is None else (1.0 if letter == md["pro_letter"] else -1.0)
        meta = _base_metadata(state, "forced_choice", measure_version, letter is not None)
        meta.update(choice=letter, pro_letter=md["pro_letter"])
        return _make_score(value, text, meta, "no single option chosen")

    return score


@scorer(metrics=LOGPROB_METRICS)
def letter_logprob_scorer(measure_version: str):
    """log p(pro letter) - log p(anti letter) at the first answer token, all surface variants summed."""

    async def score(state: TaskState, target: Target) -> Score:
        md = state.metadata
        top = first_position_top(state)
        if top is None:
            m = Margin(math.nan, False, None, None, reason="model returned no logprobs")
        else:
            m = logprob_margin(top, letter_matcher(md["pro_letter"]), letter_matcher(md["anti_letter"]))
        meta = _base_metadata(state, "letter_logprob", measure_version, m.parsed)
        meta.update(_margin_meta(m), pro_letter=md["pro_letter"])
        return _make_score(m.value, _completion(state), meta, m.reason)

    return score


@scorer(metrics=LOGPROB_METRICS)
def token_logprob_scorer(measure_version: str):
    """First-token log p(pro word) - log p(anti word) for one word pair (see tasks/stance.py)."""

    async def score(state: TaskState, target: Target) -> Score:
        md = state.metadata
        top = first_position_top(state)
        if top is None:
            m = Margin(math.nan, False, None, None, reason="model returned no logprobs")
        else:
            m = logprob_margin(top, word_first_token_matcher(md["pro_word"]), word_first_token_matcher(md["anti_word"]))
        meta = _base_metadata(state, "token_logprob", measure_version, m.parsed)
        meta.update(_margin_meta(m), word_pair=f"{md['pro_word']}/{md['anti_word']}")
        return _make_score(m.value, _completion(state), meta, m.reason)

    return score


@scorer(metrics=METRICS)
def likert_scorer(measure_version: str):
    """(r - 4) / 3 on a 1-7 agreement rating, sign-corrected for reverse-keyed statements."""

    async def score(state: TaskState, target: Target) -> Score:
        md = state.metadata
        text = _completion(state)
        rating = parse_likert(text)
        meta = _base_metadata(state, "likert", measure_version, rating is not None)
        meta.update(rating=rating, reverse_keyed=md["reverse_keyed"])
        return _make_score(likert_score(rating, md["reverse_keyed"]), text, meta, "no rating 1-7 found")

    return score


def _margin_meta(m: Margin) -> dict:
    return {
        "pro_logprob": m.pro_logprob,
        "anti_logprob": m.anti_logprob,
        "pro_tokens": m.pro_tokens,
        "anti_tokens": m.anti_tokens,
        "censored": m.censored,
        "topk_floor": m.floor,
        "topk_mass": m.topk_mass,
        "unparsed_reason": m.reason,
    }
