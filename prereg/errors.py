"""`PreregError`, the base of every prereg module (so none needs prereg.schema to raise it)."""

from __future__ import annotations

from leaklab.yamlio import ConfigError


class PreregError(ConfigError):
    """A preregistration is invalid, missing, unlocked, stale or tampered with."""
