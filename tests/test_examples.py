"""The committed example reports (examples/<study>/) cannot silently go stale.

Each example folder holds what one real run produced (report/REPORT.md, PLAIN_SUMMARY.md, figures/
and the analysis figures the report shows, in the run folder's layout)
together with the lock it ran under (prereg.lock.json, copied from the study folder) and
RUN.md (the exact command, wall time, machine). This test recomputes the lock components of
the study folder as committed and fails, naming the components, when any of them differs from
the example's lock: a changed prereg, design, data file, builder template or measure
definition means the example was not produced by the study as it now stands (re-run it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from leaklab.study import REPO_ROOT
from prereg.locking import compute_components, read_lock
from reports.example import report_images

EXAMPLES = REPO_ROOT / "examples"
FOLDERS = sorted(p for p in EXAMPLES.iterdir() if p.is_dir()) if EXAMPLES.is_dir() else []


def test_examples_exist():
    assert FOLDERS, "examples/ holds no example report"


@pytest.mark.parametrize("folder", FOLDERS, ids=[p.name for p in FOLDERS])
def test_example_matches_the_study_as_committed(folder: Path):
    study_dir = REPO_ROOT / "studies" / folder.name
    assert (study_dir / "study.yaml").is_file(), f"{folder}: no study folder {study_dir}"
    lock = read_lock(folder)  # self-checked: an edited lock copy fails here
    now = compute_components(study_dir)
    changed = sorted(k for k in set(lock["components"]) | set(now.digests)
                     if lock["components"].get(k) != now.digests.get(k))
    assert not changed, (f"{folder.name}: the example was rendered under lock {lock['digest'][:16]}, but these lock "
                         f"components of {study_dir} have changed since: {changed}; re-run the study and "
                         f"refresh {folder}")
    assert now.digest == lock["digest"]


@pytest.mark.parametrize("folder", FOLDERS, ids=[p.name for p in FOLDERS])
def test_example_report_is_complete(folder: Path):
    lock = read_lock(folder)
    report = (folder / "report" / "REPORT.md").read_text()
    assert lock["digest"][:16] in report, f"{folder}/REPORT.md does not name its lock digest {lock['digest'][:16]}"
    assert not any("EXPLORATORY" in ln for ln in report.splitlines()[:12]), f"{folder}/REPORT.md is an exploratory report"
    assert (folder / "report" / "PLAIN_SUMMARY.md").is_file()
    run = (folder / "RUN.md").read_text()
    for needle in ("command", "wall time", "machine", lock["digest"]):
        assert needle in run, f"{folder}/RUN.md does not state its {needle}"
    # every figure the report shows was committed beside it
    for rel in report_images(folder / "report" / "REPORT.md"):
        assert (folder / "report" / rel).is_file(), f"{folder}/report/REPORT.md shows {rel}, which is not committed"


def test_readme_links_every_example():
    readme = (REPO_ROOT / "README.md").read_text()
    for folder in FOLDERS:
        assert f"examples/{folder.name}/report/REPORT.md" in readme, f"README.md does not link examples/{folder.name}"
