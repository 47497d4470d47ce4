"""Prompt conditioning shared by training and evaluation.

The same function frames a conversation at train time (training/) and at eval time (the
Inspect solver below), so "the training prefix" means byte-for-byte the same text in both.
Mix mode draws one rephrasing per example from a sha256 of (seed, example key): reproducible
across processes and machines, unlike Python's salted hash().
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from leaklab.io import repo_path
from leaklab.study import Conditioning
from leaklab.yamlio import ConfigError, read_text


def parse_conditioning(conditioning: dict | Conditioning | None, where: str = "task arg 'conditioning'") -> Conditioning | None:
    """The `conditioning` task arg (fields of `leaklab.study.Conditioning`) -> a validated
    Conditioning whose rephrasing pool (if any) is an existing absolute path; `ConfigError` otherwise."""
    from pydantic import ValidationError

    if conditioning is None or isinstance(conditioning, Conditioning):
        return conditioning
    if not isinstance(conditioning, dict):
        raise ConfigError(f"{where}: expected a mapping of Conditioning fields, got {type(conditioning).__name__}")
    try:
        cond = Conditioning.model_validate(conditioning)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<conditioning>'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{where}: {msgs}") from None
    if cond.rephrasings:
        path = repo_path(cond.rephrasings)
        if not path.exists():
            raise ConfigError(f"{where}: rephrasings file {cond.rephrasings!r} not found ({path})")
        cond = cond.model_copy(update={"rephrasings": str(path)})
    return cond


@lru_cache(maxsize=64)
def load_rephrasings(path: str) -> tuple[str, ...]:
    """One prefix per non-empty line; '#' lines are comments."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: rephrasing pool not found")
    pool = tuple(
        line.strip() for line in read_text(p, "rephrasing pool").splitlines() if line.strip() and not line.startswith("#")
    )
    if not pool:
        raise ValueError(f"{p}: rephrasing pool is empty")
    return pool


def seeded_index(seed: int, key: str, n: int) -> int:
    digest = hashlib.sha256(f"{seed}\x1f{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n


def user_prefix_for(cond: Conditioning, key: str, rephrasings_path: Path | None = None) -> str | None:
    """The user prefix for the example identified by `key` (None when the mode is 'none')."""
    if cond.prefix_mode == "none":
        return None
    if cond.prefix_mode == "fixed":
        return cond.user_prefix
    pool = load_rephrasings(str(rephrasings_path or cond.rephrasings))
    return pool[seeded_index(cond.seed, key, len(pool))]


def condition_messages(
    messages: list[dict], cond: Conditioning | None, key: str, rephrasings_path: Path | None = None
) -> list[dict]:
    """Return a new message list with the system prompt set and the user prefix applied.

    messages: [{"role": ..., "content": ...}]. The prefix goes before the first user turn,
    separated by a blank line. A given system prompt replaces any existing one.
    """
    if cond is None:
        return [dict(m) for m in messages]
    out = [dict(m) for m in messages if not (cond.system_prompt is not None and m["role"] == "system")]
    if cond.system_prompt is not None:
        out.insert(0, {"role": "system", "content": cond.system_prompt})
    prefix = user_prefix_for(cond, key, rephrasings_path)
    if prefix:
        for m in out:
            if m["role"] == "user":
                m["content"] = f"{prefix}\n\n{m['content']}"
                break
    return out
