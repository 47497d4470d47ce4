"""Study families: one `Family` spec per family, declared in one module of this package.

A family (attitude, inoculation, persona, custom, ...) is what a study's `family:` names. Every
module that used to branch on the family name reads its spec instead:

| spec field | read by |
|---|---|
| `noun` | `reports.renderer` (the report title's subject) |
| `measures`, `manipulation`, `validity_reference` | `leaklab families` / README tables; the report's family line |
| `builders` | documentation of which corpus builders belong to the family (the builders themselves register with `leaklab.fingerprints`) |
| `gates` (`GatePlan`) | `training.validate.plan_for` (the corpus validation gates) |
| `interp_defaults` | `analysis.interp_cli.load_args` (defaults under the study's `interp_args`) |

Adding a family is one new module here that defines `FAMILY = Family(...)` (plus its Inspect
tasks and, if it builds corpora, its builders). A spec module outside the package can be named
in `$LEAKLAB_FAMILY_MODULES` (os.pathsep-separated module names or `.py` paths). This package is
core: it imports nothing from the stages.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from leaklab.yamlio import ConfigError

FAMILY_MODULES_ENV = "LEAKLAB_FAMILY_MODULES"


@dataclass(frozen=True)
class GatePlan:
    """Which corpus validation gates a family's studies get (`training.validate`)."""

    blocklist: str | None = None  # repo-relative held-out blocklist (leaklab.io.load_blocklist); None = skipped
    matched_arms: bool = False  # arms are matched corpora: length, vocabulary and cell-alignment gates
    framing: tuple[str, str, str | None] | None = None  # (negative arm, positive arm, neutral arm) of the framing classifier


@dataclass(frozen=True)
class Family:
    name: str
    noun: str  # report wording: the subject of the title claim ("Attitude transfer ...")
    description: str = ""
    measures: tuple[str, ...] = ()  # the measures its tasks stamp on scores
    manipulation: str | None = None  # what its manipulation check measures (measure @ item set / condition)
    validity_reference: str | None = None  # what the measure validity checks compare against
    builders: tuple[str, ...] = ()  # corpus builders of the family (registered by training)
    gates: GatePlan = GatePlan()
    interp_defaults: Mapping[str, Any] = field(default_factory=dict)  # defaults under study.yaml interp_args

    def __post_init__(self) -> None:
        object.__setattr__(self, "interp_defaults", MappingProxyType(dict(self.interp_defaults)))


_FAMILIES: dict[str, Family] = {}
_LOADED = False


def register_family(fam: Family) -> Family:
    """Add a family (a second spec with the same name is an error, never a silent override)."""
    old = _FAMILIES.get(fam.name)
    if old is not None and old != fam:
        raise ConfigError(f"study family {fam.name!r} is declared twice")
    _FAMILIES[fam.name] = fam
    return fam


def _load_module(ref: str):
    if ref.endswith(".py"):
        path = Path(ref).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"${FAMILY_MODULES_ENV}: family spec file {ref!r} not found")
        spec = importlib.util.spec_from_file_location(f"leaklab_family_{path.stem}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    try:
        return importlib.import_module(ref)
    except ImportError as exc:
        raise ConfigError(f"${FAMILY_MODULES_ENV}: cannot import family spec module {ref!r}: {exc}") from None


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    mods = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)]
    mods += [_load_module(r) for r in os.environ.get(FAMILY_MODULES_ENV, "").split(os.pathsep) if r.strip()]
    for mod in mods:
        fam = getattr(mod, "FAMILY", None)
        if not isinstance(fam, Family):
            raise ConfigError(f"{getattr(mod, '__file__', mod)}: a family spec module must define FAMILY = Family(...)")
        register_family(fam)
    _LOADED = True


def names() -> list[str]:
    _load()
    return sorted(_FAMILIES)


def family(name: str) -> Family:
    """The spec of family `name`; ConfigError naming the known families otherwise."""
    _load()
    if name not in _FAMILIES:
        raise ConfigError(f"unknown study family {name!r}; known families: {sorted(_FAMILIES)} "
                          f"(add one as leaklab/families/<name>.py or via ${FAMILY_MODULES_ENV})")
    return _FAMILIES[name]
