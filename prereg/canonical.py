"""Canonical JSON and domain-tagged sha256: the hashing every lock digest is built from.

Two YAML files that mean the same thing must hash the same; any change of meaning must not.
So values are canonicalised before hashing:
- mapping keys sorted (JSON `sort_keys`), separators without spaces, UTF-8, no ASCII escaping;
- every string (keys too) in Unicode NFC, so an NFD-typed "é" equals the NFC one;
- floats that are whole numbers (and within 2**53) become ints, so `epochs: 1` == `epochs: 1.0`;
  other floats use Python's shortest round-trip repr; NaN and +-inf are rejected (no meaning
  in a preregistration, and JSON has none);
- dates/datetimes (YAML parses `2026-01-01` as a date) become ISO strings;
- tuples are lists; anything else (sets, bytes, objects) is an error, not a silent str().
A digest is sha256 over `leaklab/<domain>` NUL canonical-bytes, so the same bytes hashed as a
different kind of component (a prereg vs a study vs a lock) never collide.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import unicodedata
from typing import Any

from leaklab.io import file_sha256  # noqa: F401  (re-exported: prereg.canonical.file_sha256)

HASH_SCHEME = "leaklab-canonical-v1"
_MAX_EXACT = 2**53


class CanonicalError(ValueError):
    """A value cannot be canonicalised (NaN, infinity, an unsupported type, a key collision)."""


def canonicalize(obj: Any, _path: str = "$") -> Any:
    """Return the canonical plain-JSON form of `obj` (raises CanonicalError naming the JSON path)."""
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise CanonicalError(f"{_path}: {obj!r} is not allowed (NaN/infinity have no canonical form)")
        if obj.is_integer() and abs(obj) <= _MAX_EXACT:
            return int(obj)
        return obj
    if isinstance(obj, str):
        return unicodedata.normalize("NFC", obj)
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                if isinstance(k, (bool, int)) or k is None:
                    k = json.dumps(k)  # YAML `1:` or `true:` keys: JSON would stringify them the same way
                else:
                    raise CanonicalError(f"{_path}: key {k!r} of type {type(k).__name__} is not allowed")
            nk = unicodedata.normalize("NFC", k)
            if nk in out:
                raise CanonicalError(f"{_path}: keys {k!r} collide after Unicode NFC normalisation")
            out[nk] = canonicalize(v, f"{_path}.{nk}")
        return out
    if isinstance(obj, (list, tuple)):
        return [canonicalize(v, f"{_path}[{i}]") for i, v in enumerate(obj)]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return canonicalize(obj.item(), _path)
    raise CanonicalError(f"{_path}: value of type {type(obj).__name__} has no canonical JSON form")


def canonical_json(obj: Any) -> str:
    return json.dumps(canonicalize(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_bytes(obj: Any) -> bytes:
    return canonical_json(obj).encode("utf-8")


def _tag(domain: str) -> bytes:
    if not domain or "\x00" in domain:
        raise ValueError("domain must be a non-empty string without NUL")
    return f"leaklab/{domain}".encode("utf-8") + b"\x00"


def digest(domain: str, obj: Any) -> str:
    """sha256 hex of the domain tag followed by the canonical JSON of `obj`."""
    return hashlib.sha256(_tag(domain) + canonical_bytes(obj)).hexdigest()
