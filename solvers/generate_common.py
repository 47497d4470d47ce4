"""Shared plumbing for the generative task families (trait, EM, persona, capability).

Item files are jsonl with one object per line; errors name file, line and key. Framing goes
through `solvers.conditioning.condition_messages` (the one function shared with training),
keyed on the item id, so a `mix` condition draws the same rephrasing for an item in every run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leaklab.io import iter_jsonl, repo_path
from leaklab.study import Conditioning
from leaklab.yamlio import ConfigError
from solvers.conditioning import parse_conditioning  # noqa: F401  (the tasks' import path)


def load_items(path: str | Path, required: tuple[str, ...], id_key: str = "id") -> list[dict]:
    """Read a jsonl item file; every line must be an object with the `required` keys and a unique id."""
    p = repo_path(path)
    if not p.exists():
        raise ConfigError(f"{p}: item file not found")
    items: list[dict] = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(p, "item file"):
        for key in required:
            if key not in obj or obj[key] in (None, ""):
                raise ConfigError(f"{p}:{lineno}: missing key {key!r}")
        iid = str(obj[id_key])
        if iid in seen:
            raise ConfigError(f"{p}:{lineno}: duplicate {id_key} {iid!r} (first on line {seen[iid]})")
        seen[iid] = lineno
        items.append(obj)
    if not items:
        raise ConfigError(f"{p}: no items")
    return items


def frame_messages(user: str, key: str, cond: Conditioning | None, system: str | None = None) -> list[dict]:
    """[system?, user] framed by the eval condition (system prompt replaced, user prefix added)."""
    from solvers.conditioning import condition_messages

    msgs: list[dict] = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return condition_messages(msgs, cond, key)


def to_inspect(messages: list[dict]) -> list[Any]:
    from inspect_ai.model import ChatMessageAssistant, ChatMessageSystem, ChatMessageUser

    cls = {"system": ChatMessageSystem, "user": ChatMessageUser, "assistant": ChatMessageAssistant}
    return [cls[m["role"]](content=m["content"]) for m in messages]


def user_text(state) -> str:
    """The (framed) user message of a TaskState, as the model saw it."""
    for m in state.messages:
        if m.role == "user":
            return m.text
    return state.input_text


def select_limit(items: list[dict], limit: int | None) -> list[dict]:
    """The first `limit` items (file order, deterministic) or all."""
    if limit is None:
        return items
    if limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    return items[:limit]
