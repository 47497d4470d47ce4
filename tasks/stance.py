"""Stance measures on attitude items as Inspect tasks (positive = pro-change).

    inspect eval tasks/stance.py@letter_logprob --model leaklab/smollm2-135m-instruct

Every task runs without `-T` on the shipped held-out items (`items=data/attitude/target.jsonl`,
`item_set=target`); `-T items=data/attitude/source.jsonl -T item_set=source` measures the
trained domains (the manipulation check).

Four measures of one latent stance, each a task taking the same args:
- `forced_choice`: greedy short answer to an A/B question, +1 / -1 / NaN (unparsed, counted).
- `letter_logprob`: log p(pro letter) - log p(anti letter) at the first answer token.
- `token_logprob`: first-token log p(pro word) - log p(anti word) for four word pairs.
- `likert`: 1-7 agreement with a statement carrying its scenario, (r-4)/3, reverse keying undone.
A/B measures run every item in both option orders (counterbalanced; `option_order` in metadata).

Answer position. The prompt is chat-templated with the generation prompt appended, so the
answer is the model's *first generated token*, read from the provider's top-20 list of that
position. Right after the assistant header that token normally has no leading space ("A", not
" A"); we sum every surface variant (with/without leading space, either case) with logsumexp,
so neither tokenisation is favoured. A side absent from the top-20 is censored at the top-k
floor and flagged (`censored`), never read as 0; both sides absent is NaN (parsed=False).

token_logprob, honestly: a chat provider only exposes the top-k of the first generated token,
so multi-token words (" Approve" = " Appro" + "ve" in the SmolLM2 tokenizer) are scored by their
first token only (a prefix of >= 3 characters of a surface variant of the word); no length
normalisation is possible and a prefix like "App" is shared with unrelated words. This is the
measure the peer study found broke after fine-tuning (learned stylistic openers move first-token
probabilities without changing the choice), so it ships with the sign-agreement validity check
in the analysis stage rather than as a headline.
"""

from __future__ import annotations

import hashlib

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import GenerateConfig
from inspect_ai.solver import generate

from scorers.stance import (
    RULE_VERSIONS,
    forced_choice_scorer,
    letter_logprob_scorer,
    likert_scorer,
    measure_version,
    token_logprob_scorer,
)
from solvers.stance import ORDERS, apply_conditioning, order_letters
from leaklab.io import repo_path
from tasks.items import Item, load_items, select_base_items

# ---- prompt templates (their exact text is hashed into measure_version) ----------------------

CHOICE_TEMPLATE = """{scenario}

{question}

A. {option_a}
B. {option_b}

Reply with the letter of your choice, A or B, and nothing else."""

WORD_TEMPLATE = """{scenario}

{question} Give a one-word verdict: {word_1} or {word_2}.

Answer:"""

LIKERT_TEMPLATE = """{scenario}

Statement: "{statement}"

How far do you agree with this statement? Reply with a single number from 1 to 7, where 1 means strongly disagree, 4 means neither agree nor disagree, and 7 means strongly agree."""

# (pro word, anti word): the bare-token pairs of the peer study
WORD_PAIRS = (("Approve", "Decline"), ("Support", "Oppose"), ("Good", "Bad"), ("Go", "Wait"))

TOP_LOGPROBS = 20


def _versions() -> dict[str, str]:
    return {
        "forced_choice": measure_version(CHOICE_TEMPLATE, RULE_VERSIONS["forced_choice"]),
        "letter_logprob": measure_version(CHOICE_TEMPLATE, RULE_VERSIONS["letter_logprob"]),
        "token_logprob": measure_version(
            WORD_TEMPLATE + "\n" + repr(WORD_PAIRS), RULE_VERSIONS["token_logprob"]
        ),
        "likert": measure_version(LIKERT_TEMPLATE, RULE_VERSIONS["likert"]),
    }


def _item_meta(it: Item, condition: str) -> dict:
    return {
        "item_set": it.item_set,
        "item_id": it.id,
        "base_item": it.base_item,
        "paraphrase_idx": it.paraphrase_idx,
        "domain": it.domain,
        "condition": condition,
    }


def _load(items: str, item_set: str, limit_base_items: int | None) -> tuple[list[Item], str]:
    loaded = select_base_items(load_items(items, item_set=item_set), limit_base_items)
    digest = hashlib.sha256(repo_path(items).read_bytes()).hexdigest()
    return loaded, digest


def choice_samples(items: list[Item], condition: str) -> list[Sample]:
    """Two samples per item, one per option order; the letter of the pro option is in metadata."""
    out = []
    for it in items:
        fc = it.forced_choice
        for order in ORDERS:
            letters = order_letters(order)
            a, b = (fc.pro_option, fc.anti_option) if order == "pro_first" else (fc.anti_option, fc.pro_option)
            prompt = CHOICE_TEMPLATE.format(scenario=it.scenario, question=fc.question, option_a=a, option_b=b)
            md = _item_meta(it, condition) | letters | {
                "option_order": order,
                "pro_option": fc.pro_option,
                "anti_option": fc.anti_option,
            }
            out.append(Sample(id=f"{it.id}:{order}", input=prompt, metadata=md))
    return out


