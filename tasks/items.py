"""Attitude items: one jsonl format for target (held-out) and source (trained-domain) items.

Loaded and validated once here so every stance task reads the same thing. Errors are
`ConfigError`s naming file and line. Ids are stable and derivable: `id` must equal
`{base_item}.p{paraphrase_idx}`, and `base_item` must start with `tgt-`/`src-` for its item set
and carry its domain, so an id alone says what it is and can never silently shift.
"""

from __future__ import annotations

import re
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from leaklab.io import iter_jsonl, repo_path
from leaklab.yamlio import ConfigError

ITEM_SET_PREFIX = {"target": "tgt", "source": "src"}
_DOMAIN = re.compile(r"^[a-z][a-z0-9_]*$")
_BASE = re.compile(r"^(tgt|src)-([a-z][a-z0-9_]*)-(\d{2})$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class ForcedChoice(_Strict):
    """A yes/no decision phrased as two options; the task assigns letters in both orders."""

    question: str = Field(min_length=5)
    pro_option: str = Field(min_length=3)  # go ahead with the change
    anti_option: str = Field(min_length=3)  # do not (yet)

    @model_validator(mode="after")
    def _distinct(self):
        if self.pro_option.casefold() == self.anti_option.casefold():
            raise ValueError("pro_option and anti_option must differ")
        return self


class Likert(_Strict):
    """A statement rated 1-7. reverse_keyed: agreeing means *against* the change."""

    statement: str = Field(min_length=5)
    reverse_keyed: bool


class Item(_Strict):
    id: str
    base_item: str
    paraphrase_idx: int = Field(ge=0)
    domain: str
    item_set: Literal["target", "source"]
    scenario: str = Field(min_length=40)
    forced_choice: ForcedChoice
    likert: Likert
    open_ended: str = Field(min_length=10)

    @field_validator("domain")
    @classmethod
    def _domain_ok(cls, v: str) -> str:
        if not _DOMAIN.match(v):
            raise ValueError(f"domain {v!r} must be lower_snake_case")
        return v

    @model_validator(mode="after")
    def _ids(self):
        m = _BASE.match(self.base_item)
        if not m:
            raise ValueError(f"base_item {self.base_item!r} must look like 'tgt-<domain>-NN' or 'src-<domain>-NN'")
        prefix, dom, _ = m.groups()
        if prefix != ITEM_SET_PREFIX[self.item_set]:
            raise ValueError(f"base_item {self.base_item!r} must start with '{ITEM_SET_PREFIX[self.item_set]}-' for item_set {self.item_set!r}")
        if dom != self.domain:
            raise ValueError(f"base_item {self.base_item!r} does not carry its domain {self.domain!r}")
        expect = f"{self.base_item}.p{self.paraphrase_idx}"
        if self.id != expect:
            raise ValueError(f"id {self.id!r} must be {expect!r} ({{base_item}}.p{{paraphrase_idx}})")
        return self


def load_items(items: str | Path, item_set: str | None = None) -> list[Item]:
    """Read and validate an item file; cross-item checks (unique ids, paraphrase sets) included.

    item_set: when given, every item must belong to it (a task told `target` must not be fed
    source items by a typo in study.yaml).
    """
    path = repo_path(items)
    if not path.exists():
        raise ConfigError(f"{path}: item file not found")
    out: list[Item] = []
    lines: dict[str, int] = {}
    for lineno, data in iter_jsonl(path, "item file"):
        try:
            item = Item.model_validate(data)
        except ValidationError as exc:
            msgs = []
            for err in exc.errors():
                key = ".".join(str(p) for p in err["loc"]) or "<item>"
                msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
                msgs.append(f"{path}:{lineno}: key '{key}': {msg}")
            raise ConfigError("\n".join(msgs)) from None
        if item.id in lines:
            raise ConfigError(f"{path}:{lineno}: duplicate id {item.id!r} (first on line {lines[item.id]})")
        if item_set is not None and item.item_set != item_set:
            raise ConfigError(f"{path}:{lineno}: item {item.id!r} has item_set {item.item_set!r}, but the task was asked for {item_set!r}")
        lines[item.id] = lineno
        out.append(item)
    if not out:
        raise ConfigError(f"{path}: no items")
    by_base: dict[str, list[Item]] = defaultdict(list)
    for it in out:
        by_base[it.base_item].append(it)
    for base, group in by_base.items():
        idx = sorted(it.paraphrase_idx for it in group)
        if idx != list(range(len(idx))):
            raise ConfigError(f"{path}:{lines[group[0].id]}: base_item {base!r} has paraphrase_idx {idx}, expected 0..{len(idx) - 1}")
    return out


def select_base_items(items: list[Item], limit_base_items: int | None) -> list[Item]:
    """A deterministic subset of whole base items, spread over domains.

    Base items are taken round-robin over domains (each in file order), so a demo-sized
    subset of 8 touches 8 domains instead of exhausting the first one. All paraphrases of a
    chosen base item are kept (paraphrase is a random effect the analysis needs).
    """
    if limit_base_items is None:
        return list(items)
    if limit_base_items < 1:
        raise ConfigError(f"limit_base_items must be >= 1, got {limit_base_items}")
    per_domain: OrderedDict[str, list[str]] = OrderedDict()
    for it in items:
        bases = per_domain.setdefault(it.domain, [])
        if it.base_item not in bases:
            bases.append(it.base_item)
    order: list[str] = []
    depth = 0
    while len(order) < limit_base_items and any(depth < len(b) for b in per_domain.values()):
        for bases in per_domain.values():
            if depth < len(bases) and len(order) < limit_base_items:
                order.append(bases[depth])
        depth += 1
    keep = set(order)
    return [it for it in items if it.base_item in keep]
