"""`leaklab data STUDY` (build + validate corpora) and `leaklab train STUDY [--cell M/A/S]`."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("data")
    def data_cmd(study: Path = typer.Argument(..., help="studies/<name> folder or its study.yaml")):
        """Build every arm's training corpus and write validation_report.json (exit 1 if a gate fails)."""
        from rich.console import Console

        from leaklab.runstore import run_lock
        from leaklab.study import load_study
        from training.matrix import prepare_data

        console = Console(stderr=True)
        loaded = load_study(study)
        with run_lock(loaded.runs_dir, f"leaklab data {study}"):
            report = prepare_data(loaded, console)
        for name, gate in report["gates"].items():
            mark = "skip" if "skipped" in gate else ("ok" if gate["passed"] else "FAIL")
            console.print(f"  {mark:4s} {name}" + (f" ({gate['skipped']})" if "skipped" in gate else ""))
        if not report["passed"]:
            raise typer.Exit(1)

    @app.command("train")
    def train_cmd(
        study: Path = typer.Argument(..., help="studies/<name> folder or its study.yaml"),
        cell: list[str] = typer.Option(None, "--cell", help="MODEL/ARM/SEED (model label); repeatable; default: every cell"),
        exploratory: bool = typer.Option(False, "--exploratory", help="train without a verified lock (cells recorded as exploratory)"),
    ):
        """Train every missing LoRA cell of models x arms x seeds (DONE cells are skipped, killed ones resume)."""
        from rich.console import Console

        from leaklab.study import load_study
        from training.matrix import parse_cell, train_study

        loaded = load_study(study)
        cells = [parse_cell(loaded, c) for c in cell] if cell else None
        console = Console(stderr=True)
        folders = train_study(loaded, cells, console=console, exploratory=exploratory)
        for f in folders:
            typer.echo(str(f))
