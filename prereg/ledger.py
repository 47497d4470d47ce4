"""The run ledger `runs/<study>/ledger.jsonl`: the chain of custody from a trained cell to a log.

Every Inspect log that analysis may read is recorded here when it is produced (`leaklab eval`)
or registered (`leaklab register-log`, for a log made by plain `inspect eval`). One JSON line
per log: its path under `runs/<study>/`, its sha256, the labels it carries (model label, arm,
seed, checkpoint, lock digest, exploratory), the adapter it was produced from with the
adapter's sha256, and the sha256 of that cell's manifest (the cell's custody record). Entries
are hash-chained like the deviations log (`prev_entry`, domain-tagged `entry_hash`), appended
under an flock, so concurrent evaluators (Ray workers) cannot interleave.

`custody(study, guard)` is the one file list analysis reads: every log under `runs/<study>/logs`
and every ledgered path, each either accepted (ledgered, bytes unchanged, labels as ledgered,
adapter and cell record unchanged, bound to the lock) or refused by name with the reason.
Logs that are not successful and not ledgered (Inspect's partial or errored attempts) are
skipped, not read.

What this does not do: the hashes are unkeyed, so whoever controls the whole folder can
rewrite a log and recompute its ledger entry and every entry after it (see README, reliability).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from prereg.canonical import digest, file_sha256
from prereg.deviations import link_problems, read_entries
from prereg.schema import PreregError

LEDGER_NAME = "ledger.jsonl"
_FIELDS = {"seq", "prev_entry", "time", "via", "source", "study", "log", "log_sha256", "status", "task", "item_set",
           "model", "model_label", "arm", "seed", "checkpoint", "lock_digest", "exploratory", "adapter",
           "adapter_sha256", "cell_manifest_sha256", "entry_hash"}
_LABELS = ("study", "model_label", "arm", "seed", "checkpoint", "lock_digest", "exploratory")


def tree_sha256(folder: str | Path) -> str:
    """sha256 over a folder's files (sorted relative paths and each file's sha256): an adapter's identity."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode("utf-8") + b"\0" + file_sha256(p).encode("ascii") + b"\n")
    return h.hexdigest()


def ledger_path(study_runs: Path) -> Path:
    return Path(study_runs) / LEDGER_NAME


def entry_hash(entry: dict) -> str:
    return digest("ledger-entry", {k: v for k, v in entry.items() if k != "entry_hash"})


