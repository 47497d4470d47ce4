"""`leaklab prereg check|lock|verify|amend|show|power|calibrate STUDY`.

Exit codes: 0 ok, 1 verify mismatch (or a chain that does not verify in `show`), 2 input
error (a PreregError / ConfigError, printed as `error: ...` by leaklab.cli.main).
"""

from __future__ import annotations

import json

import typer

prereg_app = typer.Typer(no_args_is_help=True, help="Preregistration: check, lock, verify, amend, show, power, calibrate.")


def _short(d: str | None) -> str:
    return (d or "-")[:16]


@prereg_app.command("check")
def check_cmd(study: str = typer.Argument(..., help="study folder, e.g. studies/demo")):
    """Validate prereg.yaml against its schema and the study (no lock needed); list the hypotheses."""
    from prereg.locking import compute_components
    from prereg.schema import load_prereg

    pr = load_prereg(study)
    from leaklab.study import load_study
    from prereg.calibrate import small_seed_problems
    from prereg.schema import PreregError

    problems = small_seed_problems(pr, load_study(study))
    if problems:
        raise PreregError("\n".join(problems))
    comps = compute_components(study)  # also checks that every bound file exists
    typer.echo(f"ok: {pr.id} v{pr.version} ({pr.data_status}); {len(comps.digests)} lock components, "
               f"digest if locked now {comps.digest}")
    from leaklab.evaluate import unseeded_sampling_entries

    for line in unseeded_sampling_entries(load_study(study)):
        typer.echo(f"  note: {line} samples with no generation seed (study.yaml `seed:`): its answers "
                   "differ on every run, even on identical adapters")
    if pr.frequentist.accepted_coverage is not None:
        typer.echo(f"  frequentist.accepted_coverage {pr.frequentist.accepted_coverage:.0%}: the authors accept this "
                   f"measured coverage of the {pr.frequentist.ci} CI at nominal {1 - pr.frequentist.alpha:.0%}")
    for h in pr.hypotheses:
        c = h.contrast
        est = f"combined_directional({c.plus}, {c.minus})" if c.kind == "combined_directional" else h.estimand
        typer.echo(f"  {h.id:4s} {'confirmatory' if h.confirmatory else 'exploratory ':12s} {h.measure}/{h.item_set} "
                   f"{est} {h.direction} SESOI {h.sesoi.value:g} {h.sesoi.unit} [{h.family}: "
                   f"{pr.multiplicity.families[h.family]}]")


@prereg_app.command("lock")
def lock_cmd(
    study: str = typer.Argument(..., help="study folder, e.g. studies/demo"),
    existing_data: bool = typer.Option(False, "--existing-data",
                                       help="lock although target outcome logs exist (recorded in the chain; "
                                            "data_status must not be prior_to_creation)"),
):
    """Lock the preregistration (refused if target outcome logs already exist)."""
    from prereg.locking import lock

    lk = lock(study, existing_data=existing_data)
    typer.echo(f"locked {lk['study']}: {lk['digest']}")
    for name in sorted(lk["components"]):
        typer.echo(f"  {name:40s} {_short(lk['components'][name])}  {lk['sources'].get(name, '')}")
    if lk["git"] and (lk["git"]["dirty"] or lk["git"]["bound_files_dirty"]):
        typer.echo("note: the git work tree is dirty; commit prereg.yaml, prereg.lock.json and "
                   "prereg.deviations.jsonl so the lock is on record", err=True)


@prereg_app.command("verify")
def verify_cmd(study: str = typer.Argument(..., help="study folder")):
    """Recompute the lock; exit 1 with the list of changed components if anything differs."""
    from leaklab.study import load_study
    from prereg.locking import verify

    load_study(study)  # a missing or invalid study is an input error (exit 2), not a mismatch
    res = verify(study)
    if res.ok:
        typer.echo(f"ok: {study} matches lock {res.digest} ({len(res.chain)} chain entr{'y' if len(res.chain) == 1 else 'ies'})")
        return
    if res.digest is None:
        typer.echo(f"NOT VERIFIED: {study} has no valid lock", err=True)
    else:
        typer.echo(f"MISMATCH: {study} does not match its lock {res.digest}", err=True)
    typer.echo(res.explain(), err=True)
    raise typer.Exit(1)