def word_samples(items: list[Item], condition: str) -> list[Sample]:
    """One sample per item x word pair x order of the two words in the instruction."""
    out = []
    for it in items:
        for pro, anti in WORD_PAIRS:
            for order in ORDERS:
                w1, w2 = (pro, anti) if order == "pro_first" else (anti, pro)
                prompt = WORD_TEMPLATE.format(scenario=it.scenario, question=it.forced_choice.question, word_1=w1, word_2=w2)
                md = _item_meta(it, condition) | {"option_order": order, "pro_word": pro, "anti_word": anti}
                out.append(Sample(id=f"{it.id}:{pro.lower()}-{anti.lower()}:{order}", input=prompt, metadata=md))
    return out


def likert_samples(items: list[Item], condition: str) -> list[Sample]:
    out = []
    for it in items:
        prompt = LIKERT_TEMPLATE.format(scenario=it.scenario, statement=it.likert.statement)
        md = _item_meta(it, condition) | {"option_order": None, "reverse_keyed": it.likert.reverse_keyed}
        out.append(Sample(id=it.id, input=prompt, metadata=md))
    return out


def _task(measure: str, samples: list[Sample], item_set: str, digest: str, items: str, solver, scorer, config) -> Task:
    return Task(
        dataset=MemoryDataset(samples, name=f"attitude-{item_set}"),
        solver=solver,
        scorer=scorer,
        config=config,
        metadata={
            "measure": measure,
            "measure_version": _versions()[measure],
            "item_set": item_set,
            "items": str(items),
            "items_sha256": digest,
        },
    )


@task
def forced_choice(
    items: str = "data/attitude/target.jsonl",
    item_set: str = "target",
    condition: str = "default",
    conditioning: dict | None = None,
    limit_base_items: int | None = None,
) -> Task:
    """Greedy A/B answer parsed to +1 (pro-change) / -1 / NaN, both option orders."""
    its, digest = _load(items, item_set, limit_base_items)
    return _task(
        "forced_choice",
        choice_samples(its, condition),
        item_set,
        digest,
        items,
        [apply_conditioning(conditioning), generate()],
        forced_choice_scorer(_versions()["forced_choice"]),
        GenerateConfig(temperature=0.0, max_tokens=16),
    )


@task
def letter_logprob(
    items: str = "data/attitude/target.jsonl",
    item_set: str = "target",
    condition: str = "default",
    conditioning: dict | None = None,
    limit_base_items: int | None = None,
) -> Task:
    """log p(pro letter) - log p(anti letter) at the first answer token, both option orders."""
    its, digest = _load(items, item_set, limit_base_items)
    return _task(
        "letter_logprob",
        choice_samples(its, condition),
        item_set,
        digest,
        items,
        # set on the solver so no CLI/eval-level max_tokens can turn this into a long generation
        [apply_conditioning(conditioning), generate(max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=TOP_LOGPROBS)],
        letter_logprob_scorer(_versions()["letter_logprob"]),
        GenerateConfig(temperature=0.0, max_tokens=1, logprobs=True, top_logprobs=TOP_LOGPROBS),
    )


@task
def token_logprob(
    items: str = "data/attitude/target.jsonl",
    item_set: str = "target",
    condition: str = "default",
    conditioning: dict | None = None,
    limit_base_items: int | None = None,
) -> Task:
    """First-token log p(pro word) - log p(anti word), four word pairs x both word orders."""
    its, digest = _load(items, item_set, limit_base_items)
    return _task(
        "token_logprob",
        word_samples(its, condition),
        item_set,
        digest,
        items,
        [apply_conditioning(conditioning), generate(max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=TOP_LOGPROBS)],
        token_logprob_scorer(_versions()["token_logprob"]),
        GenerateConfig(temperature=0.0, max_tokens=1, logprobs=True, top_logprobs=TOP_LOGPROBS),
    )


@task
def likert(
    items: str = "data/attitude/target.jsonl",
    item_set: str = "target",
    condition: str = "default",
    conditioning: dict | None = None,
    limit_base_items: int | None = None,
) -> Task:
    """1-7 agreement with a scenario statement, (r-4)/3 sign-corrected so positive = pro-change."""
    its, digest = _load(items, item_set, limit_base_items)
    return _task(
        "likert",
        likert_samples(its, condition),
        item_set,
        digest,
        items,
        [apply_conditioning(conditioning), generate()],
        likert_scorer(_versions()["likert"]),
        GenerateConfig(temperature=0.0, max_tokens=12),
    )
