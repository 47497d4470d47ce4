"""Unit tests of the report's small pieces (it reads no interval against the SESOI: tests/test_decide.py), number
formatting (missing is never 0), per-seed means for the figures, figure files."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from reports.renderer import _frame_seed_means, _rebase_links, fmt_ci, fmt_num, fmt_p, md_cell


def test_formatting_missing_is_not_zero():
    assert fmt_num(None) == "n/a" and fmt_num(math.nan) == "n/a"
    assert fmt_num(0.0) == "0.00" and fmt_num(0.61, signed=True) == "+0.61" and fmt_num(-0.123, 3) == "-0.123"
    assert fmt_num(True) == "yes" and fmt_num(3) == "3"
    assert fmt_num(1.5e-5) == "1.5e-05"  # tiny values are not rounded to 0.00
    assert fmt_num(0.0057, signed=True) == "+0.0057"
    assert fmt_p(0.0004) == "< 0.001" and fmt_p(0.0312) == "0.031" and fmt_p(None) == "n/a"
    assert fmt_ci(-0.1, 0.25) == "[-0.10, +0.25]" and fmt_ci(None, 1.0) == "n/a"
    assert md_cell("a | b\nc") == "a \\| b c"


def test_seed_means_average_items_after_option_orders_and_skip_checkpoints(tmp_path):
    # seed 0: item b0 orders (1, 3) -> 2, item b1 (4) -> 4: seed mean 3; seed 1: item b0 -> -1
    # a step-5 checkpoint row must not enter the final-adapter dots
    base = {"model_label": "m", "arm": "eager", "measure": "x", "item_set": "target", "condition": "default",
            "persona": None, "checkpoint": "final"}
    rows = [
        dict(base, seed=0, item_id="b0", base_item="b0", value=1.0),
        dict(base, seed=0, item_id="b0", base_item="b0", value=3.0),
        dict(base, seed=0, item_id="b1", base_item="b1", value=4.0),
        dict(base, seed=1, item_id="b0", base_item="b0", value=-1.0),
        dict(base, seed=1, item_id="b0", base_item="b0", value=math.nan),  # missing: skipped, not 0
        dict(base, seed=0, item_id="b0", base_item="b0", value=100.0, checkpoint="step-5"),
        dict(base, arm="base", seed=None, item_id="b0", base_item="b0", value=0.5),
    ]
    p = tmp_path / "frame.parquet"
    pd.DataFrame(rows).to_parquet(p, index=False)
    got = _frame_seed_means(p)[("m", "x", "target", "default")]
    assert sorted(got["eager"]) == [-1.0, 3.0]
    assert got["base"] == [0.5]


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
