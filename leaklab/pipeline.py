"""The main job: `leaklab run STUDY` runs a whole preregistered study, resumably.

Stages, in order, each reading only the previous stage's artifacts:
lock check -> corpora (build + validate) -> training matrix -> eval (source items first, then
the rest, through prereg.guard) -> analysis -> interp (if the study asks) -> report.
Every stage skips what already exists, so a second run does only what is missing.
Also `leaklab eval`, `leaklab status` and `leaklab demo`.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import typer

from leaklab.study import REPO_ROOT, LoadedStudy, load_study

STAGES = ["lock", "data", "train", "eval", "analyze", "interp", "report"]


@dataclass
class StageResult:
    stage: str
    seconds: float
    detail: str


class Console:
    """Stage/cell progress lines with elapsed time and a naive ETA per stage."""

    def __init__(self):
        from rich.console import Console as RichConsole

        self.rich = RichConsole(stderr=True)
        self.t0 = time.monotonic()

    def stage(self, name: str, i: int, n: int):
        self.rich.rule(f"[bold]stage {i}/{n}: {name}[/bold]  (elapsed {self.elapsed()})")

    def info(self, msg: str):
        self.rich.print(f"  [{self.elapsed()}] {msg}")

    def elapsed(self) -> str:
        s = int(time.monotonic() - self.t0)
        return f"{s // 60:d}:{s % 60:02d}"


def _stage_lock(study: LoadedStudy, exploratory: bool, con: Console) -> str:
    import prereg

    guard = prereg.guard(study.folder, exploratory=exploratory)
    if guard.exploratory:
        return "EXPLORATORY run (no verified lock): every output is stamped EXPLORATORY"
    return f"lock verified: {guard.digest}"


def _stage_data(study: LoadedStudy, exploratory: bool, con: Console) -> str:
    from training.matrix import prepare_data
    from training.validate import check_report, report_path

    report = prepare_data(study, con.rich)
    if not report["passed"]:
        check_report(report_path(study))  # raises, naming the report and the failed gates
    return f"{len(report['corpora'])} corpora built and validated; report {report_path(study)}"


def _stage_train(study: LoadedStudy, exploratory: bool, con: Console, executor=None) -> str:
    from leaklab.evaluate import missing_cells
    from leaklab.executors import LocalExecutor, TrainUnit, run_train_unit

    executor = executor or LocalExecutor()
    todo = missing_cells(study)
    if isinstance(executor, LocalExecutor):
        from training.matrix import train_study

        train_study(study, console=con.rich, exploratory=exploratory)  # progress bars with ETA per cell
    else:
        units = [TrainUnit(str(study.folder), *label.split("/")[:2], int(label.split("/seed")[1]), exploratory=exploratory)
                 for label in todo]
        executor.map(run_train_unit, units, progress=con.info)
    return f"{len(todo)} cells trained, {len(study.cells()) - len(todo)} already done ({executor.name} executor)"


def _stage_eval(study: LoadedStudy, exploratory: bool, con: Console, executor=None) -> str:
    from leaklab.evaluate import checkpoints, run_eval
    from leaklab.executors import EvalUnit, LocalExecutor, run_eval_unit

    if executor is None or isinstance(executor, LocalExecutor):
        dirs = run_eval(study, exploratory=exploratory, progress=con.info)
    else:
        units = [EvalUnit(str(study.folder), c.label, exploratory) for c in checkpoints(study)]
        dirs = executor.map(run_eval_unit, units, progress=con.info)
    return f"{len(dirs)} checkpoints evaluated; logs under {study.runs_dir / 'logs'}"


def _stage_analyze(study: LoadedStudy, exploratory: bool, con: Console) -> str:
    from analysis.cli import analyze_study

    analyze_study(study.folder, exploratory=exploratory, log=con.info)
    return f"results in {study.runs_dir / 'analysis' / 'results.json'}"


def _stage_interp(study: LoadedStudy, exploratory: bool, con: Console) -> str:
    if not study.spec.interp:
        return "skipped (the study asks for no interp analyses)"
    from analysis.interp_cli import run_interp

    done = run_interp(study.folder, what=list(study.spec.interp), exploratory=exploratory)
    return f"interp ({', '.join(done)}) in {study.runs_dir / 'interp'}"


def _stage_report(study: LoadedStudy, exploratory: bool, con: Console) -> str:
    from reports.cli import render_study_report

    out = render_study_report(study.folder, exploratory=exploratory)
    return f"report at {out}"


STAGE_FUNCS: dict[str, Callable[[LoadedStudy, bool, Console], str]] = {
    "lock": _stage_lock,
    "data": _stage_data,
    "train": _stage_train,
    "eval": _stage_eval,
    "analyze": _stage_analyze,
    "interp": _stage_interp,
    "report": _stage_report,
}


def run_study(
    study_path: str | Path, exploratory: bool = False, stages: list[str] | None = None, executor=None
) -> list[StageResult]:
    from leaklab.runstore import run_lock

    study = load_study(study_path)
    with run_lock(study.runs_dir, f"leaklab run {study_path}"):  # one run at a time per study
        return _run_stages(study, exploratory, stages, executor)


def _run_stages(study: LoadedStudy, exploratory: bool, stages: list[str] | None, executor) -> list[StageResult]:
    con = Console()
    todo = [s for s in STAGES if stages is None or s in stages]
    results = []
    for i, name in enumerate(todo, 1):
        con.stage(name, i, len(todo))
        t = time.monotonic()
        if name in ("train", "eval"):
            detail = STAGE_FUNCS[name](study, exploratory, con, executor=executor)
        else:
            detail = STAGE_FUNCS[name](study, exploratory, con)
        results.append(StageResult(name, time.monotonic() - t, detail))
        con.info(detail)
    con.rich.rule("[bold]summary[/bold]")
    for r in results:
        con.rich.print(f"  {r.stage:<8} {r.seconds:7.1f} s  {r.detail}")
    record_timings(study, results, exploratory)
    report = study.runs_dir / "report" / "REPORT.md"
    if report.exists():
        con.rich.print(f"\n[bold]REPORT:[/bold] {report}")
    return results


TIMINGS = "timings.jsonl"


def record_timings(study: LoadedStudy, results: list[StageResult], exploratory: bool) -> None:
    """Append this run's stage times to runs/<study>/timings.jsonl (what `leaklab example`
    quotes as the wall time: measured by the run itself, never typed in by hand)."""
    from leaklab.runstore import append_jsonl

    append_jsonl(study.runs_dir / TIMINGS, {
        "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "argv": sys.argv[1:],
        "exploratory": exploratory,
        "stages": {r.stage: round(r.seconds, 1) for r in results},
        "total_s": round(sum(r.seconds for r in results), 1),
    })


def study_status(study_path: str | Path) -> dict:
    """What exists and what is missing for a study, stage by stage."""
    from leaklab.evaluate import eval_status, missing_cells

    study = load_study(study_path)
    status: dict = {"study": study.name, "runs": str(study.runs_dir)}
    try:
        import prereg

        guard = prereg.guard(study.folder)
        status["lock"] = f"verified {guard.digest}"
    except Exception as exc:  # noqa: BLE001 - status reports any lock problem as text
        status["lock"] = f"NOT VERIFIED: {exc}"
    data_dir = study.runs_dir / "data"
    status["corpora"] = sorted(p.name for p in data_dir.glob("*.jsonl")) if data_dir.exists() else []
    cells = study.cells()
    missing = missing_cells(study)
    status["train"] = f"{len(cells) - len(missing)}/{len(cells)} cells done"
    status["train_missing"] = missing
    status["eval"] = eval_status(study)
    status["analysis"] = (study.runs_dir / "analysis" / "results.json").exists()
    status["interp"] = (study.runs_dir / "interp" / "results.json").exists()
    status["report"] = (study.runs_dir / "report" / "REPORT.md").exists()
    return status


def fresh_runs_folder(study: LoadedStudy) -> Path | None:
    """Move an existing run folder aside (never delete: run folders are append-only)."""
    if not study.runs_dir.exists() or not any(study.runs_dir.iterdir()):
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    dest = study.runs_dir.with_name(f"{study.runs_dir.name}.previous-{stamp}")
    shutil.move(str(study.runs_dir), dest)
    return dest


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        study: Path = typer.Argument(..., help="study folder, e.g. studies/demo"),
        exploratory: bool = typer.Option(False, "--exploratory", help="run without a verified lock; outputs stamped EXPLORATORY"),
        stage: list[str] = typer.Option(None, "--stage", help=f"run only these stages ({', '.join(STAGES)})"),
        executor: str = typer.Option("local", "--executor", help="local (sequential) or ray"),
        address: str = typer.Option(None, "--address", help="Ray cluster address (default: start a local cluster)"),
        gpus_per_cell: float = typer.Option(0.0, "--gpus-per-cell", help="Ray resource request per cell"),
    ):
        """Run a whole study: lock check, data, training, eval, analysis, interp, report (resumable)."""
        from leaklab.executors import make_executor

        bad = [s for s in stage or [] if s not in STAGES]
        if bad:
            raise typer.BadParameter(f"unknown stage(s) {bad}; choose from {STAGES}")
        kwargs = {"gpus_per_unit": gpus_per_cell} if executor == "ray" else {}
        ex = make_executor(executor, address=address, **kwargs)
        try:
            run_study(study, exploratory=exploratory, stages=stage or None, executor=ex)
        finally:
            if hasattr(ex, "shutdown"):
                ex.shutdown()

    @app.command("eval")
    def eval_cmd(
        study: Path = typer.Argument(..., help="study folder"),
        exploratory: bool = typer.Option(False, "--exploratory"),
        item_set: list[str] = typer.Option(None, "--item-set", help="only these item sets"),
        steps: bool = typer.Option(False, "--steps", help="also evaluate intermediate checkpoints"),
        limit: int = typer.Option(None, "--limit", help="samples per task (smoke tests only)"),
        executor: str = typer.Option("local", "--executor", help="local (sequential) or ray (one task per checkpoint)"),
        address: str = typer.Option(None, "--address", help="Ray cluster address (default: start a local cluster)"),
    ):
        """Evaluate every checkpoint (and the base model) on the study's eval plan, as resumable Inspect eval sets."""
        from leaklab.runstore import run_lock

        con = Console()
        loaded = load_study(study)
        with run_lock(loaded.runs_dir, f"leaklab eval {study}"):
            _eval_locked(loaded, exploratory, item_set, steps, limit, executor, address, con)

    def _eval_locked(loaded, exploratory, item_set, steps, limit, executor, address, con):
        from leaklab.evaluate import run_eval

        if executor == "ray":
            from leaklab.executors import RayExecutor

            ex = RayExecutor(address=address)
            try:
                dirs = _stage_eval(loaded, exploratory, con, executor=ex)
            finally:
                ex.shutdown()
            con.info(dirs)
            return
        dirs = run_eval(loaded, exploratory=exploratory, item_sets=item_set or None, include_steps=steps, limit=limit, progress=con.info)
        con.info(f"{len(dirs)} checkpoints evaluated")

    @app.command("register-log")
    def register_log_cmd(
        study: Path = typer.Argument(..., help="study folder"),
        logs: list[Path] = typer.Argument(..., help="Inspect log(s) made by plain `inspect eval` (-M adapter=...)"),
        exploratory: bool = typer.Option(False, "--exploratory", help="register under an unverified lock (stamped EXPLORATORY)"),
    ):
        """Check a hand-run Inspect log (its task and item set against the eval plan, its model and adapter
        against the study's cells, the cell record against the lock), copy it under runs/<study>/logs with
        the leaklab metadata, and ledger it so analysis reads it."""
        from leaklab.register import register_log
        from leaklab.runstore import run_lock

        loaded = load_study(study)
        with run_lock(loaded.runs_dir, f"leaklab register-log {study}"):
            for log in logs:
                entry, dest = register_log(loaded, log, exploratory=exploratory)
                typer.echo(f"registered {log} -> {dest} ({entry['model_label']}/{entry['arm']}"
                           f"{'' if entry['seed'] is None else '/seed' + str(entry['seed'])}/{entry['checkpoint']}, "
                           f"ledger entry {entry['seq']}, sha256 {entry['log_sha256'][:12]})")

    @app.command("ledger")
    def ledger_cmd(
        study: Path = typer.Argument(..., help="study folder"),
        exploratory: bool = typer.Option(False, "--exploratory", help="check against an unverified lock"),
    ):
        """List every log of the study: accepted for analysis, refused (and why), or skipped. Exit 1 if any is refused."""
        import prereg
        from prereg.ledger import custody

        loaded = load_study(study)
        c = custody(loaded, prereg.guard(loaded.folder, exploratory=exploratory))
        for p in c.accepted:
            typer.echo(f"ok       {p}")
        for p, why in c.skipped:
            typer.echo(f"skipped  {p}: {why}")
        for p, why in c.refused:
            typer.echo(f"REFUSED  {p}: {why}")
        typer.echo(f"{len(c.accepted)} accepted, {len(c.refused)} refused, {len(c.skipped)} skipped")
        if c.refused:
            raise typer.Exit(1)

    @app.command("status")
    def status_cmd(study: Path = typer.Argument(..., help="study folder"), as_json: bool = typer.Option(False, "--json")):
        """Show what exists and what is missing for a study."""
        import json

        st = study_status(study)
        if as_json:
            typer.echo(json.dumps(st, indent=2))
            return
        from rich.console import Console as RichConsole
        from rich.table import Table

        rc = RichConsole()
        rc.print(f"[bold]{st['study']}[/bold]  runs: {st['runs']}")
        rc.print(f"lock: {st['lock']}")
        rc.print(f"corpora: {', '.join(st['corpora']) or 'none'}")
        rc.print(f"train: {st['train']}" + (f" (missing: {', '.join(st['train_missing'])})" if st["train_missing"] else ""))
        table = Table("checkpoint", "complete logs", "logs")
        for row in st["eval"]:
            table.add_row(row["checkpoint"], str(row["logs_ok"]), str(row["logs"]))
        rc.print(table)
        for k in ("analysis", "interp", "report"):
            rc.print(f"{k}: {'yes' if st[k] else 'missing'}")

    @app.command("demo")
    def demo_cmd(keep: bool = typer.Option(False, "--keep", help="resume the existing runs/demo instead of starting fresh")):
        """The demo study end to end on the embedded model, in a fresh run folder, ending with REPORT.md."""
        import prereg

        study = load_study(REPO_ROOT / "studies" / "demo")
        con = Console()
        if not keep:
            moved = fresh_runs_folder(study)
            if moved:
                con.info(f"previous demo run kept at {moved}")
        if not study.lock_path.exists():
            con.info("studies/demo has no lock yet: locking the preregistration before any data exists")
            prereg.lock(study.folder)
        run_study(study.folder)
