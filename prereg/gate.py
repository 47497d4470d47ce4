"""`prereg.guard`: the one call every analysis, report and target evaluation goes through.

It fails closed: no lock, an edited lock, a broken chain or any bound file changed since the
lock raises PreregError with the precise reason. `exploratory=True` lets work run anyway but
the returned Guard says EXPLORATORY, and callers must stamp every output with `guard.stamp`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from prereg.schema import PreregError

EXPLORATORY = "EXPLORATORY"


@dataclass(frozen=True)
class Guard:
    study: str
    folder: Path
    digest: str | None  # full sha256 hex of the verified lock; None when exploratory and unverified
    exploratory: bool
    locked_at: str | None = None
    chain: list = field(default_factory=list)  # verified chain entries (empty when unverified)
    problems: tuple[str, ...] = ()  # why the lock did not verify (only ever non-empty when exploratory)

    @property
    def stamp(self) -> str:
        """The label every output carries: EXPLORATORY, or the lock digest it is bound to."""
        if self.exploratory:
            return EXPLORATORY + (" (lock did not verify)" if self.problems else "")
        return f"CONFIRMATORY lock {self.digest}"

    @property
    def amendments(self) -> list[dict]:
        return [e for e in self.chain if e["event"] == "amend"]


def guard(study_dir: str | Path, exploratory: bool = False) -> Guard:
    from leaklab.study import load_study
    from prereg.locking import verify

    study = load_study(study_dir)
    res = verify(study.folder)
    if res.ok:
        lk_time = res.chain[-1]["time"] if res.chain else None
        return Guard(study.name, study.folder, res.digest, exploratory, lk_time, list(res.chain))
    if exploratory:
        return Guard(study.name, study.folder, None, True, None, [], tuple(res.explain().splitlines()))
    raise PreregError(
        f"{study.folder}: preregistration lock does not verify; refusing to run (pass --exploratory to run "
        f"with every output stamped EXPLORATORY):\n{res.explain()}"
    )


_guard = guard  # the name `guard` is also check_log_digests' parameter


def check_log_digests(study_dir: str | Path, logs: Iterable[Any], guard=None) -> list[tuple[str, str]]:
    """[(log, reason)] for every log analysis must reject; empty = all bound to the current lock.

    Rule (deliberately simple): a log is accepted only if its `metadata.leaklab.lock_digest`
    equals the current lock digest, its `leaklab.study` is this study and (for a confirmatory
    analysis) it was not produced with --exploratory. Logs produced under
    an earlier lock in the chain are rejected with the amendment that superseded them: re-run
    their evaluation under the current lock (an amendment can change what the log means).
    In exploratory mode without a lock only the study name is checked. `logs` are paths or
    EvalLog objects.
    """
    from inspect_ai.log import read_eval_log

    from prereg.logs import log_binding

    g = guard or _guard(study_dir, exploratory=False)
    chain_index = {e["digest"]: e for e in (g.chain or [])}
    bad = []
    for item in logs:
        if isinstance(item, (str, Path)):
            name = str(item)
            try:
                log = read_eval_log(name, header_only=True)
            except Exception as exc:  # noqa: BLE001
                bad.append((name, f"unreadable log: {exc}"))
                continue
        else:
            log, name = item, str(getattr(item, "location", None) or "<EvalLog>")
        b = log_binding(log)
        if not b:
            bad.append((name, "no leaklab metadata (not produced by `leaklab eval` for this study)"))
            continue
        if b.get("study") != g.study:
            bad.append((name, f"belongs to study {b.get('study')!r}, not {g.study!r}"))
            continue
        if g.digest is None:
            continue  # exploratory without a lock: nothing to bind to
        d = b.get("lock_digest")
        if d == g.digest:
            if b.get("exploratory") and not g.exploratory:
                bad.append((name, "produced with --exploratory (stamped EXPLORATORY); re-run the evaluation without "
                                  "--exploratory to use it in a confirmatory analysis"))
            continue
        if d is None:
            bad.append((name, "produced without a lock (exploratory); it cannot enter a confirmatory analysis"))
        elif d in chain_index:
            e = chain_index[d]
            later = [x for x in g.chain if x["seq"] > e["seq"]]
            why = later[0]["reason"] if later else "?"
            bad.append((name, f"produced under an earlier lock {d[:12]} (chain entry {e['seq']}), superseded by "
                              f"amendment {later[0]['seq'] if later else '?'} ({why!r}); re-run this evaluation"))
        else:
            bad.append((name, f"lock digest {str(d)[:12]} is not in this study's chain (another lock or forged)"))
    return bad