def read_ledger(path: str | Path) -> list[dict]:
    """Parse the ledger strictly (a torn last line, left by a kill mid-append, is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    return read_entries(path, _FIELDS, "run ledger", torn_tail_ok=True)


def ledger_problems(entries: list[dict], path: Path) -> list[str]:
    return link_problems(entries, path, entry_hash, label=lambda e: f" ({e.get('log')})")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        raise PreregError(f"{path}: not under the study's run folder {root}") from None


def expected_adapter(study_runs: Path, model_label: str, arm: str, seed: Any, checkpoint: str) -> Path:
    """Where the adapter of (model label, arm, seed, checkpoint) lives (what `leaklab eval` passes)."""
    from leaklab.runstore import train_dir

    cell = train_dir(study_runs, model_label, arm, int(seed))
    if checkpoint == "final":
        return cell / "adapter"
    step = cell / "checkpoints" / str(checkpoint)
    return step / "adapter" if (step / "adapter").exists() else step


def _cell_of(study_runs: Path, md: dict) -> Path:
    from leaklab.runstore import train_dir

    return train_dir(study_runs, md["model_label"], md["arm"], int(md["seed"]))


def _binding(header) -> dict:
    md = getattr(header.eval, "metadata", None) or {}
    ll = md.get("leaklab")
    return ll if isinstance(ll, dict) else {}


def _norm(key: str, value: Any) -> Any:
    if key == "exploratory":
        return bool(value)
    if key == "checkpoint":
        return value or "final"
    return value


def _label_problems(study, md: dict, adapter_written: str | None) -> list[str]:
    """The labels a log carries must name a real cell of the study and its adapter."""
    spec = study.spec
    probs = []
    labels = {m.run_label for m in spec.models}
    if md.get("study") != study.name:
        return [f"belongs to study {md.get('study')!r}, not {study.name!r}"]
    if md.get("model_label") not in labels:
        probs.append(f"model label {md.get('model_label')!r} is not one of the study's {sorted(labels)}")
    arm = md.get("arm")
    if arm == "base":
        if adapter_written:
            probs.append(f"labelled as the base model but produced with adapter {adapter_written}")
        return probs
    if arm not in spec.arms or spec.arms[arm].corpus is None:
        probs.append(f"arm {arm!r} is not a trained arm of the study")
        return probs
    if not isinstance(md.get("seed"), int) or md["seed"] not in spec.seeds:
        probs.append(f"seed {md.get('seed')!r} is not one of the study's seeds {spec.seeds}")
        return probs
    if probs:
        return probs
    want = expected_adapter(study.runs_dir, md["model_label"], arm, md["seed"], str(md.get("checkpoint") or "final"))
    # compared by the tail runs/<study>/train/...: a run folder moved or copied elsewhere stays valid
    tail = (study.name, *want.resolve().relative_to(study.runs_dir.resolve()).parts)
    if not adapter_written or Path(adapter_written).parts[-len(tail):] != tail:
        probs.append(f"labelled {md['model_label']}/{arm}/seed{md['seed']}/{md.get('checkpoint')} but produced with "
                     f"adapter {adapter_written!r}, not {want} (labels swapped?)")
    return probs


def record_log(study, log_path: str | Path, *, via: str, source: str | None = None) -> dict:
    """Append one log to the ledger after checking its labels against its adapter; returns the
    entry (or the existing one when this exact file is already ledgered)."""
    from inspect_ai.log import read_eval_log

    runs = study.runs_dir
    path = Path(log_path)
    rel = _rel(path, runs)
    header = read_eval_log(str(path), header_only=True)
    md = _binding(header)
    if header.status != "success":
        raise PreregError(f"{path}: only a complete log (status success) can be ledgered; this one is {header.status!r}")
    probs = _label_problems(study, md, md.get("adapter"))
    if probs:
        raise PreregError(f"{path}: cannot ledger this log: " + "; ".join(probs))
    adapter = adapter_sha = manifest_sha = None
    if md["arm"] != "base":
        ad = expected_adapter(runs, md["model_label"], md["arm"], md["seed"], str(md.get("checkpoint") or "final"))
        adapter, adapter_sha = _rel(ad, runs), tree_sha256(ad)
        manifest_sha = file_sha256(_cell_of(runs, md) / "manifest.json")
    sha = file_sha256(path)
    lpath = ledger_path(runs)
    with _locked(lpath):
        entries = read_ledger(lpath)
        for e in reversed(entries):
            if e["log"] == rel:
                if e["log_sha256"] == sha and e["adapter_sha256"] == adapter_sha:
                    return e
                break
        prev = entries[-1] if entries else None
        entry = {
            "seq": len(entries),
            "prev_entry": prev["entry_hash"] if prev else None,
            "time": _now(),
            "via": via,
            "source": source,
            "study": study.name,
            "log": rel,
            "log_sha256": sha,
            "status": header.status,
            "task": header.eval.task,
            "item_set": (header.eval.task_args or {}).get("item_set"),
            "model": header.eval.model,
            "model_label": md.get("model_label"),
            "arm": md.get("arm"),
            "seed": md.get("seed"),
            "checkpoint": md.get("checkpoint") or "final",
            "lock_digest": md.get("lock_digest"),
            "exploratory": bool(md.get("exploratory")),
            "adapter": adapter,
            "adapter_sha256": adapter_sha,
            "cell_manifest_sha256": manifest_sha,
        }
        entry["entry_hash"] = entry_hash(entry)
        _append(lpath, entry)
    return entry


def _append(path: Path, entry: dict) -> None:
    """Append one line; a torn tail left by a kill is cut first so the chain stays parseable."""
    data = (json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
    with open(path, "ab+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size:
            fh.seek(size - 1)
            if fh.read(1) != b"\n":
                content = path.read_bytes()
                fh.truncate(content.rfind(b"\n") + 1)
        fh.seek(0, os.SEEK_END)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def ledger_dir(study, log_dir: str | Path, *, via: str = "leaklab eval") -> list[dict]:
    """Ledger every complete log under `log_dir` (after an eval set finished)."""
    from inspect_ai.log import read_eval_log

    from prereg.logs import find_logs

    out = []
    for p in find_logs(Path(log_dir)):
        try:
            if read_eval_log(str(p), header_only=True).status != "success":
                continue
        except Exception:  # noqa: BLE001 - not an Inspect log (Inspect writes side files)
            continue
        out.append(record_log(study, p, via=via))
    return out


# ---------------------------------------------------------------- what analysis may read


@dataclass
class Custody:
    accepted: list[str] = field(default_factory=list)  # log paths analysis reads, in order
    refused: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why): not outcome data

    def explain(self) -> str:
        return "\n  ".join(f"{p}: {why}" for p, why in self.refused)


def custody(study, guard) -> Custody:
    """Check every log of the study (ledgered or lying under logs/) and sort it into accepted,
    refused (with the reason) and skipped (unledgered logs that are not complete)."""
    from inspect_ai.log import read_eval_log

    from prereg.gate import check_log_digests
    from prereg.logs import find_logs

    runs = study.runs_dir
    lpath = ledger_path(runs)
    entries = read_ledger(lpath)
    probs = ledger_problems(entries, lpath)
    if probs:
        raise PreregError("the run ledger is broken; refusing to read any log:\n  " + "\n  ".join(probs))
    latest: dict[str, dict] = {}
    for e in entries:
        latest[e["log"]] = e
    on_disk = {}
    for p in find_logs(runs / "logs"):
        on_disk[_rel(p, runs)] = p
    out = Custody()
    trees: dict[str, str | None] = {}

    def tree(rel: str) -> str | None:
        if rel not in trees:
            p = runs / rel
            trees[rel] = tree_sha256(p) if p.is_dir() else None
        return trees[rel]

    for rel in sorted(set(on_disk) | set(latest)):
        path = runs / rel
        name = str(path)
        e = latest.get(rel)
        if e is None:
            try:
                status = read_eval_log(name, header_only=True).status
            except Exception as exc:  # noqa: BLE001
                if path.suffix == ".json":
                    continue  # some other JSON file next to the logs
                out.refused.append((name, f"unreadable ({type(exc).__name__}) and not in the run ledger"))
                continue
            if status != "success":
                out.skipped.append((name, f"status {status}, not in the run ledger (an incomplete attempt)"))
            else:
                out.refused.append((name, "not in the run ledger: not produced by `leaklab eval` nor registered with "
                                          "`leaklab register-log` (a hand-made, copied or synthetic log)"))
            continue
        if e["study"] != study.name:
            out.refused.append((name, f"ledgered for study {e['study']!r}"))
            continue
        if not path.is_file():
            out.refused.append((name, f"ledgered at {e['time']} but the file is missing"))
            continue
        if file_sha256(path) != e["log_sha256"]:
            out.refused.append((name, f"its bytes changed since it was ledgered at {e['time']} (edited, rewritten or "
                                      "replaced: scores, labels or metadata)"))
            continue
        try:
            header = read_eval_log(name, header_only=True)
        except Exception as exc:  # noqa: BLE001
            out.refused.append((name, f"unreadable ({type(exc).__name__})"))
            continue
        md = _binding(header)
        diff = [k for k in _LABELS if _norm(k, md.get(k)) != _norm(k, e[k])]
        if diff:
            out.refused.append((name, f"labels {diff} differ from its ledger entry"))
            continue
        lp = _label_problems(study, md, md.get("adapter"))
        if lp:
            out.refused.append((name, "; ".join(lp)))
            continue
        if e["arm"] != "base":
            want = _rel(expected_adapter(runs, e["model_label"], e["arm"], e["seed"], e["checkpoint"]), runs)
            if e["adapter"] != want:
                out.refused.append((name, f"ledgered with adapter {e['adapter']}, but its labels name {want}"))
                continue
            if tree(want) != e["adapter_sha256"]:
                out.refused.append((name, f"its adapter {runs / want} changed since the evaluation (retrained or replaced)"))
                continue
            man = _cell_of(runs, e) / "manifest.json"
            if not man.is_file() or file_sha256(man) != e["cell_manifest_sha256"]:
                out.refused.append((name, f"the cell record {man} changed since the evaluation"))
                continue
        bad = check_log_digests(study.folder, [header], guard)
        if bad:
            out.refused.append((name, bad[0][1]))
            continue
        out.accepted.append(name)
    return out


def require_custody(study, guard) -> Custody:
    """The logs analysis may read; raises PreregError naming every refused log and why."""
    c = custody(study, guard)
    if c.refused:
        raise PreregError(f"{len(c.refused)} log(s) of study {study.name!r} are refused (analysis reads only ledgered "
                          f"logs whose bytes, labels and adapters still match, bound to the lock):\n  {c.explain()}")
    return c


def require_bound(study_dir: str | Path, logs: Iterable[Any] = (), guard=None) -> list[str]:
    """Raise PreregError listing every log of the study that analysis must refuse: the custody
    check of `prereg.ledger` over every log under runs/<study>/logs and every ledgered log (not
    only `logs`, so a log in another format or folder cannot slip past), plus any of `logs` that
    is not among them. Returns the accepted log paths: the one file list analysis reads."""
    from leaklab.study import load_study
    from prereg.gate import guard as _guard

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
