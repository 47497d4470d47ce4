"""The hash-chained deviations log `studies/<name>/prereg.deviations.jsonl`.

One JSON line per lock event: the initial lock (seq 0) and every amendment after it. Each
entry names the previous entry's hash, the previous and new lock digests, every component
that changed, the reason, the UTC time and whether target outcome data existed at that
moment (detected from runs/<study>/logs, never declared by the user). `entry_hash` is a
domain-tagged canonical hash of the rest of the entry, and the lock file records the head
hash and the length, so a removed, reordered, edited or forged entry breaks the chain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from prereg.canonical import digest
from prereg.errors import PreregError

CHAIN_NAME = "prereg.deviations.jsonl"
_FIELDS = {"seq", "event", "prev_entry", "prev_digest", "digest", "components", "changed", "reason", "time",
           "outcome_data_existed", "outcome_logs", "git", "entry_hash"}


def entry_hash(entry: dict) -> str:
    return digest("deviation-entry", {k: v for k, v in entry.items() if k != "entry_hash"})


def lock_digest_of(components: dict[str, str]) -> str:
    """The study's lock digest: a canonical hash of the component name -> digest map."""
    return digest("lock", {"components": components})


def diff_components(old: dict[str, str], new: dict[str, str]) -> list[dict]:
    """[{component, change: added|removed|changed, old, new}] sorted by component name."""
    out = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        change = "added" if a is None else "removed" if b is None else "changed"
        out.append({"component": name, "change": change, "old": a, "new": b})
    return out


def make_entry(prev: dict | None, components: dict[str, str], reason: str, time: str,
               outcome_logs: list[str], git: dict | None) -> dict:
    entry: dict[str, Any] = {
        "seq": 0 if prev is None else prev["seq"] + 1,
        "event": "lock" if prev is None else "amend",
        "prev_entry": None if prev is None else prev["entry_hash"],
        "prev_digest": None if prev is None else prev["digest"],
        "digest": lock_digest_of(components),
        "components": dict(components),
        "changed": [] if prev is None else diff_components(prev["components"], components),
        "reason": reason,
        "time": time,
        "outcome_data_existed": bool(outcome_logs),
        "outcome_logs": list(outcome_logs),
        "git": git,
    }
    entry["entry_hash"] = entry_hash(entry)
    return entry


def chain_path(study_dir: str | Path) -> Path:
    return Path(study_dir) / CHAIN_NAME


def read_entries(path: Path, fields: set[str], what: str, torn_tail_ok: bool = False) -> list[dict]:
    """Parse a hash-chained JSON-lines file strictly: every line an object with exactly `fields`.
    A torn or non-JSON line is tampering, not noise; only with `torn_tail_ok` is an unterminated
    last line (a kill mid-append) ignored."""
    from leaklab.io import iter_jsonl
    from leaklab.yamlio import ConfigError

    entries = []
    try:
        for i, e in iter_jsonl(path, what, torn_tail_ok=torn_tail_ok):
            if set(e) != fields:
                raise PreregError(f"{path}:{i}: {what} entry must have exactly the fields {sorted(fields)}, got {sorted(e)}")
            entries.append(e)
    except PreregError:
        raise
    except ConfigError as exc:
        raise PreregError(str(exc)) from None
    return entries


def read_chain(path: str | Path) -> list[dict]:
    """Parse the chain file (or a study folder's chain) strictly."""
    path = Path(path)
    if path.is_dir():
        path = chain_path(path)
    if not path.exists():
        raise PreregError(f"{path}: deviations chain missing (the lock refers to it; restore it from git)")
    return read_entries(path, _FIELDS, "chain")


def link_problems(entries: list[dict], path: Path, hash_of: Callable[[dict], str],
                  label: Callable[[dict], str] = lambda e: "") -> list[str]:
    """The hash-chain checks every chained JSON-lines file shares (this chain and the run ledger,
    `prereg.ledger`): consecutive `seq`, `entry_hash` = `hash_of(entry)`, and `prev_entry` = the
    previous entry's hash (None for the first)."""
    probs = []
    prev = None
    for i, e in enumerate(entries):
        where = f"{path}: entry {i}{label(e)}"
        if e["seq"] != i:
            probs.append(f"{where}: seq {e['seq']} out of order (expected {i}; entry removed or reordered)")
        if e["entry_hash"] != hash_of(e):
            probs.append(f"{where}: entry_hash does not match its content (entry edited or forged)")
        if e["prev_entry"] != (None if prev is None else prev["entry_hash"]):
            probs.append(f"{where}: prev_entry does not link to the entry before it (entry removed, reordered or forged)")
        prev = e
    return probs


def chain_problems(entries: list[dict], path: Path) -> list[str]:
    """Every integrity problem of a chain (empty list = valid)."""
    if not entries:
        return [f"{path}: deviations chain is empty"]
    probs = link_problems(entries, path, entry_hash)
    prev = None
    for i, e in enumerate(entries):
        where = f"{path}: entry {i}"
        if e["digest"] != lock_digest_of(e["components"]):
            probs.append(f"{where}: digest does not match its components (entry edited or forged)")
        if prev is None:
            if e["event"] != "lock" or e["prev_entry"] is not None or e["prev_digest"] is not None:
                probs.append(f"{where}: the first entry must be the initial lock with no predecessor")
        else:
            if e["event"] != "amend":
                probs.append(f"{where}: event {e['event']!r} after the first entry (expected 'amend')")
            if e["prev_digest"] != prev["digest"]:
                probs.append(f"{where}: prev_digest is not entry {i - 1}'s digest")
            if e["changed"] != diff_components(prev["components"], e["components"]):
                probs.append(f"{where}: 'changed' does not match the component difference to entry {i - 1}")
            if not str(e["reason"]).strip():
                probs.append(f"{where}: an amendment without a reason")
        prev = e
    return probs


def append_entry(path: Path, entry: dict) -> None:
    from leaklab.runstore import append_jsonl

    append_jsonl(path, entry)
