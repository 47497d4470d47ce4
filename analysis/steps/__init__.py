"""The analysis as named steps over one state (load -> process -> model -> check -> communicate).

`analysis.cli.analyze_study` is a short loop: `start(...)` builds the State (guard, study,
prereg), then every step in `STEPS` runs as `state = step(state, prereg)`:

    frame -> exclusions -> missingness -> summaries -> effects -> multiplicity -> validity
          -> capability -> bayes -> verdicts -> results

Each step lives in its own module (`analysis/steps/<name>.py`), reads what earlier steps left on
the state and adds its own part; after every step `State.save` rewrites
`runs/<study>/analysis/state.json` (the steps done, their seconds and what each added), so a
failed analysis says how far it got. Every comparison of an interval with the SESOI/ROPE is made
by `analysis.decide` (the `verdicts` step, and `analysis.bayes` for its HDI+ROPE verdict).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from leaklab.runstore import FRAME_REL  # noqa: F401  (re-exported: runs/<study>/analysis/frame.parquet)


@dataclass
class Options:
    exploratory: bool = False
    bayes: bool = True
    n_boot: int | None = None
    draws: int | None = None
    tune: int | None = None
    chains: int | None = None


@dataclass
class State:
    """Everything the steps share. Steps add to it; none removes what an earlier step wrote."""

    study: Any
    prereg: Any
    guard: Any
    opts: Options
    log: Callable[[str], None]
    out_dir: Path
    warnings: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    # frame, exclusions, missingness
    df: Any = None  # every score row, `excluded` names the exclusion that removed it
    report: Any = None  # analysis.frame.FrameReport
    frame_sha: str | None = None
    use: Any = None  # rows not excluded
    cells: Any = None  # item cells of `use` (option orders averaged; unbalanced cells set missing)
    fin: Any = None  # final-checkpoint cells
    frame_info: Any = None
    breaches: dict[tuple[str, str, str], list[str]] = field(default_factory=dict)  # (model, measure, item set)
    censored: list[dict[str, Any]] = field(default_factory=list)
    unbalanced: list[dict[str, Any]] = field(default_factory=list)
    # summaries, effects, multiplicity, validity, bayes, verdicts
    summaries: list[Any] = field(default_factory=list)
    hyp_models: list[tuple[Any, str]] = field(default_factory=list)
    effects: dict[str, Any] = field(default_factory=dict)
    hyp_effect: dict[tuple[str, str], str] = field(default_factory=dict)
    raw_p: dict[str, dict[str, float | None]] = field(default_factory=dict)  # effect id -> test -> p
    validity: list[Any] = field(default_factory=list)
    fits: dict[str, Any] = field(default_factory=dict)
    hyp_fit: dict[tuple[str, str], str] = field(default_factory=dict)
    bayes_summary: dict[tuple[str, str], dict] = field(default_factory=dict)
    capability: Any = None  # results.Capability (step `capability`): capability per arm, the arms flagged
    decisions: list[Any] = field(default_factory=list)
    manipulation: list[Any] = field(default_factory=list)
    results: Any = None

    @property
    def runs(self) -> Path:
        return self.study.runs_dir

    def source(self, filters: dict, note: str = ""):
        """Source of a number: the exact frame filters used, with row / missing / excluded counts."""
        from analysis import results as R
        from analysis.frame import select

        full = {"checkpoint": "final", "excluded": "", **filters}
        sel = select(self.df, {k: v for k, v in full.items() if k != "excluded"})
        kept = sel[sel["excluded"] == full["excluded"]]
        return R.Source(frame=FRAME_REL, filters=full, n_rows=len(kept), n_missing=int(kept["value"].isna().sum()),
                        n_excluded=len(sel) - len(kept), note=note)

    def rel(self, path: str | Path) -> str:
        try:
            return str(Path(path).resolve().relative_to(Path(self.runs).resolve()))
        except ValueError:
            return str(path)

    def save(self) -> None:
        """runs/<study>/analysis/state.json: how far the analysis got and what each step added."""
        from leaklab.runstore import atomic_write_json

        atomic_write_json(self.out_dir / "state.json", {"study": self.study.name, "steps": self.steps,
                                                       "n_warnings": len(self.warnings)})


def start(study_dir: str | Path, opts: Options, log: Callable[[str], None] = lambda s: None) -> State:
    """The guard, the study and its prereg (the `frame` step reads only the logs custody accepts)."""
    import prereg
    from leaklab.runstore import analysis_dir
    from leaklab.study import load_study

    guard = prereg.guard(study_dir, exploratory=opts.exploratory)
    study = load_study(study_dir)
    pre = prereg.load_prereg(study.folder, study)
    st = State(study=study, prereg=pre, guard=guard, opts=opts, log=log, out_dir=analysis_dir(study.runs_dir))
    if guard.exploratory:
        st.warnings.append("EXPLORATORY: " + (guard.stamp if not guard.problems else
                                              "no verifying lock: " + "; ".join(guard.problems[:3])))
    return st


def pipeline() -> list[tuple[str, Callable[[State, Any], State]]]:
    from analysis.steps import (bayes, capability, effects, exclusions, frame, missingness, multiplicity, results,
                                summaries, validity, verdicts)

    return [("frame", frame.step), ("exclusions", exclusions.step), ("missingness", missingness.step),
            ("summaries", summaries.step), ("effects", effects.step), ("multiplicity", multiplicity.step),
            ("validity", validity.step), ("capability", capability.step), ("bayes", bayes.step),
            ("verdicts", verdicts.step), ("results", results.step)]


def run_step(name: str, fn: Callable[[State, Any], State], state: State) -> State:
    t0 = time.perf_counter()
    n_warn = len(state.warnings)
    state = fn(state, state.prereg)
    state.steps.append({"step": name, "seconds": round(time.perf_counter() - t0, 3),
                        "warnings": state.warnings[n_warn:]})
    state.save()
    return state


STEP_NAMES = ("frame", "exclusions", "missingness", "summaries", "effects", "multiplicity", "validity", "capability",
              "bayes", "verdicts", "results")