@prereg_app.command("amend")
def amend_cmd(
    study: str = typer.Argument(..., help="study folder"),
    reason: str = typer.Option(..., "--reason", help="why the preregistration changed (recorded in the chain)"),
):
    """Re-lock after a change, appending a hash-chained deviation entry."""
    from prereg.deviations import read_chain
    from prereg.locking import amend

    lk = amend(study, reason)
    e = read_chain(study)[-1]
    typer.echo(f"amended {lk['study']}: {e['prev_digest']} -> {e['digest']} (entry {e['seq']})")
    for c in e["changed"]:
        typer.echo(f"  {c['change']}: {c['component']}")
    if e["outcome_data_existed"]:
        typer.echo(f"WARNING: target outcome data existed at this amendment ({len(e['outcome_logs'])} log(s)); "
                   "the chain records it and reports print it", err=True)


@prereg_app.command("show")
def show_cmd(study: str = typer.Argument(..., help="study folder"),
             as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """Print the lock, the deviations chain and whether both verify."""
    from leaklab.study import load_study
    from prereg.deviations import read_chain
    from prereg.locking import read_lock, verify
    from prereg.schema import PreregError

    load_study(study)
    res = verify(study)
    try:
        lk = read_lock(study)
    except PreregError as exc:
        lk = None
        lock_err = str(exc)
    try:
        chain = read_chain(study)
    except PreregError:
        chain = []
    if as_json:
        typer.echo(json.dumps({"ok": res.ok, "lock": lk, "chain": chain, "problems": res.problems, "diff": res.diff},
                              indent=2, sort_keys=True))
        raise typer.Exit(0 if res.ok else 1)
    from rich.console import Console
    from rich.table import Table

    con = Console()
    if lk is None:
        con.print(f"[bold red]no valid lock[/]: {lock_err}")
    else:
        con.print(f"[bold]{lk['study']}[/] lock {lk['digest']}")
        con.print(f"locked at {lk['locked_at']}  leaklab {lk['leaklab_version']}  git {lk['git']}")
        t = Table("component", "digest", "source")
        for name in sorted(lk["components"]):
            t.add_row(name, _short(lk["components"][name]), lk["sources"].get(name, ""))
        con.print(t)
    t = Table("seq", "event", "time", "digest", "prev", "changed", "outcome data", "reason", title="deviations chain")
    for e in chain:
        t.add_row(str(e["seq"]), e["event"], e["time"], _short(e["digest"]), _short(e["prev_digest"]),
                  ", ".join(c["component"] for c in e["changed"]) or "-",
                  f"YES ({len(e['outcome_logs'])})" if e["outcome_data_existed"] else "no", e["reason"])
    con.print(t)
    if res.ok:
        con.print("[bold green]valid[/]: lock, chain and every bound file verify")
        from prereg.gate import guard
        from prereg.ledger import custody
        from prereg.gate import check_log_digests
        from prereg.logs import find_logs

        st = load_study(study)
        logs = [p for p in find_logs(st.runs_dir / "logs") if p.suffix == ".eval"]
        if logs:
            bad = check_log_digests(study, [str(p) for p in logs], guard(study))
            con.print(f"logs: {len(logs) - len(bad)} of {len(logs)} bound to the current lock")
            for p, why in bad:
                con.print(f"  [red]rejected[/] {p}: {why}")
        c = custody(st, guard(study))  # every log under runs/<study>/logs, any format, and every ledgered one
        if c.accepted or c.refused:
            con.print(f"run ledger: {len(c.accepted)} log(s) analysis may read, {len(c.refused)} refused")
            for p, why in c.refused:
                con.print(f"  [red]refused[/] {p}: {why}")
    else:
        con.print("[bold red]INVALID[/]:\n" + res.explain())
        raise typer.Exit(1)


@prereg_app.command("power")
def power_cmd(
    study: str = typer.Argument(..., help="study folder"),
    hypothesis: list[str] = typer.Option(None, "--hypothesis", "-H", help="only these hypothesis ids"),
    n_sims: int = typer.Option(None, "--n-sims", help="override power.n_sims"),
    write: bool = typer.Option(False, "--write", help="write the results into prereg.yaml (before locking only)"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Simulate the preregistered design and report how often each decision rule detects effects."""
    from prereg.power import results_block, run_power, write_results

    results = run_power(study, hypothesis or None, n_sims)
    if as_json:
        typer.echo(json.dumps(results_block(results), indent=2, sort_keys=True))
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table("hypothesis", "test", "alpha", "items", "seeds", "x SESOI", "P(effect)", "P(CI excl. 0)",
                  "P(equivalent)", "MCSE", "upper bound", title=f"power by simulation ({results[0].n_sims if results else 0} sims)")
        for r in results:
            for p in r.curve:
                t.add_row(r.hypothesis, r.test, f"{r.alpha:.3g}", str(r.n_items), str(r.n_seeds), f"{p.multiple:g}",
                          f"{p.p_effect:.3f}", f"{p.p_nonzero:.3f}", f"{p.p_equivalent:.3f}", f"{p.mcse:.3f}",
                          "" if p.p_upper is None else f"{p.p_upper:.3f}")
        Console().print(t)
        for r in results:
            typer.echo(f"{r.hypothesis}: {r.scope}")
        typer.echo("x SESOI = 0 rows are the rule's false-positive rates under no effect. `leaklab prereg calibrate` "
                   "simulates the whole two-part rule.")
    if write:
        path = write_results(study, results)
        typer.echo(f"wrote power.results into {path}")


@prereg_app.command("calibrate")
def calibrate_cmd(
    study: str = typer.Argument(..., help="study folder"),
    n_sims: int = typer.Option(None, "--n-sims", help="simulated studies per scenario (default power.n_sims)"),
    bayes_sims: int = typer.Option(5, "--bayes-sims", help="of those, how many also run the Bayesian half (a pymc fit each)"),
    no_bayes: bool = typer.Option(False, "--no-bayes", help="frequentist half only"),
    n_boot: int = typer.Option(None, "--n-boot", help="bootstrap resamples per simulated study when ci is hierarchical_bootstrap (default power.n_resamples; recorded)"),
    draws: int = typer.Option(None, "--draws", help="override the sampler draws (recorded; not the preregistered plan)"),
    tune: int = typer.Option(None, "--tune"),
    write: bool = typer.Option(False, "--write", help="bind the result into prereg.yaml as power.calibration (before locking)"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Simulate the preregistered analysis (both halves of the rule) at effect 0, the SESOI and the
    expected effect: CI coverage, false-claim rates and power per hypothesis, with Monte Carlo SEs."""
    from prereg.calibrate import calibrate, write_json
    from prereg.power import write_results

    block = calibrate(study, n_sims=n_sims, n_sims_bayes=0 if no_bayes else bayes_sims, bayes=not no_bayes,
                      n_boot=n_boot, draws=draws, tune=tune, log=lambda s: typer.echo(s, err=True))
    path = write_json(study, block)
    if as_json:
        typer.echo(json.dumps(block, indent=2, sort_keys=True))
    else:
        from rich.console import Console
        from rich.table import Table

        def pct(x, se=None):
            return "-" if x is None else (f"{100 * x:.1f}" + (f"±{100 * se:.1f}" if se is not None else ""))

        t = Table("H", "scenario", "true", "coverage", "P(effect)", "P(equiv.)", "P(supported)", "HDI cov.",
                  title=f"calibration of the preregistered analysis: {block['ci']} CI, {block['n_sims']} simulated "
                        f"studies per scenario ({block['n_sims_bayes']} with the Bayesian half); %±Monte Carlo SE")
        for hid, pts in block["hypotheses"].items():
            for p in pts:
                t.add_row(hid, p["scenario"], f"{p['effect']:+.3g}", pct(p["coverage"], p["coverage_mcse"]),
                          pct(p["p_freq_effect"], p["p_freq_effect_mcse"]), pct(p["p_freq_equivalent"]),
                          pct(p["p_supported"], p["p_supported_mcse"]), pct(p["hdi_coverage"]))
        Console().print(t)
        typer.echo(f"notes: {block['notes']}")
        typer.echo("zero and sesoi rows: P(freq. effect) and P(supported) are false-claim rates (nominal one-sided "
                   f"level alpha/2 = {block['alpha'] / 2:g} before multiplicity at the SESOI).")
    typer.echo(f"wrote {path}", err=True)
    if write:
        p = write_results(study, None, key="calibration", block=block)
        typer.echo(f"wrote power.calibration into {p}")


def register(app: typer.Typer) -> None:
    app.add_typer(prereg_app, name="prereg")
