"""Step `validity`: sign agreement of each stance measure with the run's own forced choice on
source items, against the locked `thresholds.validity_min_agreement`."""

from __future__ import annotations


def step(state, prereg):
    from analysis import decide as D
    from analysis import results as R

    for v in D.measure_validity(state.fin, threshold=prereg.thresholds.validity_min_agreement):
        filt = v.pop("filters")
        state.validity.append(R.MeasureValidity(**v, source=state.source(filt, "sign agreement per (run, item) with the run's own forced choice")))
    return state
