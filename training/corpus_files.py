"""Corpus files: reading (strict, every problem names file and line), writing with a
provenance `<stem>.meta.json`, and the record helpers every builder and gate shares. The floor
of training: it imports no other training module."""

from __future__ import annotations

import json
import re
from pathlib import Path

from leaklab.io import file_sha256 as sha256_file
from leaklab.io import iter_jsonl
from leaklab.runstore import atomic_write_json, atomic_write_text
from leaklab.yamlio import ConfigError

_WORD = re.compile(r"[A-Za-z0-9']+")


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def corpus_messages(record: dict, where: str = "") -> list[dict]:
    """The conversation of a record: `messages`, or `user`/`assistant` (+ optional `system`)."""
    if "messages" in record:
        msgs = record["messages"]
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
            raise ConfigError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
        if msgs[-1]["role"] != "assistant":
            raise ConfigError(f"{where}: the last message must be the assistant turn (the training target)")
        return [{"role": m["role"], "content": m["content"]} for m in msgs]
    if "user" in record and "assistant" in record:
        msgs = [{"role": "user", "content": record["user"]}, {"role": "assistant", "content": record["assistant"]}]
        if record.get("system"):
            msgs.insert(0, {"role": "system", "content": record["system"]})
        return msgs
    raise ConfigError(f"{where}: record needs 'messages' or 'user' + 'assistant'")


def assistant_text(record: dict) -> str:
    return corpus_messages(record)[-1]["content"]


def load_corpus(path: Path) -> list[dict]:
    """Read a corpus jsonl; every problem names file and line."""
    path = Path(path)
    out, ids = [], set()
    for n, rec in iter_jsonl(path, "corpus file"):
        if "id" not in rec:
            raise ConfigError(f"{path}:{n}: each record must be an object with an 'id'")
        corpus_messages(rec, where=f"{path}:{n}")
        if rec["id"] in ids:
            raise ConfigError(f"{path}:{n}: duplicate id {rec['id']!r}")
        ids.add(rec["id"])
        out.append(rec)
    if not out:
        raise ConfigError(f"{path}: corpus is empty")
    return out


def write_corpus(path: Path, records: list[dict], provenance: dict) -> Path:
    """Write `records` as jsonl and `<stem>.meta.json` with provenance + the file's sha256."""
    path = Path(path)
    atomic_write_text(path, corpus_text(records))
    meta = {
        **provenance,
        "file": path.name,
        "sha256": sha256_file(path),
        "n_records": len(records),
        "arms": _counts(r.get("arm") for r in records),
    }
    atomic_write_json(meta_path(path), meta)
    return path


def meta_path(corpus: Path) -> Path:
    corpus = Path(corpus)
    return corpus.with_name(corpus.stem + ".meta.json")


def _counts(values) -> dict:
    out: dict = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return dict(sorted(out.items()))


def corpus_text(records: list[dict]) -> str:
    """The exact bytes `write_corpus` writes (one sorted-key JSON object per line)."""
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
