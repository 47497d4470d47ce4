"""`leaklab report STUDY`: render REPORT.md + PLAIN_SUMMARY.md + figures from the analysis results."""

from __future__ import annotations

from pathlib import Path

import typer


def render_study_report(study_dir: str | Path, exploratory: bool = False) -> Path:
    """Render the report of one study (the pipeline's `report` stage); returns REPORT.md's path.

    Goes through `prereg.guard`: raises PreregError / ConfigError when the study is not locked
    (unless `exploratory`), or when the results were analysed under another lock.
    """
    from reports.renderer import render_report

    return render_report(study_dir, exploratory=exploratory)["report"]


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        study: Path = typer.Argument(..., help="study folder, e.g. studies/demo"),
        exploratory: bool = typer.Option(
            False, "--exploratory", help="render without a verified lock; every page is stamped EXPLORATORY"),
    ):
        """Render runs/<study>/report/{REPORT.md, PLAIN_SUMMARY.md, figures/} (goes through prereg.guard)."""
        from reports.renderer import render_report

        out = render_report(study, exploratory=exploratory)
        typer.echo(f"wrote {out['report']}")
        typer.echo(f"wrote {out['summary']}")

    @app.command("example")
    def example(
        study: Path = typer.Argument(..., help="study folder, e.g. studies/demo"),
        command: str = typer.Option(..., "--command", help="the exact command that produced the run, e.g. 'make demo'"),
        load: str = typer.Option("", "--load", help="what else ran on the machine during the run (RUN.md says \"not stated\" without it), e.g. 'the eval stage ran beside a test suite for 50 min'"),
    ):
        """Publish the study's finished locked run as examples/<study>/ (report, figures, lock, RUN.md)."""
        from reports.example import publish_example

        typer.echo(f"wrote {publish_example(study, command, load=load)}")

