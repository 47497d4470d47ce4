"""Lock, verify and amend a study's preregistration.

The lock digest is a canonical hash of named components:
- `prereg.yaml`, `study.yaml`: their parsed data (so comments, key order and formatting do
  not count; a changed value does);
- `file:<path as written>`: the sha256 of every file the study uses (eval item files and any
  other path in task args, corpus files, rephrasing pools, judge prompts, the power pilot,
  paths inside builder and interp args);
- `builder:<arm>`: a corpus builder's name, args and the
  builder's template fingerprint (training registers it in `leaklab.fingerprints`; an unregistered builder is an error);
- `measure:<task>`: what defines the measures of each eval task (the module-level constants -
  prompt templates, rule versions, word lists, patterns - of the task's module and the project
  modules it imports; `prereg.taskinfo.measure_definition`);
- `leaklab_version`.
`prereg.lock.json` holds the current digest and components, the UTC time, git commit and
dirty flags, the chain head and length, and a self-hash over all of that. The chain itself is
`prereg.deviations.jsonl` (see prereg.deviations).
"""

from __future__ import annotations

import datetime as _dt
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leaklab.yamlio import ConfigError, load_yaml, read_text
from prereg.canonical import CanonicalError, digest, file_sha256
from prereg.deviations import (
    CHAIN_NAME,
    append_entry,
    chain_problems,
    diff_components,
    lock_digest_of,
    make_entry,
    read_chain,
)
from prereg.schema import PreregError, load_prereg
from leaklab.study import study_paths

LOCK_NAME = "prereg.lock.json"
LOCK_SCHEMA = "leaklab.prereg.lock/1"
_LOCK_FIELDS = {"schema", "study", "digest", "components", "sources", "locked_at", "git", "leaklab_version",
                "chain_head", "chain_length", "self_sha256"}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def leaklab_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("leaklab")
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------- components


def _builder_fingerprint(study, name: str, args: dict, where: str) -> Any:
    """The builder's template fingerprint (template version + its data files' sha256), with
    path arguments resolved against the study folder exactly as the build resolves them."""
    from leaklab.fingerprints import builder_fingerprint

    try:
        return builder_fingerprint(name, args, resolve=study.resolve)
    except (ConfigError, OSError, ValueError, TypeError, KeyError) as exc:  # unknown builder, bad args, unreadable file
        raise PreregError(f"{where}: corpus builder {name!r} cannot be fingerprinted: {exc}") from None


def _display(path: Path) -> str:
    """Repo-relative path for messages and the lock's `sources` (absolute outside the repo)."""
    from leaklab.study import REPO_ROOT

    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _sections(name: str, data: Any) -> dict[str, Any]:
    """One level of sub-components under each top-level key, so a diff names the exact key that
    changed: `prereg.yaml:hypotheses.H1`, `prereg.yaml:frequentist.alpha`, `study.yaml:eval[3]`.
    List items with an `id` (or `name`) are keyed by it, so reordering them changes only the
    whole-file component."""
    out: dict[str, Any] = {}
    if not isinstance(data, dict):
        return out
    for k, v in data.items():
        if isinstance(v, dict):
            if not v:
                out[f"{name}:{k}"] = v
            for sk, sv in v.items():
                out[f"{name}:{k}.{sk}"] = sv
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            keys = [x.get("id", x.get("name")) if isinstance(x, dict) else None for x in v]
            named = all(isinstance(x, str) for x in keys) and len(set(keys)) == len(keys)
            for i, x in enumerate(v):
                out[f"{name}:{k}.{keys[i]}" if named else f"{name}:{k}[{i}]"] = x
        else:
            out[f"{name}:{k}"] = v
    return out


@dataclass
class Components:
    digests: dict[str, str]  # component name -> hex digest
    sources: dict[str, str]  # component name -> where it comes from (file path or key), for messages

    @property
    def digest(self) -> str:
        return lock_digest_of(self.digests)


