"""Inspect logs as seen by the preregistration: detecting target outcome data, and binding
logs to the lock digest they were produced under.

Target outcome data = an Inspect log under runs/<study>/logs/ whose task args (or, failing
that, sample score metadata) name an item set other than "source" (the manipulation-check
set). A log whose item set cannot be read counts as target data: detection fails closed.
Only headers are read (`read_eval_log(header_only=True)`), so this is cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from prereg.schema import PreregError

SOURCE_ITEM_SETS = frozenset({"source"})
_NOT_LOGS = {"eval-set.json", "logs.json", "listing.json"}


def find_logs(folder: Path) -> list[Path]:
    if not folder.exists():
        return []
    out = [p for p in folder.rglob("*.eval")]
    out += [p for p in folder.rglob("*.json") if p.name not in _NOT_LOGS and not p.name.startswith(".")]
    return sorted(out)


def _item_set_of(log) -> str | None:
    args = getattr(log.eval, "task_args", None) or {}
    if isinstance(args.get("item_set"), str):
        return args["item_set"]
    return None


def _sample_item_sets(path: Path) -> set[str]:
    from inspect_ai.log import read_eval_log

    log = read_eval_log(str(path), header_only=False)
    found = set()
    for s in log.samples or []:
        for sc in (s.scores or {}).values():
            md = sc.metadata or {}
            if isinstance(md.get("item_set"), str):
                found.add(md["item_set"])
    return found


def outcome_logs(study) -> list[tuple[str, str]]:
    """[(log path, why it counts)] for every log holding target outcome data of `study`."""
    logs = find_logs(study.runs_dir / "logs")
    if not logs:
        return []
    from inspect_ai.log import read_eval_log

    out = []
    for p in logs:
        try:
            log = read_eval_log(str(p), header_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable log counts (fail closed)
            if p.suffix == ".json":
                continue  # some other JSON file (Inspect writes a few next to logs)
            out.append((str(p), f"unreadable log ({type(exc).__name__}); counted as outcome data"))
            continue
        item_set = _item_set_of(log)
        if item_set is None:
            try:
                sets = _sample_item_sets(p)
            except Exception:  # noqa: BLE001
                sets = set()
            target = sets - SOURCE_ITEM_SETS
            if target:
                out.append((str(p), f"samples scored on item set(s) {sorted(target)}"))
            elif not sets:
                out.append((str(p), "no item_set in task args or scores; counted as outcome data"))
            continue
        if item_set not in SOURCE_ITEM_SETS:
            out.append((str(p), f"task {log.eval.task} on item set {item_set!r}"))
    return out


def log_binding(log) -> dict:
    md = getattr(log.eval, "metadata", None) or {}
    ll = md.get("leaklab")
    return ll if isinstance(ll, dict) else {}


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

    from prereg.gate import guard as _guard

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


def require_bound(study_dir: str | Path, logs: Iterable[Any] = (), guard=None) -> list[str]:
    """Raise PreregError listing every log of the study that analysis must refuse: the custody
    check of `prereg.ledger` over every log under runs/<study>/logs and every ledgered log (not
    only `logs`, so a log in another format or folder cannot slip past), plus any of `logs` that
    is not among them. Returns the accepted log paths: the one file list analysis reads."""
    from leaklab.study import load_study
    from prereg.gate import guard as _guard
    from prereg.ledger import custody

    study = load_study(study_dir)
    g = guard or _guard(study.folder, exploratory=False)
    c = custody(study, g)
    known = {str(Path(p).resolve()) for p in c.accepted} | {str(Path(p).resolve()) for p, _ in c.refused + c.skipped}
    bad = list(c.refused)
    for item in logs:
        name = str(item if isinstance(item, (str, Path)) else getattr(item, "location", item))
        if str(Path(name).resolve()) not in known:
            bad.append((name, f"not under the study's run folder {study.runs_dir / 'logs'} and not in its run ledger"))
    if bad:
        listing = "\n  ".join(f"{p}: {why}" for p, why in bad)
        raise PreregError(f"{len(bad)} log(s) are not bound to the current preregistration lock and run ledger "
                          f"(analysis reads only ledgered logs whose bytes and adapters still match):\n  {listing}")
    return c.accepted


def describe_failed_eval(log_dir: Path) -> str:
    """The first error Inspect recorded in a log folder, one line (an ENOSPC or EROFS shows here)."""
    from inspect_ai.log import read_eval_log

    for p in find_logs(Path(log_dir)):
        try:
            log = read_eval_log(str(p), header_only=True)
        except Exception:  # noqa: BLE001
            continue
        if log.status == "error" and log.error is not None:
            return " ".join(str(log.error.message).split())[:500]
    return "no error recorded in the logs"
