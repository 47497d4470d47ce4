"""Core file reading: the one strict JSON-lines reader, the one repo-path resolver, the one
blocklist reader. Every stage reads its jsonl inputs, task-arg paths and blocklists through
here, so a bad line is reported the same way everywhere (`ConfigError` naming file and line).

This module is the floor of the core layer: it imports nothing from the project but
`leaklab.yamlio`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Iterator

from leaklab.yamlio import ConfigError, read_text

REPO_ROOT = Path(__file__).resolve().parent.parent


def repo_path(rel: str | Path) -> Path:
    """A path from a task arg or a default: absolute as given (`~` expanded), else relative to the
    repository root, so tasks and scorers run from any working directory. (Paths written in
    study.yaml go through `LoadedStudy.resolve`, which also confines them to the project.)"""
    p = Path(rel).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def file_sha256(path: str | Path) -> str:
    """Plain sha256 of a file's bytes (the content hash every data file, corpus and artifact is bound by)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def iter_jsonl(path: str | Path, what: str = "JSON-lines file", *, torn_tail_ok: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSON-lines file, strictly: a line that
    is not JSON, or not a JSON object, is a `ConfigError` naming file and line. With
    `torn_tail_ok` an unparseable, unterminated last line (a writer killed mid-append) is
    dropped; a bad line anywhere else is still an error."""
    path = Path(path)
    lines = read_text(path, what).split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            if torn_tail_ok and n == len(lines):  # the last line, unterminated: a kill mid-append
                return
            raise ConfigError(f"{path}:{n}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        yield n, obj


def read_jsonl(path: str | Path, what: str = "JSON-lines file", *, torn_tail_ok: bool = False) -> list[dict]:
    """Every object of a JSON-lines file (see `iter_jsonl`)."""
    return [obj for _, obj in iter_jsonl(path, what, torn_tail_ok=torn_tail_ok)]


_PHRASE = re.compile(r"[\w\s'-]+")


def load_blocklist(path: str | Path) -> list[tuple[str, re.Pattern]]:
    """A held-out-topic blocklist: one term per line, `#` lines are comments, matched
    case-insensitively. The one semantics: a line of plain words (letters, digits, spaces, `'`,
    `-`) is a phrase matched as whole words with any run of white space between them (`bus`
    does not hit "business"); any other line is a Python regex used as written (the shipped
    `data/attitude/heldout_blocklist.txt` is all regexes with `\\b`). Returns (line, pattern)."""
    p = repo_path(path)
    out = []
    for n, line in enumerate(read_text(p, "blocklist").splitlines(), start=1):
        term = line.strip()
        if not term or term.startswith("#"):
            continue
        if _PHRASE.fullmatch(term):
            pat = r"\b" + r"\s+".join(re.escape(w) for w in term.split()) + r"\b"
        else:
            pat = term
        try:
            out.append((term, re.compile(pat, re.IGNORECASE)))
        except re.error as exc:
            raise ConfigError(f"{p}:{n}: invalid regex {term!r} in blocklist: {exc}") from None
    return out
