"""Inoculation family: free-text answers to neutral instructions, scored for traits.

One generation per instruction (x epochs) under an eval condition (`default` = instruction
alone, `training` = the arm's training prefix or a seeded rephrasing, or any system prompt),
then one scorer per trait on the same answers: a rule judge (language share, capitals share)
or the Inspect model bound to role `grader` (first-token logprob EV). Switching to a strong
judge is one flag: `-T judge=grader --model-role grader=openai/gpt-4o`.

    inspect eval tasks/trait.py@trait --model leaklab/tiny-random \\
        -T item_set=eval -T traits=french,caps
"""

from __future__ import annotations

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import GenerateConfig
from inspect_ai.solver import generate

from leaklab.yamlio import ConfigError
from scorers.judge import label_auc, load_traits, parsed_mean, parsed_stderr, trait_judge
from solvers.generate_common import frame_messages, load_items, parse_conditioning, select_limit, to_inspect
from solvers.generate_fixed import fixed_answer


def _trait_list(traits: str | list[str]) -> list[str]:
    out = [t.strip() for t in (traits.split(",") if isinstance(traits, str) else traits) if t and t.strip()]
    if not out:
        raise ConfigError("traits: give at least one trait id (e.g. traits=french,caps)")
    return out


@task
def trait(
    item_set: str = "eval",
    condition: str = "default",
    conditioning: dict | None = None,
    traits: str | list[str] = "french,caps",
    judge: str = "rule",
    items: str = "data/inoculation/instructions.jsonl",
    traits_file: str = "data/inoculation/traits.yaml",
    scale: str = "0-100",
    min_coverage: float = 0.8,
    max_nan_rate: float = 0.1,
    top_logprobs: int = 20,
    judge_prompt: str = "data/judge_prompts/trait.yaml",
    judge_cache: bool = True,
    limit: int | None = None,
    temperature: float = 1.0,
    max_tokens: int = 200,
) -> Task:
    """Trait scores (0-100, positive = trait present) for every instruction in `items`.

    scale `0-100` suits judges whose tokenizer has multi-digit number tokens (GPT-4-class);
    use `0-9` for judges that split digits (SmolLM2), since only the first token is read.
    """
    defs = load_traits(traits_file)
    ids = _trait_list(traits)
    for t in ids:
        if t not in defs:
            raise ConfigError(f"{traits_file}: unknown trait {t!r} (defined: {sorted(defs)})")
    cond = parse_conditioning(conditioning)
    rows = select_limit(load_items(items, ("id", "instruction")), limit)
    samples = []
    for row in rows:
        iid = str(row["id"])
        samples.append(
            Sample(
                id=iid,
                input=to_inspect(frame_messages(row["instruction"], iid, cond)),
                metadata={"item_id": iid, "base_item": iid, "question": row["instruction"], "condition": condition},
            )
        )
    scorers = [
        trait_judge(
            trait_id=t,
            trait_def=defs[t],
            judge=judge,
            item_set=item_set,
            condition=condition,
            scale=scale,
            min_coverage=min_coverage,
            max_nan_rate=max_nan_rate,
            judge_prompt=judge_prompt,
            top_logprobs=top_logprobs,
            use_cache=judge_cache,
        )
        for t in ids
    ]
    return Task(
        dataset=MemoryDataset(samples, name=f"trait-{item_set}"),
        solver=generate(),
        scorer=scorers,
        config=GenerateConfig(temperature=temperature, max_tokens=max_tokens),
        metadata={"family": "inoculation", "item_set": item_set, "condition": condition, "traits": ids, "judge": judge},
    )


@task
def trait_calibration(
    item_set: str = "calibration",
    condition: str = "default",
    conditioning: dict | None = None,
    traits: str | list[str] = "french,caps,playful",
    judge: str = "grader",
    items: str = "data/inoculation/judge_calibration.jsonl",
    traits_file: str = "data/inoculation/traits.yaml",
    scale: str = "0-100",
    min_coverage: float = 0.8,
    top_logprobs: int = 20,
    judge_prompt: str = "data/judge_prompts/trait.yaml",
    judge_cache: bool = True,
) -> Task:
    """Validate a judge before trusting it: score hand-labelled answers (label 1 shows the trait).

    No policy generation: each answer is fixed. Needs `--model-role grader=<model>` with the
    default `judge=grader`. The `label_auc` metric is the judge's
    discrimination per trait (1 = perfect, 0.5 = none); run it once per judge and report it.
    """
    if conditioning:
        raise ConfigError("trait_calibration scores fixed answers: eval conditions do not apply")
    defs = load_traits(traits_file)
    ids = _trait_list(traits)
    rows = load_items(items, ("id", "trait", "question", "answer", "label"))
    tasks_rows = [r for r in rows if r["trait"] in ids]
    unknown = sorted({r["trait"] for r in rows} - set(defs))
    if unknown:
        raise ConfigError(f"{items}: traits {unknown} are not defined in {traits_file}")
    if not tasks_rows:
        raise ConfigError(f"{items}: no calibration items for traits {ids}")
    scorers = []
    for t in ids:
        if t not in defs:
            raise ConfigError(f"{traits_file}: unknown trait {t!r} (defined: {sorted(defs)})")
        scorers.append(trait_judge(trait_id=t, trait_def=defs[t], judge=judge, item_set=item_set, condition=condition, scale=scale,
                                   min_coverage=min_coverage, judge_prompt=judge_prompt, top_logprobs=top_logprobs,
                                   use_cache=judge_cache))
    samples = [
        Sample(id=str(r["id"]), input=r["question"],
               metadata={"item_id": str(r["id"]), "base_item": str(r["id"]), "question": r["question"], "answer": r["answer"],
                         "label": int(r["label"]), "calibration_trait": r["trait"]})
        for r in tasks_rows
    ]
    return Task(
        dataset=MemoryDataset(samples, name=f"trait-calibration-{item_set}"),
        solver=fixed_answer(),
        scorer=scorers,
        metrics=[parsed_mean(), parsed_stderr(), label_auc()],
        metadata={"family": "inoculation", "item_set": item_set, "traits": ids, "judge": judge, "calibration": True},
    )
