"""Step `frame`: the tidy frame of every score row of the logs custody accepts
(`analysis.frame.read_study_frame`: ledgered, bound to the lock, unaltered)."""

from __future__ import annotations


def step(state, prereg):
    from analysis.frame import read_study_frame
    from leaklab.yamlio import ConfigError

    state.log(f"reading the ledgered logs under {state.runs / 'logs'}")
    df, rep = read_study_frame(state.study, state.guard)  # custody: only ledgered, bound, unaltered logs
    if df.empty:
        raise ConfigError(f"{state.runs / 'logs'}: the logs hold no leaklab scores (no Score with 'measure' metadata)")
    if rep.skipped:
        state.warnings.append(f"{len(rep.skipped)} log(s) not read: " + "; ".join(rep.skipped[:5]))
    if rep.n_scores_without_measure:
        state.warnings.append(f"{rep.n_scores_without_measure} scores without 'measure' metadata were ignored")
    state.df, state.report = df, rep
    return state
