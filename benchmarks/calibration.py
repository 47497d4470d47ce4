"""Coverage and false-claim rates of leaklab's frequentist contrasts at the seed counts studies use.

Simulates arms x seeds x items with

    value[arm, seed, item] = mu_arm + seed_arm,seed + item_item + (item x arm)_arm,item + residual

(3 arms: neutral = reference, eager = +effect, cautious = -effect; every arm trained, so every
arm has its own seeds), and runs leaklab's own contrast code (`analysis.frequentist.contrast_arrays`,
the function `leaklab analyze` calls) on every simulated data set, for

- the combined directional contrast (eager - cautious) / 2 and the per-arm contrast eager - neutral,
  both in d (reference-SD units) with a true value exactly at the SESOI, so one set of simulations
  gives both the coverage of the 95% CI for d and the rate of a false "effect" reading (the
  minimum-effect rule: lower CI bound beyond +SESOI; nominal one-sided level alpha/2 = 2.5%);
- the per-arm summary interval (the mean of one arm over the population of seeds and items).

Methods, old and new side by side:
  boot      the hierarchical percentile bootstrap (n-1 of n seeds, paired items) - the old default
  cse       `ci: cluster_se` (new default): t interval, SE clustered by seed and item, Satterthwaite df
  seed_t    candidate: CR2 / Welch t on seed-level means only (item x arm variance ignored)
  wild      candidate: wild cluster bootstrap-t over runs, Webb 6-point weights (unrestricted)
  old_cse   the previous `ci: cluster_se`: +/- 1.96 x Miller SE clustered by item (seeds averaged away)
Arm summaries: old = mean +/- 1.96 SD/sqrt(n cells) (`mean_se_ci`), new = `arm_interval`.

True d = effect / sqrt(seed^2 + item^2 + item x arm^2 + residual^2), the population SD of a
reference-arm cell (as `prereg power` defines it). Every number has its Monte Carlo SE.

    .venv/bin/python benchmarks/calibration.py                 # default grid, 1000 reps per cell
    .venv/bin/python benchmarks/calibration.py --reps 300 --seeds 3 --items 12
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis import frequentist as F  # noqa: E402

WEBB = np.array([-math.sqrt(1.5), -1.0, -math.sqrt(0.5), math.sqrt(0.5), 1.0, math.sqrt(1.5)])
GROUPS = ["eager", "cautious", "neutral"]
CONTRASTS = {"combined": np.array([0.5, -0.5, 0.0]), "per_arm": np.array([1.0, 0.0, -1.0])}


def simulate(rng, n_seeds: int, n_items: int, noise: dict, effect: float) -> np.ndarray:
    """One data set (G=3, S, K) of cell values (natural scale)."""
    mu = np.array([effect, -effect, 0.0])
    item = rng.normal(0, noise["item_sd"], n_items)
    ixa = rng.normal(0, noise.get("item_arm_sd", 0.0), (3, n_items))
    seed = rng.normal(0, noise["seed_sd"], (3, n_seeds))
    res = rng.normal(0, noise["residual_sd"], (3, n_seeds, n_items))
    return mu[:, None, None] + seed[:, :, None] + item[None, None, :] + ixa[:, None, :] + res


def seed_t(Y: np.ndarray, c: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """Welch / CR2 t on seed means (items averaged first): est, se, df."""
    rm = Y.mean(axis=2)  # (G, S)
    S = rm.shape[1]
    terms = c ** 2 * rm.var(axis=1, ddof=1) / S
    se = math.sqrt(terms.sum())
    df = terms.sum() ** 2 / np.sum(terms[c != 0] ** 2 / (S - 1))
    return float(rm.mean(axis=1) @ c), se, float(df)


def wild_t(Y: np.ndarray, c: np.ndarray, alpha: float, rng, B: int) -> tuple[float, float]:
    """Wild cluster bootstrap-t CI over runs (Webb weights), natural scale."""
    rm = Y.mean(axis=2)
    G, S = rm.shape
    m = rm.mean(axis=1, keepdims=True)
    e = (rm - m) * math.sqrt(S / (S - 1))
    est = float(m[:, 0] @ c)
    se = math.sqrt(np.sum(c ** 2 * rm.var(axis=1, ddof=1) / S))
    v = WEBB[rng.integers(0, 6, size=(B, G, S))]
    rb = m[None] + v * e[None]
    eb = rb.mean(axis=2) @ c
    seb = np.sqrt((c ** 2 * rb.var(axis=2, ddof=1) / S).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (eb - est) / seb
    t = t[np.isfinite(t)]
    qlo, qhi = np.quantile(t, [alpha / 2, 1 - alpha / 2])
    return est - qhi * se, est - qlo * se


def old_cluster_se(Y: np.ndarray, c: np.ndarray) -> tuple[float, float]:
    """The previous `ci: cluster_se`: item-level contrast (seeds averaged), Miller SE by item, z."""
    ci_ = np.tensordot(c, Y.mean(axis=1), axes=1)  # (K,)
    se = F.clustered_se(ci_, np.arange(len(ci_)))
    est = float(ci_.mean())
    return est - 1.96 * se, est + 1.96 * se


def run_cell(n_seeds: int, n_items: int, noise: dict, sesoi: float, reps: int, n_boot: int, seed: int,
             alpha: float = 0.05, methods=("boot", "cse", "seed_t", "wild", "old_cse")) -> dict:
    rng = np.random.default_rng([seed, n_seeds, n_items, int(1000 * noise.get("item_arm_sd", 0))])
    total = math.sqrt(sum(noise[k] ** 2 for k in ("seed_sd", "item_sd", "residual_sd")) + noise.get("item_arm_sd", 0) ** 2)
    effect = sesoi * total  # natural scale; true d = sesoi for both contrasts
    tq_z = 1.96
    out = {(k, m): {"cover": 0, "false": 0, "width": 0.0, "n": 0} for k in CONTRASTS for m in methods}
    arm = {m: 0 for m in ("old", "new")}
    for rep in range(reps):
        Y = simulate(rng, n_seeds, n_items, noise, effect)
        a = F.arrays_from_tables(GROUPS, list(Y))
        sd_ref = float(Y[2].std(ddof=1))
        for k, c in CONTRASTS.items():
            for m in methods:
                if m in ("boot", "cse"):
                    r = F.contrast_arrays(a, c, 2, method="hierarchical_bootstrap" if m == "boot" else "cluster_se",
                                          n_boot=n_boot, seed=rep, alpha=alpha, sesoi=sesoi, direction="positive")
                    lo, hi = r.ci_d
                elif m == "seed_t":
                    est, se, df = seed_t(Y, c, alpha)
                    q = F.stats.t.ppf(1 - alpha / 2, df)
                    lo, hi = (est - q * se) / sd_ref, (est + q * se) / sd_ref
                elif m == "wild":
                    lo, hi = (x / sd_ref for x in wild_t(Y, c, alpha, rng, n_boot))
                else:
                    lo, hi = (x / sd_ref for x in old_cluster_se(Y, c))
                o = out[(k, m)]
                o["cover"] += lo <= sesoi <= hi
                o["false"] += lo > sesoi
                o["width"] += hi - lo
                o["n"] += 1
        # arm summary of the reference arm: true mean 0 over the population of seeds and items
        g = Y[2]
        mo = F.mean_se_ci(g.ravel(), z=tq_z)
        arm["old"] += mo["ci_low"] <= 0 <= mo["ci_high"]
        a1 = F.arrays_from_tables(["neutral"], [g])
        se, df = F.clustered_t_se(F.cell_means(a1), np.array([1.0]), paired=True)
        q = F.stats.t.ppf(1 - alpha / 2, df[0])
        arm["new"] += abs(g.mean()) <= q * se[0]
    return {"contrasts": out, "arm": arm, "reps": reps}


def pct(k: int, n: int) -> str:
    p = k / n
    return f"{100 * p:5.1f} ({100 * math.sqrt(max(p * (1 - p), 1e-12) / n):.1f})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=1000)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 5])
    ap.add_argument("--items", type=int, default=40)
    ap.add_argument("--item-arm-sd", type=float, nargs="+", default=[0.0, 0.3])
    ap.add_argument("--seed-sd", type=float, default=0.3)
    ap.add_argument("--item-sd", type=float, default=0.7)
    ap.add_argument("--residual-sd", type=float, default=0.6)
    ap.add_argument("--sesoi", type=float, default=0.2)
    ap.add_argument("--methods", nargs="+", default=["boot", "cse", "seed_t", "wild", "old_cse"])
    ap.add_argument("--seed", type=int, default=20261202)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    print(f"# {args.reps} simulated data sets per row; 3 arms x S seeds x {args.items} items; noise seed "
          f"{args.seed_sd} item {args.item_sd} residual {args.residual_sd} (natural units); true d = SESOI = {args.sesoi}; "
          f"bootstraps {args.n_boot} resamples. Cells: coverage of the 95% CI for d (Monte Carlo SE) / "
          f"false 'effect' reading at d = SESOI, nominal 2.5% (MCSE); all in %.")
    head = "| seeds | item x arm SD | contrast | " + " | ".join(f"{m} cover | {m} false" for m in args.methods) + " |"
    print(head)
    print("|" + "---|" * (3 + 2 * len(args.methods)))
    arm_rows = []
    for ixa in args.item_arm_sd:
        for S in args.seeds:
            noise = {"seed_sd": args.seed_sd, "item_sd": args.item_sd, "residual_sd": args.residual_sd, "item_arm_sd": ixa}
            r = run_cell(S, args.items, noise, args.sesoi, args.reps, args.n_boot, args.seed, methods=args.methods)
            for k in CONTRASTS:
                cells = []
                for m in args.methods:
                    o = r["contrasts"][(k, m)]
                    cells += [pct(o["cover"], o["n"]), pct(o["false"], o["n"])]
                print(f"| {S} | {ixa:g} | {k} | " + " | ".join(cells) + " |", flush=True)
            arm_rows.append((S, ixa, r["arm"], r["reps"]))
    print("\nper-arm summary interval, coverage of the arm's population mean (%, MCSE):")
    print("| seeds | item x arm SD | old (+/- 1.96 SD/sqrt(cells)) | new (arm_interval) |\n|---|---|---|---|")
    for S, ixa, arm, n in arm_rows:
        print(f"| {S} | {ixa:g} | {pct(arm['old'], n)} | {pct(arm['new'], n)} |")
    print(f"\n# {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
