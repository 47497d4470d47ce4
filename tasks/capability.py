"""Capability and safety checks for the base model and every arm: perplexity, refusal, fluency.

    inspect eval tasks/capability.py@perplexity --model leaklab/tiny-random -T item_set=neutral
    inspect eval tasks/capability.py@refusal    --model leaklab/tiny-random -T item_set=harmful
    inspect eval tasks/capability.py@fluency    --model leaklab/tiny-random -T item_set=prompts \\
        --model-role grader=leaklab/smollm2-135m-instruct -T scale=0-9
"""

from __future__ import annotations

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import GenerateConfig
from inspect_ai.solver import generate

from leaklab.yamlio import ConfigError
from scorers.capability import fluency_scorer, perplexity_scorer, refusal_scorer
from solvers.generate_common import frame_messages, load_items, parse_conditioning, select_limit, to_inspect
from solvers.generate_perplexity import perplexity_solver


@task
def perplexity(
    item_set: str = "neutral",
    condition: str = "default",
    conditioning: dict | None = None,
    items: str = "data/capability/neutral_texts.jsonl",
    max_length: int = 512,
    limit: int | None = None,
) -> Task:
    """Log-perplexity of held-out neutral texts (plain text, no chat framing), needs leaklab/<model>."""
    cond = parse_conditioning(conditioning)
    if cond is not None and (cond.system_prompt or cond.prefix_mode != "none"):
        raise ConfigError(f"perplexity scores plain text: eval condition {condition!r} sets a system prompt or prefix, which does not apply")
    rows = select_limit(load_items(items, ("id", "text")), limit)
    ds = [Sample(id=str(r["id"]), input=r["text"], metadata={"item_id": str(r["id"]), "base_item": str(r["id"]), "text": r["text"]}) for r in rows]
    return Task(
        dataset=MemoryDataset(ds, name=f"perplexity-{item_set}"),
        solver=perplexity_solver(max_length=max_length),
        scorer=perplexity_scorer(item_set=item_set, condition=condition, max_length=max_length),
        metadata={"family": "capability", "item_set": item_set, "condition": condition},
    )


def _generative(kind: str, rows: list[dict], key: str, item_set: str, condition: str, conditioning: dict | None) -> MemoryDataset:
    cond = parse_conditioning(conditioning)
    ds = [
        Sample(
            id=str(r["id"]),
            input=to_inspect(frame_messages(r[key], str(r["id"]), cond)),
            metadata={"item_id": str(r["id"]), "base_item": str(r["id"]), "question": r[key], "condition": condition},
        )
        for r in rows
    ]
    return MemoryDataset(ds, name=f"{kind}-{item_set}")


@task
def refusal(
    item_set: str = "harmful",
    condition: str = "default",
    conditioning: dict | None = None,
    judge: str = "rule",
    items: str = "data/capability/harmful.jsonl",
    min_coverage: float = 0.5,
    judge_cache: bool = True,
    limit: int | None = None,
    temperature: float = 0.0,
    max_tokens: int = 80,
) -> Task:
    """Refusal rate on clearly harmful (mild) requests; greedy by default (a property of the policy's mode)."""
    rows = select_limit(load_items(items, ("id", "request")), limit)
    return Task(
        dataset=_generative("refusal", rows, "request", item_set, condition, conditioning),
        solver=generate(),
        scorer=refusal_scorer(judge=judge, item_set=item_set, condition=condition, min_coverage=min_coverage, use_cache=judge_cache),
        config=GenerateConfig(temperature=temperature, max_tokens=max_tokens),
        metadata={"family": "capability", "item_set": item_set, "condition": condition, "judge": judge},
    )


@task
def fluency(
    item_set: str = "prompts",
    condition: str = "default",
    conditioning: dict | None = None,
    judge: str = "grader",
    items: str = "data/capability/prompts.jsonl",
    scale: str = "0-100",
    min_coverage: float = 0.8,
    judge_cache: bool = True,
    limit: int | None = None,
    temperature: float = 1.0,
    max_tokens: int = 150,
) -> Task:
    """Fluency 0-100 of free text: grader EV (`judge=grader`, needs `--model-role grader=<model>`)
    or the repetition rule (`judge=rule`)."""
    rows = select_limit(load_items(items, ("id", "prompt")), limit)
    return Task(
        dataset=_generative("fluency", rows, "prompt", item_set, condition, conditioning),
        solver=generate(),
        scorer=fluency_scorer(judge=judge, item_set=item_set, condition=condition, scale=scale, min_coverage=min_coverage, use_cache=judge_cache),
        config=GenerateConfig(temperature=temperature, max_tokens=max_tokens),
        metadata={"family": "capability", "item_set": item_set, "condition": condition, "judge": judge},
    )