def compute_components(study_dir: str | Path) -> Components:
    """Hash everything the lock binds; errors name the file and key that refers to a missing file."""
    from leaklab.study import load_study

    study = load_study(study_dir)
    prereg = load_prereg(study.folder, study=study)
    digests: dict[str, str] = {}
    sources: dict[str, str] = {}
    for name in ("prereg.yaml", "study.yaml"):
        p = study.folder / name
        data = load_yaml(p)
        try:
            digests[name] = digest(name, data)
            for sub, value in _sections(name, data).items():
                digests[sub] = digest(f"{name}-section", {"key": sub, "value": value})
                sources[sub] = f"{_display(p)} key {sub.split(':', 1)[1]}"
        except CanonicalError as exc:
            raise PreregError(f"{p}: cannot hash: {exc}") from None
        sources[name] = _display(p)
    digests["leaklab_version"] = digest("leaklab-version", leaklab_version())
    sources["leaklab_version"] = leaklab_version()

    spec = study.spec
    # (path as written, where it is referenced): corpora, builder args, rephrasings, eval and interp args
    refs: list[tuple[str, str]] = [(rel, f"study.yaml {where}") for rel, where in study_paths(spec)]
    for arm_name, arm in spec.arms.items():
        if arm.corpus and arm.corpus.builder:
            fp = _builder_fingerprint(study, arm.corpus.builder, arm.corpus.builder_args, f"{study.study_yaml}: arms.{arm_name}.corpus")
            digests[f"builder:{arm_name}"] = digest(
                "corpus-builder", {"builder": arm.corpus.builder, "args": arm.corpus.builder_args, "fingerprint": fp}
            )
            sources[f"builder:{arm_name}"] = f"{arm.corpus.builder} (template fingerprint bound)"
    from prereg.taskinfo import measure_definition, task_info

    for i, e in enumerate(spec.eval):
        info = task_info(study, e)
        # files the task reads by default (its own defaults and those of the scorers it calls)
        refs += [(rel, f"study.yaml eval[{i}] ({where})") for rel, where in info.files()]
        # what defines the measure: prompt templates, rule versions, word lists of the task's modules
        name = f"measure:{e.task}"
        if name not in digests:
            defn = measure_definition(study, e)
            digests[name] = digest("measure-definition", defn)
            sources[name] = f"constants of {', '.join(sorted(defn['modules'])) or e.task}"
    for j, judge in enumerate(prereg.judges()):
        for k, p in enumerate(judge.prompts):
            refs.append((p, f"prereg.yaml judge prompts[{k}] (judge {j})"))
    if prereg.power and prereg.power.pilot:
        refs.append((prereg.power.pilot, "prereg.yaml power.pilot"))

    seen: set[str] = set()
    for rel, where in refs:
        if rel in seen:
            continue
        seen.add(rel)
        path = study.resolve(rel)
        if not path.is_file():
            raise PreregError(f"{where}: bound file {rel!r} does not exist (resolved to {path})")
        name = f"file:{rel}"
        digests[name] = file_sha256(path)
        sources[name] = _display(path)
    return Components(digests, sources)


# ---------------------------------------------------------------- git


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout if r.returncode == 0 else None


def git_info(folder: Path, paths: list[str]) -> dict | None:
    """HEAD commit, whether the work tree is dirty, and whether any bound file is (None outside git)."""
    commit = _git(["rev-parse", "HEAD"], folder)
    if commit is None:
        return None
    status = _git(["status", "--porcelain"], folder) or ""
    bound = _git(["status", "--porcelain", "--", *paths], folder) if paths else ""
    # bound_files_dirty: None when git cannot say (a bound file outside the repository)
    return {"commit": commit.strip(), "dirty": bool(status.strip()),
            "bound_files_dirty": None if bound is None else bool(bound.strip())}


# ---------------------------------------------------------------- lock file


def _self_hash(lock: dict) -> str:
    return digest("lock-file", {k: v for k, v in lock.items() if k != "self_sha256"})


