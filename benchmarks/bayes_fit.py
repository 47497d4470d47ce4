"""Fit time of the primary Bayesian model on demo-sized data: nutpie (the default sampler) vs
pymc's own NUTS (and numpyro when jax is installed), measured side by side in one run.

Data: the demo design (3 arms x 2 seeds x 96 target items x 2 option orders = 1,152 rows),
simulated with a planted combined contrast; the model is the demo prereg's primary one
(student_t likelihood, item and run random effects, option-order effect, target_accept 0.95).
Each backend runs the same model twice (seeds 1 and 2): the first call includes building and
compiling the model, the second reuses it (analysis.bayes keeps compiled models by graph, pymc's
and nutpie's alike, and swaps the data in). Per backend it prints wall and CPU seconds of both
calls, min bulk ESS per second, divergences, the diagnostics gate (analysis.bayes.DEFAULT_GATES)
and the combined contrast's 2.5/50/97.5% quantiles, so backends can be compared on the same
posterior. nutpie runs its chains in `--cores` threads (as the analysis does, one per core);
pymc samples its chains one after another in one process (as the analysis always did).

`pymc` runs with pytensor linked to the OpenBLAS the scipy wheel ships (leaklab/pytensor_blas.py);
`pymc-noblas` is the same sampler without BLAS (pip's default: "PyTensor could not link to a
BLAS installation"), run in a child process because the link is fixed when pytensor is imported.

    python benchmarks/bayes_fit.py [--draws 1000 --tune 1000 --chains 4] [--backends nutpie pymc pymc-noblas]
    python benchmarks/bayes_fit.py --quick      # 500 draws, 500 tune, nutpie vs pymc

`--study studies/demo` measures a study's own Bayesian step instead: `leaklab analyze` on the
study's run (runs/<name>: its logs and ledger copied, its adapters hard-linked, into a scratch
runs folder beside it, so the run itself is not touched), once per backend in a fresh process, backends
alternating, `--repeats` rounds. It prints the `bayes` step's seconds (every fit, its
diagnostics, draws saved and PPC figure), each fit's seconds, gate and contrast HDIs, so the
backends are compared on the same posterior under the locked prereg's sampler settings.

    python benchmarks/bayes_fit.py --study studies/demo [--backends nutpie pymc] [--repeats 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
if "--no-blas" not in sys.argv:
    from leaklab.pytensor_blas import configure

    configure()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=1000)  # 4 chains x (1,000 + 1,000): the 4 x 2,000 iterations
    ap.add_argument("--tune", type=int, default=1000)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--cores", type=int, default=min(4, os.cpu_count() or 1),
                    help="nutpie: chains in parallel threads (the analysis runs one per core); pymc samples in one process")
    ap.add_argument("--target-accept", type=float, default=0.95)  # the demo prereg's
    ap.add_argument("--n-base", type=int, default=96)
    ap.add_argument("--likelihood", default="student_t")
    ap.add_argument("--backends", nargs="+", default=["nutpie", "pymc", "pymc-noblas", "numpyro"])
    ap.add_argument("--quick", action="store_true", help="500 draws / 500 tune, nutpie and pymc")
    ap.add_argument("--study", help="time this study's own Bayesian step on its run's logs (see above)")
    ap.add_argument("--repeats", type=int, default=2, help="--study: rounds of every backend")
    ap.add_argument("--no-blas", action="store_true", help=argparse.SUPPRESS)  # the child of pymc-noblas
    args = ap.parse_args()
    if args.quick:
        args.draws, args.tune = 500, 500
        args.backends = [b for b in args.backends if b in ("nutpie", "pymc")]
    if args.study:
        study_step(args.study, [b for b in args.backends if b in ("nutpie", "pymc")], args.repeats)
        return

    import numpy as np
    import pandas as pd

    from analysis import bayes as B
    from analysis.frame import cell_frame, simulate_cells
    from analysis.frequentist import bootstrap_contrast

    rows = simulate_cells(arms={"neutral": 0.0, "eager": 0.3, "cautious": -0.5}, seeds=[0, 1], n_base=args.n_base, rng=0)
    df = pd.DataFrame(rows)
    for k, v in dict(model_label="m", checkpoint="final", measure="letter_logprob", item_set="target",
                     condition="default", persona="").items():
        df[k] = v
    df["seed"] = df["seed"].astype("Int64")
    fr = bootstrap_contrast(cell_frame(df), {"eager": 0.5, "cautious": -0.5}, "neutral", n_boot=2000)
    print(f"data: {len(df)} rows; machine: {os.cpu_count()} cpus, load avg {os.getloadavg()[0]:.1f}; "
          f"sampler draws={args.draws} tune={args.tune} chains={args.chains} target_accept={args.target_accept}; "
          f"nutpie chains in {args.cores} threads, pymc in one process")
    print(f"frequentist combined: {fr.estimate:+.3f} [{fr.ci[0]:+.3f}, {fr.ci[1]:+.3f}]; the analysis' default sampler: "
          f"{B.BayesSpec().sampler}")
    results = {}
    for backend in args.backends:
        if backend == "pymc-noblas":
            child = [sys.executable, __file__, "--no-blas", "--backends", "pymc", "--draws", str(args.draws),
                     "--tune", str(args.tune), "--chains", str(args.chains), "--cores", str(args.cores),
                     "--target-accept", str(args.target_accept),
                     "--n-base", str(args.n_base), "--likelihood", args.likelihood]
            out = subprocess.run(child, capture_output=True, text=True, env={**os.environ, "LEAKLAB_PYTENSOR_BLAS": "0"})
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("pymc ")), None)
            if line is None:
                print(f"pymc-noblas failed: {out.stderr[-500:]}")
                continue
            print(f"{backend:11s}" + line[11:])
            results[backend] = [float(line.split(f"{k} call")[1].split()[0].rstrip("s")) for k in ("first", "second")]
            continue
        need = {"nutpie": "nutpie", "numpyro": "numpyro"}.get(backend)
        if need and importlib.util.find_spec(need) is None:
            print(f"{backend:8s} not installed (pip install {need}" + (" jax" if need == "numpyro" else "") + "): skipped")
            continue
        times, cpu = [], []
        for attempt in range(2):
            spec = B.BayesSpec(likelihood=args.likelihood, draws=args.draws, tune=args.tune, chains=args.chains,
                               seed=1 + attempt, sampler=backend, target_accept=args.target_accept,
                               cores=args.cores if backend == "nutpie" else 1)
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                fit = B.fit_model(df, ["neutral", "eager", "cautious"], "neutral", spec, sd_ref=fr.sd_ref)
            except Exception as exc:  # noqa: BLE001 - report the failure, keep measuring the others
                print(f"{backend:8s} failed: {type(exc).__name__}: {exc}")
                break
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        if len(times) < 2:
            continue
        diag = B.diagnostics(fit.idata, B.DEFAULT_GATES)
        s = B.summarize_contrast(fit, "combined_directional", {"eager": 0.5, "cautious": -0.5}, 0.2, "d")
        q = np.quantile(B.contrast_draws(fit, {"eager": 0.5, "cautious": -0.5}), [0.025, 0.5, 0.975])
        ess = diag["ess_bulk_min"] or float("nan")
        results[backend] = times
        ss = fit.idata.sample_stats
        depth = f"  mean tree depth {float(ss['tree_depth'].mean()):.1f}" if "tree_depth" in ss else ""
        print(f"{backend:11s} first call {times[0]:7.1f}s  second call {times[1]:7.1f}s  "
              f"(cpu {cpu[0]:.1f}s / {cpu[1]:.1f}s)  "
              f"min bulk ESS {ess:6.0f} ({ess / times[1]:.1f}/s)  rhat_max {diag['rhat_max']:.3f}  "
              f"div {diag['divergences']}  gate {'pass' if diag['passed'] else 'FAIL'}{depth}  "
              f"contrast {s['mean']:+.3f} HDI [{s['hdi_low']:+.3f}, {s['hdi_high']:+.3f}] "
              f"q2.5/50/97.5 {q[0]:+.3f} {q[1]:+.3f} {q[2]:+.3f}  [{fit.formula.split('  [')[0]}]")
    if args.no_blas:
        return
    if "pymc" in results:
        for b, t in results.items():
            if b != "pymc":
                print(f"time ratio pymc/{b} (> 1: {b} faster): first call {results['pymc'][0] / t[0]:.2f}x, "
                      f"second call {results['pymc'][1] / t[1]:.2f}x")
    _ = np


def study_step(study_dir: str, backends: list[str], repeats: int) -> None:
    """The `bayes` step of `leaklab analyze STUDY`, per backend in a fresh process (see the module
    docstring). The analysis reads the run's logs, ledger and adapters; its outputs go to a
    scratch copy of the run."""
    import tempfile

    from leaklab.runstore import runs_root
    from leaklab.study import load_study

    name = load_study(study_dir).spec.name
    src = runs_root() / name
    if not (src / "logs").is_dir():
        raise SystemExit(f"{src}/logs not found: run the study first (leaklab run {study_dir})")
    code = "import sys; from analysis.cli import analyze_study; analyze_study(sys.argv[1])"
    print(f"{study_dir}: the Bayesian step of `leaklab analyze` on {src}; machine: {os.cpu_count()} cpus, "
          f"load avg {os.getloadavg()[0]:.1f}; each backend in a fresh process, {repeats} round(s)")
    times: dict[str, list[float]] = {b: [] for b in backends}
    # beside the run: the adapters are hard links (not copied, and custody checks resolve their
    # paths, which a symlink would send back to the run); everything else is copied, so nothing
    # the analysis appends to (the ledger) reaches the run's own files
    with tempfile.TemporaryDirectory(dir=src.parent, prefix=".bayes-bench-") as tmp:
        dst = Path(tmp) / name
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("analysis", "report", "train"))
        if (src / "train").is_dir():
            shutil.copytree(src / "train", dst / "train", copy_function=os.link)
        for r in range(repeats):
            for backend in backends:
                env = {**os.environ, "LEAKLAB_RUNS": tmp, "LEAKLAB_BAYES_SAMPLER": backend}
                out = subprocess.run([sys.executable, "-c", code, study_dir], env=env, capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f"{backend}: leaklab analyze failed:\n{out.stderr[-2000:]}")
                state = json.loads((dst / "analysis" / "state.json").read_text())
                step = next(s["seconds"] for s in state["steps"] if s["step"] == "bayes")
                times[backend].append(step)
                fits = json.loads((dst / "analysis" / "results.json").read_text())["bayes"]
                desc = "; ".join(
                    f"{f['id']} {f['fit_seconds']:.1f}s {'pass' if f['usable'] else 'FAIL'} "
                    + ", ".join(f"{c['name']} [{c['hdi_low']:+.2f}, {c['hdi_high']:+.2f}]" for c in f["contrasts"])
                    for f in fits)
                print(f"round {r + 1} {backend:7s} bayes step {step:6.1f}s  ({desc})")
    if "pymc" in times:
        for b in backends:
            if b != "pymc":
                print(f"bayes step, pymc / {b} (> 1: {b} faster), best of {repeats}: "
                      f"{min(times['pymc']) / min(times[b]):.2f}x")


if __name__ == "__main__":
    main()
