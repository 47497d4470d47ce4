"""Preregistration: schema, canonical hashing, lock / verify / amend, the analysis guard, power.

`import prereg` stays light (pydantic + stdlib); Inspect and numpy are imported inside the
functions that need them. Module names (gate, locking, logs) differ from the function names
(guard, lock, ...) so that importing a submodule never shadows `prereg.guard(...)`.
"""

from prereg.gate import EXPLORATORY, Guard, check_log_digests, guard
from prereg.locking import amend, compute_components, lock, read_lock, verify
from prereg.ledger import require_bound
from prereg.logs import outcome_logs
from prereg.schema import Contrast, Hypothesis, Prereg, PreregError, load_prereg

__all__ = [
    "EXPLORATORY", "Contrast", "Guard", "Hypothesis", "Prereg", "PreregError", "amend", "check_log_digests",
    "compute_components", "guard", "load_prereg", "lock", "outcome_logs", "read_lock", "require_bound", "verify",
]
