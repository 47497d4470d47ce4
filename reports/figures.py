"""Report figures (matplotlib, Agg backend), written as PNG under `runs/<study>/report/figures/`.

Every figure is drawn only from numbers the caller passes in (taken from results.json or the
tidy frame), so the figure and the tables of REPORT.md can never disagree. matplotlib is
imported inside the functions to keep `import reports` light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

# colour per framework, readable in grey-scale print too (different markers as well)
_FREQ = ("#1f4e79", "o")
_BAYES = ("#b3541e", "D")
_ROPE = "#d9d9d9"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _finite(*xs) -> bool:
    return all(x is not None and isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


@dataclass
class ForestRow:
    """One hypothesis (or contrast) in the forest plot; all numbers on one scale (`unit`)."""

    label: str
    unit: str  # "d" or a natural-scale unit name; rows of different units go to different panels
    sesoi: float | None  # the band is [-sesoi, +sesoi]
    freq: tuple[float | None, float | None, float | None] = (None, None, None)  # estimate, lo, hi
    bayes: tuple[float | None, float | None, float | None] = (None, None, None)  # mean, hdi lo, hdi hi
    confirmatory: bool = True
    note: str = ""  # e.g. "Bayes unusable (gate failed)"
    bayes_usable: bool = True


def forest_plot(rows: Sequence[ForestRow], path: Path, title: str = "", ci_label: str = "95% bootstrap CI",
                hdi_label: str = "95% HDI") -> Path:
    """Effects with intervals from both frameworks, each row over its own SESOI band (the ROPE).

    A row whose posterior failed its diagnostics gate is drawn hollow and labelled, so an
    unusable fit cannot be read as a result.
    """
    if not rows:
        raise ValueError("forest_plot needs at least one row")
    plt = _plt()
    units = list(dict.fromkeys(r.unit for r in rows))
    n = len(rows)
    fig, axes = plt.subplots(
        len(units), 1, figsize=(8.0, 1.3 + 0.62 * n + 0.5 * len(units)), squeeze=False,
        gridspec_kw={"height_ratios": [max(1, sum(r.unit == u for r in rows)) for u in units]},
    )
    for ax, unit in zip(axes[:, 0], units):
        sub = [r for r in rows if r.unit == unit]
        ys = list(range(len(sub)))[::-1]
        xs_all: list[float] = [0.0]
        for y, r in zip(ys, sub):
            if _finite(r.sesoi):
                ax.fill_betweenx([y - 0.42, y + 0.42], -r.sesoi, r.sesoi, color=_ROPE, lw=0, zorder=0)
                for s in (-r.sesoi, r.sesoi):
                    ax.plot([s, s], [y - 0.42, y + 0.42], color="#8c8c8c", ls="--", lw=0.8, zorder=1)
                xs_all += [-r.sesoi, r.sesoi]
            est, lo, hi = r.freq
            if _finite(lo, hi):
                ax.plot([lo, hi], [y + 0.13] * 2, color=_FREQ[0], lw=2.2, zorder=3)
                xs_all += [lo, hi]
            if _finite(est):
                ax.plot(est, y + 0.13, marker=_FREQ[1], color=_FREQ[0], ms=7, zorder=4)
                xs_all.append(est)
            m, lo, hi = r.bayes
            face = _BAYES[0] if r.bayes_usable else "white"
            if _finite(lo, hi):
                ax.plot([lo, hi], [y - 0.13] * 2, color=_BAYES[0], lw=2.2, zorder=3,
                        ls="-" if r.bayes_usable else ":")
                xs_all += [lo, hi]
            if _finite(m):
                ax.plot(m, y - 0.13, marker=_BAYES[1], mfc=face, mec=_BAYES[0], ms=7, zorder=4)
                xs_all.append(m)
            if r.note:
                ax.annotate(r.note, (1.0, y), xycoords=("axes fraction", "data"), xytext=(4, 0),
                            textcoords="offset points", va="center", fontsize=7.5, color="#7f0000")
        ax.axvline(0, color="black", lw=0.8, zorder=2)
        ax.set_yticks(ys)
        ax.set_yticklabels([r.label + ("" if r.confirmatory else "  (expl.)") for r in sub], fontsize=9)
        ax.set_ylim(-0.6, len(sub) - 0.4)
        lo_x, hi_x = min(xs_all), max(xs_all)
        pad = 0.08 * (hi_x - lo_x or 1.0)
        ax.set_xlim(lo_x - pad, hi_x + pad)
        ax.set_xlabel("effect in reference-arm SD units (d)" if unit == "d" else f"effect ({unit})", fontsize=9)
        ax.grid(axis="x", color="#eeeeee", zorder=0)
    h = [
        plt.Line2D([], [], color=_FREQ[0], marker=_FREQ[1], lw=2.2, label=f"frequentist: estimate, {ci_label}"),
        plt.Line2D([], [], color=_BAYES[0], marker=_BAYES[1], lw=2.2, label=f"Bayesian: posterior mean, {hdi_label}"),
        plt.Rectangle((0, 0), 1, 1, color=_ROPE, label="SESOI band = ROPE (no practical effect)"),
    ]
    axes[0, 0].legend(handles=h, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=1, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10, y=0.995)
    fig.tight_layout()
    return _save(fig, path)


@dataclass
class ArmPanel:
    """One measure on one item set: per-arm summary plus per-seed means (dots)."""

    measure: str
    arms: list[str]
    means: list[float | None]
    ci_low: list[float | None]
    ci_high: list[float | None]
    seed_means: dict[str, list[float]] = field(default_factory=dict)  # arm -> per-seed means
    reference_arm: str | None = None
    ylabel: str = ""


def per_arm_plot(panels: Sequence[ArmPanel], path: Path, title: str = "") -> Path:
    """Per-arm means (95% CI clustered by seed and item, `frequentist.arm_interval`) with each seed's mean as a dot.

    The reference arm's mean is drawn as a horizontal line so each arm's shift reads directly.
    """
    if not panels:
        raise ValueError("per_arm_plot needs at least one panel")
    plt = _plt()
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.1 * nrow), squeeze=False)
    for k, p in enumerate(panels):
        ax = axes[k // ncol, k % ncol]
        xs = list(range(len(p.arms)))
        for x, arm, m, lo, hi in zip(xs, p.arms, p.means, p.ci_low, p.ci_high):
            ref = arm == p.reference_arm
            col = "#4d4d4d" if ref else "#1f4e79"
            if _finite(lo, hi):
                ax.plot([x, x], [lo, hi], color=col, lw=2.0, zorder=3)
            if _finite(m):
                ax.plot(x, m, marker="s", color=col, ms=7, zorder=4)
            seeds = [v for v in p.seed_means.get(arm, []) if _finite(v)]
            if seeds:
                jit = [x + 0.18 + 0.05 * (i - (len(seeds) - 1) / 2) for i in range(len(seeds))]
                ax.scatter(jit, seeds, s=14, color="#b3541e", alpha=0.8, zorder=5)
        if p.reference_arm in p.arms:
            m = p.means[p.arms.index(p.reference_arm)]
            if _finite(m):
                ax.axhline(m, color="#4d4d4d", lw=0.8, ls="--", zorder=1)
        ax.axhline(0, color="black", lw=0.5, zorder=1)
        ax.set_xticks(xs)
        ax.set_xticklabels(p.arms, rotation=20 if len(p.arms) > 3 else 0, fontsize=9)
        ax.set_xlim(-0.5, len(p.arms) - 0.3)
        ax.set_title(p.measure, fontsize=10)
        ax.set_ylabel(p.ylabel or "score (positive = pro-change / trait)", fontsize=8)
        ax.grid(axis="y", color="#eeeeee", zorder=0)
    for k in range(len(panels), nrow * ncol):
        axes[k // ncol, k % ncol].axis("off")
    handles = [
        plt.Line2D([], [], color="#1f4e79", marker="s", lw=2, label="arm mean, 95% CI (seed x item clustered)"),
        plt.Line2D([], [], color="#b3541e", marker="o", lw=0, label="seed means"),
        plt.Line2D([], [], color="#4d4d4d", ls="--", lw=0.8, label="reference arm mean"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, path)


def loss_curves(curves: dict[str, list[tuple[float, float]]], path: Path, title: str = "") -> Path:
    """Training loss per cell (label -> [(step, loss)]), one line per cell."""
    if not curves:
        raise ValueError("loss_curves needs at least one curve")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for label, pts in sorted(curves.items()):
        pts = [(s, v) for s, v in pts if _finite(s, v)]
        if pts:
            ax.plot([s for s, _ in pts], [v for _, v in pts], lw=1.2, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.grid(color="#eeeeee")
    if len(curves) <= 12:
        ax.legend(fontsize=7, ncol=2, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=130, format="png")
    _plt().close(fig)
    tmp.replace(path)
    return path
