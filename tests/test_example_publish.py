"""`leaklab example`: publishing a finished locked run as examples/<study>/ (reports/example.py)."""

import json

import pytest

from leaklab.yamlio import ConfigError
from prereg.locking import read_lock
from reports.example import publish_example, report_images


def test_publish_copies_report_lock_and_measured_time(toy_run, tmp_path, monkeypatch):
    monkeypatch.setenv("LEAKLAB_RUNS", str(toy_run.runs))
    timings = [json.loads(line) for line in (toy_run.runs / "toy" / "timings.jsonl").read_text().splitlines()]
    assert timings[-1]["stages"].keys() >= {"lock", "train", "eval", "analyze", "report"}
    dest = publish_example(toy_run.study, "leaklab run studies/toy", dest_root=tmp_path)
    assert dest == tmp_path / "toy"
    assert read_lock(dest)["digest"] == toy_run.lock["digest"]
    run = (dest / "RUN.md").read_text()
    assert "`leaklab run studies/toy`" in run and toy_run.lock["digest"] in run and "CPU cores" in run
    assert "- load: not stated by the publisher" in run  # an unstated load is never passed off as quiet
    assert f"{int(timings[-1]['total_s'] // 60)} min" in run or f"{int(round(timings[-1]['total_s']))} s" in run
    assert (dest / "report" / "REPORT.md").read_text() == (toy_run.runs / "toy" / "report" / "REPORT.md").read_text()
    assert (dest / "report" / "PLAIN_SUMMARY.md").is_file()
    for rel in report_images(dest / "report" / "REPORT.md"):
        assert (dest / "report" / rel).is_file(), rel  # every image the copied report shows resolves
    busy = publish_example(toy_run.study, "leaklab run studies/toy", dest_root=tmp_path / "busy",
                           load="the eval stage ran beside a test suite")
    assert "- load: the eval stage ran beside a test suite" in (busy / "RUN.md").read_text()
    # publishing again replaces the folder whole (no file of an older run survives)
    (dest / "stale.png").write_text("old")
    publish_example(toy_run.study, "leaklab run studies/toy", dest_root=tmp_path)
    assert not (dest / "stale.png").exists()


def test_publish_refuses_a_run_without_a_complete_locked_timing(toy_run, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    (runs / "toy").mkdir(parents=True)
    monkeypatch.setenv("LEAKLAB_RUNS", str(runs))
    with pytest.raises(ConfigError, match="REPORT.md: missing"):
        publish_example(toy_run.study, "x", dest_root=tmp_path / "ex")
