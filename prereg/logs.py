"""Inspect logs as seen by the preregistration: detecting target outcome data, and binding
logs to the lock digest they were produced under.

Target outcome data = an Inspect log under runs/<study>/logs/ whose task args (or, failing
that, sample score metadata) name an item set other than "source" (the manipulation-check
set). A log whose item set cannot be read counts as target data: detection fails closed.
Only headers are read (`read_eval_log(header_only=True)`), so this is cheap.
"""

from __future__ import annotations

from pathlib import Path

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
