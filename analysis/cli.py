"""`leaklab analyze STUDY`: logs -> frame -> frequentist + Bayesian -> preregistered decisions.

Goes through `prereg.guard` first (a study without a verifying lock is refused unless
--exploratory, which stamps every output EXPLORATORY), then accepts only logs bound to the
current lock (`prereg.require_bound`). Writes `runs/<study>/analysis/`:
`frame.parquet` (every score row, with an `excluded` column naming the exclusion that removed
it), `results.json` (analysis.results.Results), `posterior/*.nc`, `figures/ppc_*.png`.

Only the final checkpoint enters hypotheses; every number's Source names the frame filters.
The work is done by the named steps of `analysis.steps` (frame -> exclusions -> missingness ->
summaries -> effects -> multiplicity -> validity -> bayes -> verdicts -> results); every
interval-vs-SESOI reading is `analysis.decide`'s.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import typer

from analysis.steps import FRAME_REL  # noqa: F401 - re-exported (runs/<study>/analysis/frame.parquet)


def analyze_study(
    study_dir: str | Path,
    *,
    exploratory: bool = False,
    bayes: bool = True,
    n_boot: int | None = None,
    draws: int | None = None,
    tune: int | None = None,
    chains: int | None = None,
    log: Callable[[str], None] = lambda s: None,
):
    """Run the whole analysis of one study (the named steps of `analysis.steps`); return the
    Results written to results.json."""
    from analysis import steps as S

    opts = S.Options(exploratory=exploratory, bayes=bayes, n_boot=n_boot, draws=draws, tune=tune, chains=chains)
    state = S.start(study_dir, opts, log)
    for name, step in S.pipeline():
        state = S.run_step(name, step, state)
    return state.results


def register(app: typer.Typer) -> None:
    @app.command("analyze")
    def analyze(
        study: Path = typer.Argument(..., help="studies/<name> folder"),
        exploratory: bool = typer.Option(False, "--exploratory", help="run without a verifying lock; every output stamped EXPLORATORY"),
        no_bayes: bool = typer.Option(False, "--no-bayes", help="skip the Bayesian models (decisions then stay undecided)"),
        n_boot: int = typer.Option(None, "--n-boot", help="override the prereg's bootstrap resamples (recorded)"),
        draws: int = typer.Option(None, "--draws", help="override the prereg's sampler draws (recorded as a deviation warning)"),
        tune: int = typer.Option(None, "--tune"),
        chains: int = typer.Option(None, "--chains"),
    ):
        """Analyse STUDY's logs: frame, effects, posteriors, preregistered decisions -> runs/<study>/analysis/."""
        from rich.console import Console
        from rich.table import Table

        con = Console()
        t0 = time.perf_counter()
        res = analyze_study(study, exploratory=exploratory, bayes=not no_bayes, n_boot=n_boot, draws=draws, tune=tune,
                            chains=chains, log=lambda s: con.print(f"[dim]{s}[/dim]"))
        con.print(f"[bold]{res.stamp}[/bold] study {res.study}, lock {res.lock_digest or '-'}; "
                  f"{res.frame.n_rows} score rows ({res.frame.n_missing} missing) from {res.frame.n_logs} logs")
        if res.manipulation_checks:
            t = Table("manipulation check (source items)", "model", "measure", "passed", "summary")
            for m in res.manipulation_checks:
                t.add_row(", ".join(m.effects), m.model_label, m.measure, str(m.passed), m.summary[:120])
            con.print(t)
        if res.measure_validity:
            t = Table("measure", "model", "agreement with forced choice", "n", "passed")
            for v in res.measure_validity:
                t.add_row(v.measure, v.model_label, "NA" if v.agreement is None else f"{v.agreement:.2f}", str(v.n_items), str(v.passed))
            con.print(t)
        t = Table("hypothesis", "kind", "model", "verdict", "reason")
        for d in res.decisions:
            t.add_row(d.hypothesis_id, d.kind, d.model_label or "", d.verdict, d.reason[:160])
        con.print(t)
        for w in res.warnings:
            con.print(f"[yellow]warning:[/yellow] {w}")
        con.print(f"wrote {Path(res.frame.path).parent} under runs/{res.study} in {time.perf_counter() - t0:.1f}s")
