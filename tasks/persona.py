"""Persona marker leakage: personas (as system prompts) x questions x samples, marker rate.

Each sample is one (persona, question) pair; `samples` epochs at temperature 1 give the
repeated draws. Persona id, category and related_to travel in sample and score metadata so
the analysis frame can group leakage by persona and relate it to the source persona.

    inspect eval tasks/persona.py@persona --model leaklab/tiny-random \\
        -T item_set=all -T samples=2 -T marker='[ZLT]'
"""

from __future__ import annotations

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import GenerateConfig
from inspect_ai.scorer import grouped
from inspect_ai.solver import generate

from leaklab.yamlio import ConfigError, load_yaml
from scorers.judge import parsed_mean
from scorers.marker import check_marker, marker_scorer
from leaklab.io import repo_path
from solvers.generate_common import frame_messages, load_items, parse_conditioning, select_limit, to_inspect


def load_personas(path: str) -> list[dict]:
    """personas.yaml -> list of {id, name, category, related_to, system_prompt}; checks ids and links."""
    p = repo_path(path)
    data = load_yaml(p)
    if not isinstance(data, dict) or not isinstance(data.get("personas"), list):
        raise ConfigError(f"{p}: expected a mapping with a 'personas' list")
    out, ids = [], set()
    for i, row in enumerate(data["personas"]):
        if not isinstance(row, dict):
            raise ConfigError(f"{p}: personas[{i}]: expected a mapping")
        for key in ("id", "category", "system_prompt"):
            if not row.get(key):
                raise ConfigError(f"{p}: personas[{i}]: missing key {key!r}")
        if row["id"] in ids:
            raise ConfigError(f"{p}: personas[{i}]: duplicate id {row['id']!r}")
        ids.add(row["id"])
        out.append({"id": str(row["id"]), "name": row.get("name", row["id"]), "category": str(row["category"]),
                    "related_to": [str(r) for r in row.get("related_to") or []], "system_prompt": str(row["system_prompt"])})
    for row in out:
        for r in row["related_to"]:
            if r not in ids:
                raise ConfigError(f"{p}: persona {row['id']!r}: related_to names unknown persona {r!r}")
    return out


def _ids(arg: str | list[str] | None) -> list[str] | None:
    if arg is None:
        return None
    return [s.strip() for s in (arg.split(",") if isinstance(arg, str) else arg) if s.strip()]


@task
def persona(
    item_set: str = "bystanders",
    condition: str = "default",
    conditioning: dict | None = None,
    marker: str = "[ZLT]",
    match: str = "substring_ci",
    personas_file: str = "data/persona/personas.yaml",
    questions: str = "data/persona/questions.jsonl",
    personas: str | list[str] | None = None,
    samples: int = 1,
    limit_questions: int | None = None,
    temperature: float = 1.0,
    max_tokens: int = 120,
) -> Task:
    """Marker present (1) / absent (0) per completion, for every persona x question x sample;
    empty and marker-only completions are missing with their reason (scorers/marker.py).

    `personas` restricts to a comma-separated list of ids; `conditioning` (an eval condition)
    is applied on top of the persona framing, so its system prompt would replace the persona's.
    """
    check_marker(marker, match)
    if samples < 1:
        raise ConfigError(f"samples must be >= 1, got {samples}")
    cond = parse_conditioning(conditioning)
    if cond is not None and cond.system_prompt is not None:
        raise ConfigError("persona task: the eval condition sets a system prompt, which would replace the persona; use a user prefix instead")
    plist = load_personas(personas_file)
    wanted = _ids(personas)
    if wanted is not None:
        known = {p["id"] for p in plist}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise ConfigError(f"{personas_file}: unknown persona id(s) {unknown}")
        plist = [p for p in plist if p["id"] in wanted]
    qs = select_limit(load_items(questions, ("id", "question")), limit_questions)
    ds = []
    for p in plist:
        for q in qs:
            sid = f"{p['id']}::{q['id']}"
            ds.append(
                Sample(
                    id=sid,
                    input=to_inspect(frame_messages(q["question"], sid, cond, system=p["system_prompt"])),
                    metadata={"item_id": sid, "base_item": str(q["id"]), "question_id": str(q["id"]), "question": q["question"],
                              "persona": p["id"], "persona_category": p["category"], "persona_related_to": p["related_to"],
                              "condition": condition},
                )
            )
    return Task(
        dataset=MemoryDataset(ds, name=f"persona-{item_set}"),
        solver=generate(),
        scorer=marker_scorer(marker=marker, match=match, item_set=item_set, condition=condition),
        # marker rate per persona (+ overall); the binomial counts per persona (k/n with an interval,
        # empty and marker-only completions apart) come from the per-epoch scores in the frame
        # (scorers.marker.marker_counts): Inspect's metrics only see epoch-reduced means
        metrics=[grouped(parsed_mean(), "persona", all="samples")],
        epochs=samples,
        config=GenerateConfig(temperature=temperature, max_tokens=max_tokens),
        metadata={"family": "persona", "item_set": item_set, "condition": condition, "marker": marker, "match": match},
    )
