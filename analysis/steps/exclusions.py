"""Step `exclusions`: the preregistered exclusions, then the item cells every later number uses.

`excluded` names the first exclusion that removed a row; frame.parquet keeps every row. Item
cells average option orders and epochs (analysis.frame.cell_frame); a cell whose option orders
were not all parsed keeps one order's position bias, so it is NOT averaged as if balanced: its
value is set missing here and counted per run x measure (`State.unbalanced`, results.json
frame.unbalanced_by_cell). Where an item holds several pairs (the token measure's word pairs),
balance is kept per pair: a pair parsed in one order only is left out of the cell. The Bayesian
models read score rows, where the option-order term absorbs the bias, so their rows stay.
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


def variant_of(use):
    """Which counterbalanced pair each row belongs to: its sample id without the option order (the
    token measure asks four word pairs of each item: 'item:go-wait:pro_first' -> 'item:go-wait';
    a letter sample 'item:pro_first' -> 'item', the cell itself)."""
    sid = use["sample_id"].astype(str)
    order = use["option_order"].fillna("").astype(str)
    return [s[: -len(o) - 1] if o and s.endswith(":" + o) else s for s, o in zip(sid, order)]


def orphan_rows(use):
    """Boolean Series over use's rows: True for the parsed rows of a variant (see `variant_of`)
    whose other option order is unparsed. Averaged into their item cell they would carry that
    pair's position bias; left out, the cell averages only balanced pairs."""
    import pandas as pd

    from analysis.frame import CELL_KEYS

    if use.empty:
        return pd.Series([], dtype=bool)
    v = use.assign(_v=variant_of(use), _o=use["option_order"].fillna("").astype(str))
    keys = CELL_KEYS + ["_v"]
    present = v.groupby(keys, dropna=False)["_o"].transform("nunique")
    parsed = v["_o"].where(v["value"].notna()).groupby([v[k] for k in keys], dropna=False).transform("nunique")
    return ((parsed < present) & v["value"].notna()).set_axis(use.index)


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
        orphans = orphan_rows(use)
        if orphans.any():  # several pairs per item: average the balanced ones only
            balanced = cell_frame(use.assign(value=use["value"].mask(orphans)))
            cells["value"] = balanced["value"].to_numpy()
            state.warnings.append(f"{int(orphans.sum())} score row(s) whose counterbalanced partner (same item and word "
                                  "pair, other option order) was unparsed were left out of their item cells")
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
