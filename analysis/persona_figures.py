"""Persona-leakage figures (issue 16): the hero figure of the persona family.

One panel per source persona: each bystander persona's marker rate (Wilson 95% interval over
its scored completions) against its base-model cosine to the source, the least-squares line
with a pointwise bootstrap band over personas, and the source's Spearman rho with its bootstrap
interval in the panel title. Figures are written by `leaklab interp --what persona` into
runs/<study>/interp/figures/ and linked from its SECTION.md.
"""

from __future__ import annotations

import io
from pathlib import Path

COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


def hero_figure(pairs, fits: dict, per_source: dict, layer: int, note: str = ""):
    """pairs: (source, persona, cosine, marker_rate, lo, hi); fits: source -> fitted_band dict;
    per_source: source -> {rho, ci, p_perm, n}. Returns the matplotlib figure."""
    plt = _plt()
    sources = sorted(pairs["source"].unique())
    n = max(1, len(sources))
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False, sharey=True)
    for j, src in enumerate(sources):
        ax = axes[j // cols][j % cols]
        colour = COLOURS[j % len(COLOURS)]
        g = pairs[pairs["source"] == src]
        if {"lo", "hi"} <= set(g.columns):
            yerr = [(g["marker_rate"] - g["lo"]).clip(lower=0), (g["hi"] - g["marker_rate"]).clip(lower=0)]
            ax.errorbar(g["cosine"], g["marker_rate"], yerr=yerr, fmt="o", ms=3.5, color=colour, ecolor=colour,
                        elinewidth=0.6, alpha=0.8, capsize=0)
        else:
            ax.scatter(g["cosine"], g["marker_rate"], s=14, color=colour)
        f = fits.get(src) or {}
        if f.get("fit") is not None:
            ax.plot(f["grid"], f["fit"], color=colour, lw=1.5)
            ax.fill_between(f["grid"], f["lo"], f["hi"], color=colour, alpha=0.2, lw=0)
        s = per_source.get(src) or {}
        ci = s.get("ci") or [None, None]
        ax.set_title(f"source: {src}\nrho {_fmt(s.get('rho'))} [{_fmt(ci[0])}, {_fmt(ci[1])}], n={s.get('n', len(g))}", fontsize=9)
        ax.set_xlabel(f"cosine to source (layer {layer}, centred)", fontsize=8)
        if j % cols == 0:
            ax.set_ylabel("marker rate (Wilson 95%)", fontsize=8)
        ax.tick_params(labelsize=7)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    if note:
        fig.suptitle(note, fontsize=8, y=1.0)
    fig.tight_layout()
    return fig


def cosine_heatmap(cos, names, layer: int):
    plt = _plt()
    n = len(names)
    fig, ax = plt.subplots(figsize=(min(12, 2 + 0.25 * n), min(12, 2 + 0.25 * n)))
    im = ax.imshow(cos, vmin=-1, vmax=1, cmap="RdBu_r")
    if n <= 60:
        ax.set_xticks(range(n), names, rotation=90, fontsize=6)
        ax.set_yticks(range(n), names, fontsize=6)
    ax.set_title(f"persona centroid cosines, layer {layer}")
    fig.colorbar(im, ax=ax, shrink=0.7)
    return fig


def layer_selection_figure(selection: dict):
    """Pooled rho per candidate layer on the selection half of the questions; the chosen layer marked."""
    plt = _plt()
    rows = selection["by_layer"]
    fig, ax = plt.subplots(figsize=(5, 3))
    ls = [r["layer"] for r in rows]
    ax.plot(ls, [r["pooled_rho"] if r["pooled_rho"] is not None else float("nan") for r in rows], "o-", color="black", label="pooled")
    srcs = sorted({s for r in rows for s in r["per_source_rho"]})
    for j, s in enumerate(srcs):
        ax.plot(ls, [r["per_source_rho"].get(s) if r["per_source_rho"].get(s) is not None else float("nan") for r in rows],
                ".--", color=COLOURS[j % len(COLOURS)], lw=0.8, label=s)
    if selection.get("chosen_layer") is not None:
        ax.axvline(selection["chosen_layer"], color="grey", ls=":")
    ax.set_xlabel("layer")
    ax.set_ylabel("Spearman rho (selection questions)")
    ax.legend(fontsize=7)
    return fig


def save(fig, figs_dir: Path, name: str) -> str:
    """Write a figure as PNG atomically under figs_dir; the path relative to the interp folder."""
    from leaklab.runstore import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(Path(figs_dir) / name, buf.getvalue())
    _plt().close(fig)
    return f"figures/{name}"