def read_lock(study_dir: str | Path) -> dict:
    """Read and self-check `prereg.lock.json` (missing or edited = PreregError)."""
    path = Path(study_dir) / LOCK_NAME
    if not path.exists():
        raise PreregError(f"{path}: no lock: this study's preregistration is not locked "
                          f"(run `leaklab prereg lock {study_dir}`, or pass --exploratory)")
    try:
        lock = json.loads(read_text(path, "lock file"))
    except ConfigError as exc:
        raise PreregError(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise PreregError(f"{path}:{exc.lineno}: lock file is not valid JSON ({exc.msg})") from None
    if not isinstance(lock, dict) or set(lock) != _LOCK_FIELDS:
        got = sorted(lock) if isinstance(lock, dict) else type(lock).__name__
        raise PreregError(f"{path}: lock file must have exactly the fields {sorted(_LOCK_FIELDS)}, got {got}")
    if lock["schema"] != LOCK_SCHEMA:
        raise PreregError(f"{path}: unknown lock schema {lock['schema']!r} (expected {LOCK_SCHEMA})")
    if lock["self_sha256"] != _self_hash(lock):
        raise PreregError(f"{path}: lock file was edited after it was written (self_sha256 mismatch)")
    if lock["digest"] != lock_digest_of(lock["components"]):
        raise PreregError(f"{path}: lock digest does not match its components (lock file forged)")
    return lock


def _write_lock(folder: Path, study_name: str, comps: Components, entry: dict, chain_len: int) -> dict:
    from leaklab.runstore import atomic_write_text

    lock = {
        "schema": LOCK_SCHEMA,
        "study": study_name,
        "digest": comps.digest,
        "components": comps.digests,
        "sources": comps.sources,
        "locked_at": entry["time"],
        "git": entry["git"],
        "leaklab_version": leaklab_version(),
        "chain_head": entry["entry_hash"],
        "chain_length": chain_len,
    }
    lock["self_sha256"] = _self_hash(lock)
    atomic_write_text(folder / LOCK_NAME, json.dumps(lock, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return lock


def _bound_relpaths(folder: Path, comps: Components) -> list[str]:
    from leaklab.study import REPO_ROOT

    paths = [str(folder / "prereg.yaml"), str(folder / "study.yaml")]
    paths += [s if Path(s).is_absolute() else str(REPO_ROOT / s) for n, s in comps.sources.items() if n.startswith("file:")]
    return paths


def lock(study_dir: str | Path, reason: str = "initial lock", existing_data: bool = False) -> dict:
    """Lock a study's preregistration. Refuses if it is already locked (use amend) or if target
    outcome logs already exist for it (a prereg written after outcomes exist is not one), unless
    `existing_data` is set: then prereg.yaml's data_status must admit it (not
    prior_to_creation) and the chain's first entry records the logs that existed."""
    from leaklab.study import load_study
    from prereg.logs import outcome_logs

    study = load_study(study_dir)
    folder = study.folder
    if (folder / LOCK_NAME).exists():
        raise PreregError(f"{folder / LOCK_NAME}: already locked; change it with `leaklab prereg amend {study_dir} --reason ...`")
    if (folder / CHAIN_NAME).exists():
        raise PreregError(f"{folder / CHAIN_NAME}: a deviations chain exists but the lock file is missing; restore "
                          f"{LOCK_NAME} from git (a deleted lock cannot be re-created over an existing chain)")
    comps = compute_components(folder)  # validates prereg.yaml first
    existing = outcome_logs(study)
    if existing:
        listing = "\n  ".join(f"{p}: {why}" for p, why in existing[:10])
        if not existing_data:
            raise PreregError(
                f"{study.runs_dir / 'logs'}: target outcome data already exist for study {study.name!r}; refusing to "
                f"lock a preregistration after outcomes were produced ({len(existing)} log(s)):\n  {listing}\n"
                "(if this is a registration of existing data, set data_status accordingly and pass --existing-data)"
            )
        status = load_prereg(folder, study=study).data_status
        if status == "prior_to_creation":
            raise PreregError(f"{folder / 'prereg.yaml'}: data_status is 'prior_to_creation' but {len(existing)} target "
                              f"outcome log(s) exist:\n  {listing}\nstate the true data_status to lock with --existing-data")
    entry = make_entry(None, comps.digests, reason, _now(), [f"{p}: {why}" for p, why in existing],
                       git_info(folder, _bound_relpaths(folder, comps)))
    append_entry(folder / CHAIN_NAME, entry)
    return _write_lock(folder, study.name, comps, entry, 1)


def chain_against_lock(chain: list[dict], lk: dict, folder: Path) -> list[str]:
    """Every problem of the deviations chain, checked on its own and against the lock. Always
    runs: an emptied or truncated chain fails against the length and head the lock records."""
    path = folder / CHAIN_NAME
    problems = list(chain_problems(chain, path))  # an empty chain is itself a problem
    if len(chain) != lk["chain_length"]:
        problems.append(f"{path}: has {len(chain)} entries, the lock records {lk['chain_length']} "
                        "(chain truncated, emptied or extended outside `prereg amend`)")
    if not chain or chain[-1]["entry_hash"] != lk["chain_head"]:
        problems.append(f"{path}: last entry is not the head recorded in the lock")
    if not chain or chain[-1]["digest"] != lk["digest"]:
        problems.append(f"{folder / LOCK_NAME}: lock digest is not the chain's latest digest")
    return problems


@dataclass
class VerifyResult:
    ok: bool
    digest: str | None  # the locked digest (None when the lock is unreadable)
    current: str | None  # the digest recomputed from the files now
    problems: list[str] = field(default_factory=list)  # integrity problems (lock / chain)
    diff: list[dict] = field(default_factory=list)  # component changes since the lock
    sources: dict[str, str] = field(default_factory=dict)
    chain: list[dict] = field(default_factory=list)

    def explain(self) -> str:
        lines = list(self.problems)
        for d in self.diff:
            src = self.sources.get(d["component"], "")
            lines.append(f"{d['change']}: {d['component']}" + (f" ({src})" if src and src != d["component"] else "")
                         + f"  locked {(d['old'] or '-')[:16]}  now {(d['new'] or '-')[:16]}")
        return "\n".join(lines)


def verify(study_dir: str | Path) -> VerifyResult:
    """Recompute every component and check the lock file and the chain; never raises for a
    mismatch (the result says what is wrong), only for unreadable inputs."""
    folder = Path(study_dir)
    try:
        lk = read_lock(folder)
    except PreregError as exc:
        return VerifyResult(False, None, None, [str(exc)])
    problems: list[str] = []
    try:
        chain = read_chain(folder / CHAIN_NAME)
    except PreregError as exc:
        chain = []
        problems.append(str(exc))
    else:
        problems += chain_against_lock(chain, lk, folder)
    try:
        comps = compute_components(folder)
    except ConfigError as exc:
        return VerifyResult(False, lk["digest"], None, problems + [f"cannot recompute the lock: {exc}"], chain=chain)
    diff = diff_components(lk["components"], comps.digests)
    sources = {**lk.get("sources", {}), **comps.sources}
    ok = not problems and not diff and comps.digest == lk["digest"]
    return VerifyResult(ok, lk["digest"], comps.digest, problems, diff, sources, chain)


def amend(study_dir: str | Path, reason: str) -> dict:
    """Re-lock after a change: append a chain entry (what changed, why, when, and whether target
    outcome data existed at this moment, detected from the run folder)."""
    from leaklab.study import load_study
    from prereg.logs import outcome_logs

    if not reason or not reason.strip():
        raise PreregError("an amendment needs a non-empty --reason")
    study = load_study(study_dir)
    folder = study.folder
    lk = read_lock(folder)
    chain = read_chain(folder / CHAIN_NAME)
    probs = chain_against_lock(chain, lk, folder)
    if probs:
        raise PreregError("refusing to amend a broken chain (restore the lock and chain from git):\n" + "\n".join(probs))
    comps = compute_components(folder)
    if comps.digest == lk["digest"]:
        raise PreregError(f"{folder}: nothing changed since the lock ({lk['digest']}); no amendment needed")
    existing = [f"{p}: {why}" for p, why in outcome_logs(study)]
    entry = make_entry(chain[-1], comps.digests, reason.strip(), _now(), existing,
                       git_info(folder, _bound_relpaths(folder, comps)))
    append_entry(folder / CHAIN_NAME, entry)
    return _write_lock(folder, study.name, comps, entry, len(chain) + 1)
