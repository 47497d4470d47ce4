"""Corpus-builder fingerprints: what the prereg lock binds for an arm built by a builder.

Training owns the builders and registers each one's fingerprint function here
(`training.corpora` calls `register_builder` for every builder it defines); the lock
(`prereg.locking`) asks `builder_fingerprint` and never imports training. Builders are
discovered through the entry-point group `leaklab.corpus_builders` (pyproject.toml: `training =
"training.corpora"`), so the lock binds the same whether or not training was imported first, and
a builder nobody registered is an error naming the registered ones, never a silently smaller
lock. Core: imports nothing from the stages.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

from leaklab.yamlio import ConfigError

ENTRY_POINT_GROUP = "leaklab.corpus_builders"

Resolve = Callable[[str], Path]
Fingerprint = Callable[[str, dict, "Resolve | None"], dict]  # (builder name, args, resolve) -> JSON-able dict

_BUILDERS: dict[str, Fingerprint] = {}
_LOADED = False


def register_builder(name: str, fingerprint: Fingerprint) -> None:
    """Training calls this for every corpus builder, at import."""
    _BUILDERS[name] = fingerprint


def _load() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()  # importing the module registers its builders


def registered() -> list[str]:
    _load()
    return sorted(_BUILDERS)


def builder_fingerprint(name: str, args: dict, resolve: Resolve | None = None) -> dict:
    """The registered builder's fingerprint (template version, data files' sha256, args)."""
    _load()
    if not _BUILDERS:
        raise ConfigError(f"corpus builder {name!r}: no builder is registered (entry-point group {ENTRY_POINT_GROUP!r} "
                          f"is empty: reinstall leaklab, `pip install -e .`, so its entry points are current)")
    if name not in _BUILDERS:
        raise ConfigError(f"unknown corpus builder {name!r}; registered builders: {sorted(_BUILDERS)} "
                          f"(entry-point group {ENTRY_POINT_GROUP!r})")
    return _BUILDERS[name](name, args, resolve)
