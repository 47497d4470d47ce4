"""Step `exclusions`: the preregistered exclusions, then the item cells every later number uses.

`excluded` names the first exclusion that removed a row; frame.parquet keeps every row. Item
cells average option orders and epochs (analysis.frame.cell_frame); a cell whose option orders
were not all parsed keeps one order's position bias, so it is NOT averaged as if balanced: its
value is set missing here and counted per run x measure (`State.unbalanced`, results.json
frame.unbalanced_by_cell). The Bayesian models read score rows, where the option-order term
absorbs the bias, so their rows stay.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def unbalanced_cells(use):
    """Boolean Series over cell_frame(use)'s rows: True where the cell's rows span more option
    orders than its parsed rows do (one order unparsed). Cells without option orders are balanced."""
    import pandas as pd

    from analysis.frame import CELL_KEYS

    if use.empty:
        return pd.Series([], dtype=bool)
    orders = use.assign(_o=use["option_order"].fillna("").astype(str))
    g = orders.groupby(CELL_KEYS, dropna=False, sort=True)
    present = g["_o"].nunique()
    parsed = orders[orders["value"].notna()].groupby(CELL_KEYS, dropna=False, sort=True)["_o"].nunique()
    parsed = parsed.reindex(present.index).fillna(0)
    return ((parsed > 0) & (parsed < present)).reset_index(drop=True)


def step(state, prereg):
    from analysis.frame import cell_frame, write_frame

    df = state.df
    df["excluded"] = ""
    for x in prereg.exclusions:
        m = x.parsed.mask(df).to_numpy()
        if x.applies_to:
            m &= df["measure"].isin(x.applies_to).to_numpy()
        df.loc[m & (df["excluded"] == "").to_numpy(), "excluded"] = x.id
    state.frame_sha = write_frame(df, state.out_dir / "frame.parquet")
    use = df[df["excluded"] == ""]
    cells = cell_frame(use)
    if "option_order" in use.columns and len(cells):
        bad = unbalanced_cells(use).to_numpy()
        cells["unbalanced"] = bad
        if bad.any():
            cells.loc[bad, "value"] = np.nan
            for key, sub in cells[bad].groupby(["model_label", "arm", "seed", "measure", "item_set"], dropna=False):
                ml, arm, seed, measure, iset = key
                state.unbalanced.append({"model_label": ml, "arm": arm, "seed": None if pd.isna(seed) else int(seed),
                                         "measure": measure, "item_set": iset, "n_cells": int(len(sub))})
            state.warnings.append(f"{int(bad.sum())} item cell(s) had one option order unparsed: set missing, not "
                                  "averaged as if balanced (frame.unbalanced_by_cell)")
    else:
        cells["unbalanced"] = False
    state.use, state.cells = use, cells
    state.fin = cells[cells["checkpoint"] == "final"]
    return state
