"""Unit tests of the report's small pieces (it reads no interval against the SESOI: tests/test_decide.py), number
formatting (missing is never 0), no statistic computed in reports/, figure files."""

from __future__ import annotations

import math

import pytest

from reports.renderer import _rebase_links, fmt_ci, fmt_num, fmt_p, md_cell


def test_formatting_missing_is_not_zero():
    assert fmt_num(None) == "n/a" and fmt_num(math.nan) == "n/a"
    assert fmt_num(0.0) == "0.00" and fmt_num(0.61, signed=True) == "+0.61" and fmt_num(-0.123, 3) == "-0.123"
    assert fmt_num(True) == "yes" and fmt_num(3) == "3"
    assert fmt_num(1.5e-5) == "1.5e-05"  # tiny values are not rounded to 0.00
    assert fmt_num(0.0057, signed=True) == "+0.0057"
    assert fmt_p(0.0004) == "< 0.001" and fmt_p(0.0312) == "0.031" and fmt_p(None) == "n/a"
    assert fmt_ci(-0.1, 0.25) == "[-0.10, +0.25]" and fmt_ci(None, 1.0) == "n/a"
    assert md_cell("a | b\nc") == "a \\| b c"


def test_report_computes_no_statistic():
    """The report formats results.json: it never reads the frame, builds item cells or grades an
    interval (the per-seed dots come from results.json arm_summaries[].seed_means, which the
    analysis writes after the preregistered exclusions)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "reports"
    for path in root.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for bad in ("read_parquet", "cell_frame", "groupby(", "frequentist_reading(", "np.percentile", ".mean()"):
            assert bad not in text, f"{path.name} computes a statistic ({bad})"


def test_rebase_links(tmp_path):
    interp, report = tmp_path / "interp", tmp_path / "report"
    (interp / "figures").mkdir(parents=True)
    report.mkdir()
    (interp / "figures" / "a.png").write_bytes(b"x")
    text = "![a](figures/a.png) [ok](../interp/figures/a.png) [web](https://x.org/a.png) [gone](figures/none.png)"
    out = _rebase_links(text, interp, report)
    assert out == "![a](../interp/figures/a.png) [ok](../interp/figures/a.png) [web](https://x.org/a.png) [gone](figures/none.png)"


def test_figures_are_pngs(tmp_path):
    from reports.figures import ArmPanel, ForestRow, forest_plot, loss_curves, per_arm_plot

    f = forest_plot([ForestRow("H1", "d", 0.2, (0.5, 0.2, 0.8), (0.4, 0.1, 0.7)),
                     ForestRow("H2", "raw", 0.05, (0.01, -0.02, 0.04), (None, None, None), bayes_usable=False)],
                    tmp_path / "f.png")
    a = per_arm_plot([ArmPanel("x", ["base", "a", "ref"], [0.1, None, 0.0], [0.0, None, -0.1], [0.2, None, 0.1],
                               {"a": [0.3, math.nan]}, "ref")], tmp_path / "a.png")
    c = loss_curves({"m/a/seed0": [(1, 2.0), (2, 1.5)]}, tmp_path / "c.png")
    for path in (f, a, c):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with pytest.raises(ValueError):
        forest_plot([], tmp_path / "empty.png")
