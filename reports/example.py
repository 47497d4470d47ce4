"""`leaklab example STUDY`: publish a finished, locked run as the committed example examples/<study>/.

Copies report/ (REPORT.md, PLAIN_SUMMARY.md, figures/) and the analysis figures it shows from
runs/<study>/ in the run folder's layout, the lock the run was analysed under (prereg.lock.json),
and writes RUN.md: the command, the wall time per stage as the
run itself measured it (runs/<study>/timings.jsonl), the machine, the lock digest and the commit.
Refused unless the lock verifies, the results were analysed under it, and the last timings record
is a complete, non-exploratory run. tests/test_examples.py then keeps the example honest: it fails
once the study folder no longer hashes to the example's lock.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import tempfile
from pathlib import Path

from leaklab.io import read_jsonl
from leaklab.study import REPO_ROOT, load_study
from leaklab.yamlio import ConfigError
from prereg.locking import LOCK_NAME, git_info, leaklab_version

STAGES_FULL = ("lock", "data", "train", "eval", "analyze", "interp", "report")


def _minutes(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def machine_description() -> str:
    """CPU model, cores, memory and torch threads of this machine, in one line."""
    cpu = platform.processor() or platform.machine()
    mem = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f", {int(line.split()[1]) / 2**20:.0f} GiB memory"
                break
    except OSError:
        pass
    import torch

    return (f"{cpu}, {os.cpu_count()} CPU cores{mem}, no GPU used; {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads)")


def _git_commit() -> str:
    info = git_info(REPO_ROOT, [])
    if info is None:
        return "unknown (not a git checkout)"
    return info["commit"] + (" (with uncommitted changes)" if info["dirty"] else "")


def report_images(report_md: Path) -> list[str]:
    """The relative paths of every image REPORT.md shows."""
    return [m for m in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", report_md.read_text()) if "://" not in m]


def publish_example(study_dir: str | Path, command: str, dest_root: Path | None = None, load: str = "") -> Path:
    """Copy the study's locked report into examples/<study>/report/ (and the analysis figures it shows)
    with the lock and RUN.md; returns the folder. `load`: what else ran on the machine during the
    run (its wall time is only a quiet-machine number when nothing did)."""
    import prereg
    from leaklab.runstore import atomic_write_text

    study = load_study(study_dir)
    guard = prereg.guard(study.folder)  # raises unless the lock verifies
    report_dir = study.runs_dir / "report"
    results_path = study.runs_dir / "analysis" / "results.json"
    for p in (report_dir / "REPORT.md", report_dir / "PLAIN_SUMMARY.md", results_path):
        if not p.is_file():
            raise ConfigError(f"{p}: missing; run `leaklab run {study_dir}` to the end first")
    results = json.loads(results_path.read_text())
    if results.get("lock_digest") != guard.digest or results.get("exploratory"):
        raise ConfigError(f"{results_path}: analysed under lock {results.get('lock_digest')} "
                          f"(exploratory={results.get('exploratory')}), not the verified lock {guard.digest}")
    timings_path = study.runs_dir / "timings.jsonl"
    runs = read_jsonl(timings_path, "timings file") if timings_path.is_file() else []
    full = [r for r in runs if not r.get("exploratory") and set(STAGES_FULL) <= set(r.get("stages", {}))]
    if not full:
        raise ConfigError(f"{timings_path}: no complete, locked `leaklab run`/`leaklab demo` of every stage is recorded; "
                          "the example's wall time must come from one")
    t = full[-1]
    stages = ", ".join(f"{k} {_minutes(t['stages'][k])}" for k in STAGES_FULL if k in t["stages"])
    run_md = f"""# How this example was produced

- command: `{command}`
- wall time: {_minutes(t['total_s'])} in all ({stages}); measured by the run itself (`runs/{study.name}/timings.jsonl`, finished {t['finished_utc']}), set-up excluded
- machine: {machine_description()}
- load: {load.strip() or "not stated by the publisher (`leaklab example --load`); the wall time is a quiet-machine number only if nothing else ran"}
- lock digest: {guard.digest}
- leaklab {leaklab_version()}; published (`leaklab example`) from commit {_git_commit()}

`report/` (REPORT.md, PLAIN_SUMMARY.md, figures/) and the files it shows from `analysis/` are copied
unchanged from `runs/{study.name}/`; `prereg.lock.json` is the lock they were analysed under. `tests/test_examples.py` fails as soon as
`studies/{study.name}/` no longer hashes to this lock (re-run the study and `leaklab example` it).
"""
    root = dest_root or (REPO_ROOT / "examples")
    root.mkdir(parents=True, exist_ok=True)
    dest = root / study.name
    tmp = Path(tempfile.mkdtemp(prefix=f".{study.name}-", dir=root))
    try:
        # the run folder's own layout (report/, analysis/), so every relative link of REPORT.md
        # resolves in the copy without rewriting a byte of it
        (tmp / "report").mkdir()
        for name in ("REPORT.md", "PLAIN_SUMMARY.md"):
            shutil.copy2(report_dir / name, tmp / "report" / name)
        if (report_dir / "figures").is_dir():
            shutil.copytree(report_dir / "figures", tmp / "report" / "figures")
        for rel in report_images(report_dir / "REPORT.md") + ["../analysis/results.json"]:
            src = (report_dir / rel).resolve()
            if src.is_file() and src.is_relative_to(study.runs_dir.resolve()) and not (tmp / "report" / rel).exists():
                dst = tmp / src.relative_to(study.runs_dir.resolve())
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        shutil.copy2(study.folder / LOCK_NAME, tmp / LOCK_NAME)
        atomic_write_text(tmp / "RUN.md", run_md)
        if dest.exists():  # replaced whole, so no stale figure of an older run survives
            old = dest.with_name(f".{study.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old)
        else:
            tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
