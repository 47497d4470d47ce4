"""Test fixture: give synthetic logs the custody `leaklab eval` gives real ones.

Analysis reads only ledgered logs whose adapters and cell records still match (prereg.ledger).
Synthetic logs (analysis.frame.write_synthetic_logs) come from no trained model, so a test that
analyses them first calls `ledger_synthetic`: a stand-in adapter folder and cell manifest per
trained (model, arm, seed), the adapter path stamped into each log's metadata, and a ledger
entry per log. This is exactly what someone who controls the whole folder can do (README,
reliability: unkeyed hashes), which is why it lives in the tests and not in the library.
"""

from __future__ import annotations

import json
from pathlib import Path


def ledger_synthetic(study_dir, paths=None) -> list[dict]:
    from inspect_ai.log import read_eval_log, write_eval_log

    from leaklab.runstore import train_dir
    from leaklab.study import load_study
    from prereg.ledger import expected_adapter, record_log
    from prereg.logs import find_logs

    study = load_study(study_dir)
    paths = [Path(p) for p in paths] if paths is not None else find_logs(study.runs_dir / "logs")
    out = []
    for p in paths:
        log = read_eval_log(str(p))
        md = log.eval.metadata["leaklab"]
        if md.get("arm") != "base":
            ad = expected_adapter(study.runs_dir, md["model_label"], md["arm"], md["seed"], md.get("checkpoint") or "final")
            if not ad.exists():
                ad.mkdir(parents=True)
                (ad / "adapter_config.json").write_text(json.dumps({"synthetic": True}))
            man = train_dir(study.runs_dir, md["model_label"], md["arm"], int(md["seed"])) / "manifest.json"
            if not man.exists():
                man.write_text(json.dumps({"synthetic": True}))
            if md.get("adapter") != str(ad):
                md["adapter"] = str(ad)
                write_eval_log(log, str(p))
        out.append(record_log(study, p, via="synthetic (tests)"))
    return out
