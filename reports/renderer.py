"""Render `runs/<study>/report/{REPORT.md, PLAIN_SUMMARY.md, figures/*.png}` from the analysis.

The report reads only artifacts of earlier stages (results.json, the lock and its deviations
chain, train manifests, corpus provenance, interp/SECTION.md) and never recomputes a statistic
nor grades an interval: every number it prints is copied from one of those files (the per-seed
dots of the arm figures from results.json's arm summaries, written after the preregistered
exclusions; frame.parquet is only cited), every reading is analysis.decide's, and every
file it reads is listed in the artifact table with its sha256 (`ArtifactIndex`). Tables cite
their file by artifact id (A1, A2, ...), so a reader can trace any number.

It goes through `prereg.guard` like analysis does: an unlocked, stale or tampered study is
refused, unless `exploratory=True`, which stamps the whole report EXPLORATORY. Results
produced under another lock digest than the current one are refused (re-run analyze).

The title's claim is derived from the confirmatory decisions only (see `claim_and_confidence`),
so the headline can never say more than the preregistered rules concluded.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leaklab.io import file_sha256
from leaklab.mdsafe import Trusted, fmt_ci, fmt_num, fmt_p  # noqa: F401  (the number filters; re-exported)

from leaklab.yamlio import ConfigError
from reports.capability import capability_context

TEMPLATES = Path(__file__).resolve().parent / "templates"
# measures that are capability / safety checks rather than the studied trait
# (tasks/capability.py: perplexity, refusal, fluency); a measure a hypothesis names is never one
SAFETY_PREFIXES = ("perplexity", "refusal", "fluency", "capability")
ENV_PACKAGES = ["leaklab", "torch", "transformers", "peft", "inspect-ai", "pymc", "arviz", "numpy", "pandas",
                "scipy", "matplotlib", "jinja2", "pydantic"]


# --------------------------------------------------------------------------- artifacts

@dataclass
class Artifact:
    id: str
    path: Path  # absolute
    display: str  # relative to runs/<study>/ (or the repo root for files outside it)
    link: str  # relative to the report folder, for markdown links
    sha256: str | None
    sections: list[str] = field(default_factory=list)
    what: str = ""

    @property
    def exists(self) -> bool:
        return self.path.exists()


class ArtifactIndex:
    """Every file the report read, numbered in first-use order; tables cite the id."""

    def __init__(self, study_runs: Path, report_dir: Path, repo_root: Path):
        self.study_runs = Path(study_runs).resolve()
        self.report_dir = Path(report_dir).resolve()
        self.repo_root = Path(repo_root).resolve()
        self._by_path: dict[Path, Artifact] = {}

    def use(self, path: Path, section: str, what: str = "") -> Artifact:
        path = Path(path).resolve()
        art = self._by_path.get(path)
        if art is None:
            if not path.exists():
                raise ConfigError(f"{path}: the report cites this file but it does not exist")
            for root, prefix in ((self.study_runs, f"runs/{self.study_runs.name}/"), (self.repo_root, "")):
                try:
                    display = prefix + path.relative_to(root).as_posix()
                    break
                except ValueError:
                    continue
            else:
                display = str(path)
            art = Artifact(
                id=f"A{len(self._by_path) + 1}", path=path, display=display,
                link=_relpath(path, self.report_dir), sha256=file_sha256(path) if path.is_file() else None, what=what,
            )
            self._by_path[path] = art
        if section not in art.sections:
            art.sections.append(section)
        if what and not art.what:
            art.what = what
        return art

    def all(self) -> list[Artifact]:
        return list(self._by_path.values())


def _relpath(path: Path, start: Path) -> str:
    import os

    return Path(os.path.relpath(path, start)).as_posix()


# --------------------------------------------------------------------------- formatting (jinja filters)

def md_cell(text: Any) -> str:
    """Make text safe inside a markdown table cell (one line, no bare pipes)."""
    s = " ".join(str(text if text is not None else "").split())
    return s.replace("|", "\\|")


# --------------------------------------------------------------------------- verdicts

VERDICT_WORDS = {
    "supported": "supported",
    "not_supported": "not supported",
    "equivalent": "practically no effect (equivalent)",
    "inconclusive": "undecided",
    "undecided": "undecided",
    "unusable": "unusable (diagnostics/data quality)",
    "not_interpretable": "not interpretable (a required manipulation check did not pass)",
}


@dataclass
class VerdictRow:
    """One hypothesis x model, with both frameworks' numbers side by side."""

    hypothesis_id: str
    kind: str
    statement: str
    estimand: str
    measure: str
    item_set: str
    model_label: str
    sesoi: float | None
    sesoi_unit: str
    direction: str | None
    freq: dict[str, Any]
    bayes: dict[str, Any]
    decision: str
    decision_words: str
    reason: str
    rule: str
    source: str  # "A1: decisions[H1]" etc.
    # preregistered power (prereg.yaml power.results), e.g. "1.5x SESOI at 80%": the smallest
    # simulated effect, in SESOI multiples, that the rule detects with the target probability
    power: str | None = None
    gates: list[str] = field(default_factory=list)  # why unusable / not_interpretable (results.json)
    requires: list[str] = field(default_factory=list)
    against_prediction: bool = False  # the CI excludes 0 against the prediction (analysis' reading)
    p_against: float | None = None  # its multiplicity-adjusted p
    p_reading: float | None = None  # adjusted p of the reading that fired


def _bayes_contrast(results, fit_ids: list[str], contrast: str, model_label: str):
    for fid in fit_ids:
        try:
            fit = results.bayes_fit(fid)
        except KeyError:
            continue
        if fit.model_label != model_label:
            continue
        for c in fit.contrasts:
            if c.name == contrast:
                return fit, c
    return None, None


def verdict_rows(results, prereg, results_art: Artifact) -> list[VerdictRow]:
    rows = []
    hyps = {h.id: h for h in prereg.hypotheses} if prereg is not None else {}
    for d in results.decisions:
        h = hyps.get(d.hypothesis_id)
        effects = []
        for eid in d.effect_ids:
            try:
                effects.append(results.effect(eid))
            except KeyError:
                pass
        dec_model = getattr(d, "model_label", None)
        if dec_model is not None:
            effects = [e for e in effects if e.model_label == dec_model]
        if not effects:
            effects = [None]
        for e in effects:
            sesoi = h.sesoi.value if h else (e.sesoi_d if e else None)
            unit = h.sesoi.unit if h else "d"
            direction = h.direction if h else (e.direction if e else None)
            freq: dict[str, Any] = {}
            model_label = e.model_label if e else ""
            if e is not None:
                d_scale = unit == "d"
                lo, hi = (e.ci_low_d, e.ci_high_d) if d_scale else (e.ci_low, e.ci_high)
                freq = {
                    "estimate": e.d if d_scale else e.estimate, "lo": lo, "hi": hi, "p": e.p_value,
                    "p_adj": e.p_adjusted, "p_min_effect": e.p_min_effect, "p_tost": e.p_tost,
                    "sd_ok": e.sd_ref_ok, "sd_reason": e.sd_ref_reason, "effect_id": e.id,
                    # the analysis' own reading (the decision module's, after multiplicity): never re-read here
                    "reading": d.frequentist_reading or ("refused (degenerate reference SD)" if not e.sd_ref_ok and d_scale
                                                         else "n/a"),
                }
            bayes: dict[str, Any] = {}
            fit, c = _bayes_contrast(results, d.bayes_ids, e.contrast if e else "", model_label)
            if c is not None:
                d_scale = unit == "d"  # the hypothesis' SESOI unit decides the scale shown, for both frameworks
                bayes = {
                    "mean": c.mean_d if d_scale else c.mean, "lo": c.hdi_low_d if d_scale else c.hdi_low,
                    "hi": c.hdi_high_d if d_scale else c.hdi_high, "p_in_rope": c.p_in_rope, "verdict": c.verdict,
                    "usable": fit.usable, "gate": "passed" if fit.diagnostics.passed else "FAILED",
                    "reading": getattr(d, "bayes_reading", None) or c.verdict,
                    "fit_id": fit.id, "hdi_prob": c.hdi_prob,
                }
            rows.append(VerdictRow(
                hypothesis_id=d.hypothesis_id, kind=d.kind, statement=d.statement or (h.statement if h else ""),
                estimand=(h.estimand + (f" ({h.pro_arm} vs {h.anti_arm})" if h.pro_arm else "")) if h else (e.contrast if e else ""),
                measure=h.measure if h else (e.measure if e else ""), item_set=h.item_set if h else (e.item_set if e else ""),
                model_label=model_label or (dec_model or ""), sesoi=sesoi, sesoi_unit=unit, direction=direction, freq=freq, bayes=bayes,
                decision=d.verdict, decision_words=_words(d), reason=d.reason, rule=d.rule,
                source=f"{results_art.id}: decisions[{d.hypothesis_id}]",
                power=_power_of(prereg, d.hypothesis_id), gates=list(d.gates), requires=list(d.requires),
                against_prediction=d.against_prediction, p_against=d.p_against,
                p_reading=(d.numbers or {}).get("p_reading"),
            ))
    return rows


def _power_of(prereg, hid: str) -> str | None:
    """The detectable effect at the prereg's target power, in SESOI multiples. Not the power at
    1 x SESOI: a minimum-effect test detects an effect exactly at the SESOI about alpha/2 of
    the time by construction, so that number says nothing about the design."""
    if prereg is None or prereg.power is None or prereg.power.results.get(hid) is None:
        return None
    r, target = prereg.power.results[hid], prereg.power.target_power
    k = r.multiple_for(target)
    if k is not None:
        return f"{k:g}x SESOI at {target:.0%}"
    top = max((p.multiple for p in r.curve), default=0)
    return f"not reached by {top:g}x SESOI ({target:.0%})"


@dataclass
class Claim:
    title: str
    confidence: str  # low / moderate / high
    reasons: list[str]
    supported: list[str]
    n_confirmatory: int


def _is_cap(gate: str) -> bool:
    from analysis.decide import CAPABILITY_GATE

    return gate.startswith(CAPABILITY_GATE)


def _words(d) -> str:
    if d.verdict == "not_interpretable" and d.gates and all(_is_cap(g) for g in d.gates):
        return "not interpretable (an arm it compares lost capability past the preregistered bound)"
    return VERDICT_WORDS.get(d.verdict, d.verdict)


def _failed_checks(results) -> str:
    """'' when every manipulation check passed or there is one; else which did not, e.g.
    'M1 on smollm2/pirate (1 of 3 checks)'. A report must not say "the manipulation check did not
    pass" when two of three did."""
    checks = results.manipulation_checks
    failed = [m for m in checks if m.passed is False]
    if not failed or len(checks) < 2:
        return ""
    names = ", ".join(f"{m.hypothesis_id or m.measure} on {m.model_label}/{m.item_set}" for m in failed)
    return f"{names} ({len(failed)} of {len(checks)} checks)"


def _why_not_interpreted(conf) -> str:
    """'the manipulation check M1 did not pass' / 'arm pirate lost capability past the preregistered bound' / both."""
    gates = [g for d in conf if d.verdict == "not_interpretable" for g in d.gates]
    checks = sorted({g.split(" ")[0] for g in gates if not _is_cap(g)})
    arms = sorted({g.split(" ")[2] for g in gates if _is_cap(g)})  # "capability: arm <arm> (<model>) ..."
    out = [f"the manipulation check {', '.join(checks)} did not pass"] if checks else []
    if arms:
        out.append(f"arm {', '.join(arms)} lost capability past the preregistered bound")
    return " and ".join(out)


def _ni_note(conf, lead: str = ";") -> str:
    """'; the manipulation check M1 did not pass, so H1 is not interpreted' (empty when none is)."""
    ni = sorted({d.hypothesis_id for d in conf if d.verdict == "not_interpretable"})
    if not ni:
        return ""
    return f"{lead} {_why_not_interpreted(conf)}, so {', '.join(ni)} {'is' if len(ni) == 1 else 'are'} not interpreted"


def claim_and_confidence(study, results, vrows: list[VerdictRow], manip_ok: bool | None,
                         exploratory: bool) -> Claim:
    """The title claim follows the confirmatory decisions, never more.

    Supported hypotheses are stated; with none supported the title says the effect was not
    shown at this scale (or, when every one was equivalent, that it was practically absent).
    The confidence grade is the analysis' (results.json `confidence`, analysis.decide.confidence):
    the report grades nothing itself.
    """
    conf = [d for d in results.decisions if d.kind == "confirmatory"]
    supported = [d for d in conf if d.verdict == "supported"]
    from leaklab.families import family

    noun = family(study.spec.family).noun
    scale = study.spec.title or study.name
    hyp_word = "hypothesis" if len(conf) == 1 else "hypotheses"
    if not conf:
        title = f"{scale}: no confirmatory hypothesis was tested"
    elif supported:
        def stated(ds) -> str:  # the hypotheses' statements on one line each, joined
            return "; ".join(" ".join(d.statement.split()).rstrip(".") or d.hypothesis_id for d in ds)

        stmts = stated(supported)
        title = f"{stmts} ({len(supported)} of {len(conf)} confirmatory {hyp_word} supported)"
        equivalent = [d for d in conf if d.verdict == "equivalent"]
        # a leak declined is a finding too: the title states it beside the one found, and says
        # whether the absence was the prediction (two-sided: a placebo) or refutes one (directional)
        direction = {r.hypothesis_id: r.direction for r in vrows}
        for predicted, words in ((False, "where none was predicted"), (True, "where one was predicted")):
            eqs = [d for d in equivalent if (direction.get(d.hypothesis_id) not in (None, "two_sided")) == predicted]
            if eqs:
                title += f"; and practically no effect {words}: {stated(eqs)} ({len(eqs)} equivalent within the SESOI)"
    elif all(d.verdict in ("unusable", "not_interpretable") for d in conf) and any(d.verdict == "not_interpretable" for d in conf):
        title = (f"{noun} could not be interpreted: {_why_not_interpreted(conf)} "
                 f"(0 of {len(conf)} confirmatory {hyp_word} supported) - {scale}")
    elif all(d.verdict == "unusable" for d in conf):
        which = "the confirmatory hypothesis was" if len(conf) == 1 else f"all {len(conf)} confirmatory hypotheses were"
        title = f"{noun} could not be assessed ({which} unusable: diagnostics, data quality or measure validity) - {scale}"
    elif all(d.verdict == "equivalent" for d in conf):
        title = f"{noun} was practically absent at this scale (all {len(conf)} confirmatory hypotheses equivalent within the SESOI) - {scale}"
    elif any(d.verdict == "not_supported" for d in conf):
        opp = ", ".join(sorted({d.hypothesis_id for d in conf if d.verdict == "not_supported"}))
        title = (f"{noun} was not shown at this scale: {opp} found an effect opposite to the prediction{_ni_note(conf)} "
                 f"(0 of {len(conf)} confirmatory {hyp_word} supported) - {scale}")
    else:
        title = (f"{noun} was not shown at this scale{_ni_note(conf, ':')} (0 of {len(conf)} confirmatory {hyp_word} "
                 f"supported) - {scale}")
    graded = results.confidence or {}
    level = graded.get("level", "not graded")
    reasons = list(graded.get("reasons") or ["results.json carries no confidence grade (written before schema 2): "
                                             "re-run `leaklab analyze`"])
    if exploratory and not results.exploratory:
        reasons.insert(0, "the report was rendered without a verified lock (EXPLORATORY)")
    return Claim(title=title, confidence=level, reasons=reasons, supported=[d.hypothesis_id for d in supported],
                 n_confirmatory=len(conf))


# --------------------------------------------------------------------------- lock and chain

def lock_context(study, guard, arts: ArtifactIndex) -> dict[str, Any]:
    """The lock file and the deviations chain, as the prereg package verified them.

    With a verified guard the chain is the one `prereg.guard` checked; in exploratory mode the
    lock may be missing or broken, so the chain is read and checked here and its problems shown.
    """
    from prereg.deviations import chain_path, chain_problems, read_chain
    from prereg.schema import PreregError

    out: dict[str, Any] = {"present": False, "digest": guard.digest, "chain": [], "chain_valid": None,
                           "chain_error": "", "problems": list(guard.problems)}
    if study.lock_path.exists():
        art = arts.use(study.lock_path, "Preregistration and lock", "lock: digest, components, time, commit")
        try:
            data = json.loads(study.lock_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            data = {}
        git = data.get("git") or {}
        out.update(present=True, art=art.id, digest=guard.digest or data.get("digest"),
                   locked_utc=data.get("locked_at"), git_commit=git.get("commit"), git_dirty=git.get("dirty"),
                   leaklab_version=data.get("leaklab_version"), components=data.get("components") or {})
    cpath = chain_path(study.folder)
    if guard.chain:
        out.update(chain=list(guard.chain), chain_valid=True)
    elif cpath.exists():
        try:
            entries = read_chain(cpath)
            probs = chain_problems(entries, cpath)
            out.update(chain=entries, chain_valid=not probs, chain_error="; ".join(probs))
        except PreregError as exc:
            out.update(chain_valid=False, chain_error=str(exc))
    if cpath.exists():
        out["chain_art"] = arts.use(cpath, "Preregistration and lock", "deviations chain (hash-linked lock/amend entries)").id
    out["chain"] = [dict(e, changed_names=[f"{c.get('component')} ({c.get('change')})" for c in e.get("changed") or []])
                    for e in out["chain"]]
    return out


# --------------------------------------------------------------------------- environment

def environment() -> dict[str, Any]:
    from importlib import metadata

    from leaklab.study import REPO_ROOT

    versions = {}
    for pkg in ENV_PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    commit, dirty = None, None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=10)
        dirty = bool(st.stdout.strip()) if st.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"python": platform.python_version(), "platform": platform.platform(), "versions": versions,
            "git_commit": commit, "git_dirty": dirty}


# --------------------------------------------------------------------------- the context

def _train_cells(study, arts: ArtifactIndex) -> list[dict[str, Any]]:
    from leaklab.io import read_jsonl
    from leaklab.runstore import train_dir

    cells = []
    for model, arm, seed in study.cells():
        folder = train_dir(study.runs_dir, model.run_label, arm, seed)
        man = folder / "manifest.json"
        row: dict[str, Any] = {"model": model.run_label, "arm": arm, "seed": seed, "done": (folder / "DONE").exists()}
        if man.exists():
            a = arts.use(man, "Setup: training and compute", "train manifest: config, data sha256, versions, wall time")
            m = json.loads(man.read_text(encoding="utf-8"))
            row.update(art=a.id, wall_s=m.get("wall_s"), tokens_per_s=m.get("tokens_per_s"),
                       data_sha256=m.get("data_sha256"), git_commit=m.get("git_commit"), versions=m.get("versions") or {},
                       steps=m.get("steps") if m.get("steps") is not None else (m.get("checkpoints") or [None])[-1],
                       n_examples=m.get("n_examples"), truncated=m.get("truncated_examples"),
                       dropped=len(m.get("dropped_examples") or []))
        loss = folder / "loss.jsonl"
        if loss.exists():
            pts = []
            for r in read_jsonl(loss, "loss log", torn_tail_ok=True):
                s, v = r.get("step"), r.get("loss")
                if isinstance(s, (int, float)) and isinstance(v, (int, float)):
                    pts.append((float(s), float(v)))
            if pts:
                a = arts.use(loss, "Setup: training and compute", "training loss per step")
                row.update(loss=pts, loss_art=a.id, final_loss=pts[-1][1])
        cells.append(row)
    return cells


def _corpora(study, arts: ArtifactIndex) -> list[dict[str, Any]]:
    out = []
    data = study.runs_dir / "data"
    for arm, spec in study.spec.arms.items():
        if spec.corpus is None:
            continue
        row: dict[str, Any] = {"arm": arm, "source": spec.corpus.path or
                               f"builder `{spec.corpus.builder}` {json.dumps(spec.corpus.builder_args, sort_keys=True)}"}
        meta = data / f"{arm}.meta.json"
        if meta.exists():
            a = arts.use(meta, "Setup: data", "corpus provenance: builder, counts, sha256")
            m = json.loads(meta.read_text(encoding="utf-8"))
            n = next((m[k] for k in ("n_records", "n_docs", "count", "n") if isinstance(m.get(k), int)), None)
            row.update(art=a.id, n=n, sha256=m.get("sha256"), template_version=m.get("template_version"))
        out.append(row)
    vr = data / "validation_report.json"
    if vr.exists():
        a = arts.use(vr, "Setup: data", "corpus validation gates")
        for r in out:
            r["validation_art"] = a.id
    return out


def _validation_gates(study) -> tuple[bool | None, list[dict[str, Any]]]:
    vr = study.runs_dir / "data" / "validation_report.json"
    if not vr.exists():
        return None, []
    rep = json.loads(vr.read_text(encoding="utf-8"))
    gates = rep.get("gates", [])
    if isinstance(gates, dict):
        gates = [dict(name=k, **(v if isinstance(v, dict) else {"value": v})) for k, v in gates.items()]
    return rep.get("passed"), [g for g in gates if isinstance(g, dict)]


def _is_safety(measure: str) -> bool:
    return measure.startswith(SAFETY_PREFIXES)


def _arm_order(study, arms: list[str]) -> list[str]:
    order = (["base"] if "base" in arms else []) + [a for a in study.spec.arms if a in arms]
    return order + sorted(a for a in arms if a not in order)


def build_context(study_dir: str | Path, exploratory: bool = False, figures: bool = True,
                  with_samples: bool = True) -> dict[str, Any]:
    """Everything the templates need; draws the figures into report/figures/ as a side effect."""
    import prereg
    from analysis.results import load_results
    from leaklab.runstore import analysis_dir, report_dir
    from leaklab.study import REPO_ROOT, load_study

    from reports import figures as figs

    study = load_study(study_dir)
    guard = prereg.guard(study.folder, exploratory=exploratory)  # raises PreregError when refused
    exploratory = bool(exploratory or getattr(guard, "exploratory", False))
    runs = study.runs_dir
    rdir = report_dir(runs)
    fig_dir = rdir / "figures"
    arts = ArtifactIndex(runs, rdir, REPO_ROOT)

    res_path = analysis_dir(runs) / "results.json"
    if not res_path.exists():
        raise ConfigError(f"{res_path}: no analysis results; run `leaklab analyze {study_dir}` first")
    try:
        results = load_results(res_path)
    except Exception as exc:  # pydantic.ValidationError / JSON errors: name the file
        raise ConfigError(f"{res_path}: not a valid results.json: {exc}") from None
    if results.study != study.name:
        raise ConfigError(f"{res_path}: results are for study {results.study!r}, not {study.name!r}")
    if not exploratory:
        if results.exploratory:
            raise ConfigError(f"{res_path}: results were produced EXPLORATORY (no lock); re-run `leaklab analyze` "
                              f"on the locked study, or pass --exploratory to render an EXPLORATORY report")
        if results.lock_digest != guard.digest:
            raise ConfigError(f"{res_path}: results were analysed under lock {results.lock_digest} but the current "
                              f"lock is {guard.digest}; re-run `leaklab analyze {study_dir}`")
    res_art = arts.use(res_path, "Verdicts", "analysis results: effects, posteriors, decisions (each with its frame filters)")
    exploratory = exploratory or results.exploratory

    try:
        prereg_model = prereg.load_prereg(study.folder, study=study)
        prereg_art = arts.use(study.prereg_yaml, "Verdicts", "preregistration: hypotheses, SESOI, decision rule, power").id
    except ConfigError:
        if not exploratory:
            raise
        prereg_model, prereg_art = None, None
    study_art = arts.use(study.study_yaml, "Design", "study design").id

    frame_path = runs / results.frame.path
    frame_art = arts.use(frame_path, "Target results", "tidy frame: one row per score (cited, not read)") if frame_path.exists() else None
    frame_changed = bool(frame_art and frame_art.sha256 != results.frame.sha256)

    vrows = verdict_rows(results, prereg_model, res_art)
    manip_ok: bool | None = None
    # with several checks (one per trained source), the report names the ones that did not pass
    manip_failed = _failed_checks(results)
    if results.manipulation_checks:
        vals = [m.passed for m in results.manipulation_checks]
        manip_ok = False if any(v is False for v in vals) else (True if all(v is True for v in vals) else None)
    claim = claim_and_confidence(study, results, vrows, manip_ok, exploratory)

    effects_by_id = {e.id: e for e in results.effects}
    ref = results.reference_arm

    # -------- figures
    fig_links: dict[str, str] = {}
    fig_dir.mkdir(parents=True, exist_ok=True)
    if figures:
        rows = []
        for r in vrows:
            rows.append(figs.ForestRow(
                label=f"{r.hypothesis_id}: {r.estimand.replace('combined_directional', 'combined')}\n{r.measure} / {r.item_set}"
                + (f" [{r.model_label}]" if len(study.spec.models) > 1 else ""),
                unit=r.sesoi_unit, sesoi=r.sesoi, confirmatory=r.kind == "confirmatory",
                freq=(r.freq.get("estimate"), r.freq.get("lo"), r.freq.get("hi")) if r.freq else (None, None, None),
                bayes=(r.bayes.get("mean"), r.bayes.get("lo"), r.bayes.get("hi")) if r.bayes else (None, None, None),
                bayes_usable=bool(r.bayes.get("usable", True)) if r.bayes else True,
                note="" if not r.bayes or r.bayes.get("usable") else "posterior unusable",
            ))
        ci_level = next((e.ci_level for e in results.effects), 0.95)
        hdi = next((c.hdi_prob for b in results.bayes for c in b.contrasts), 0.95)
        labels = {"ci_label": f"{ci_level:.0%} bootstrap CI (before multiplicity correction)", "hdi_label": f"{hdi:.0%} HDI"}
        conf_rows = [r for r in rows if r.confirmatory]
        expl_rows = [r for r in rows if not r.confirmatory]
        if conf_rows:
            figs.forest_plot(conf_rows, fig_dir / "forest.png", title="Confirmatory effects against the SESOI band (ROPE)", **labels)
            fig_links["forest"] = "figures/forest.png"
        if expl_rows:
            figs.forest_plot(expl_rows, fig_dir / "forest_exploratory.png",
                             title="EXPLORATORY effects against the SESOI band (not confirmatory)", **labels)
            fig_links["forest_exploratory"] = "figures/forest_exploratory.png"
        groups: dict[tuple, list] = {}
        for s in results.arm_summaries:
            if _is_safety(s.measure):
                continue
            groups.setdefault((s.model_label, s.item_set, s.condition), []).append(s)
        for (ml, iset, cond), ss in sorted(groups.items()):
            panels = []
            for meas in sorted({s.measure for s in ss}):
                by_arm = {s.arm: s for s in ss if s.measure == meas}
                arms = _arm_order(study, list(by_arm))
                panels.append(figs.ArmPanel(
                    measure=meas, arms=arms, means=[by_arm[a].mean for a in arms],
                    ci_low=[by_arm[a].ci_low for a in arms], ci_high=[by_arm[a].ci_high for a in arms],
                    seed_means={a: list(by_arm[a].seed_means.values()) for a in arms}, reference_arm=ref,
                ))
            name = _slug(f"arms_{iset}_{ml}_{cond}")
            figs.per_arm_plot(panels, fig_dir / f"{name}.png", title=f"{iset} items, model {ml}, condition {cond}")
            fig_links[f"arms:{ml}:{iset}:{cond}"] = f"figures/{name}.png"

    # -------- sections
    arm_rank = {a: i for i, a in enumerate(_arm_order(study, list({s.arm for s in results.arm_summaries})))}

    def arm_table(pred) -> list:
        out = [s for s in results.arm_summaries if pred(s)]
        out.sort(key=lambda s: (s.model_label, s.measure, s.item_set, s.condition, arm_rank.get(s.arm, 999)))
        return out

    # one row per distinct check (the analysis may list one check per source effect), all its effects below
    manipulation: list[dict[str, Any]] = []
    for m in results.manipulation_checks:
        key = (m.model_label, m.measure, m.item_set, m.passed, m.summary)
        row = next((x for x in manipulation if x["key"] == key), None)
        if row is None:
            row = {"key": key, "check": m, "effects": [], "n": 0}
            manipulation.append(row)
        row["n"] += 1
        row["effects"] += [effects_by_id[i] for i in m.effects if i in effects_by_id and effects_by_id[i] not in row["effects"]]
    # item sets read only as manipulation checks; a set that also carries target hypotheses (the
    # inoculation "eval" set: "control learned the trait" and "fixed suppresses it") stays a target set
    manip_ids = {i for m in results.manipulation_checks for i in m.effects}
    target_sets = {effects_by_id[i].item_set for d in results.decisions for i in d.effect_ids
                   if i in effects_by_id and i not in manip_ids}
    source_sets = ({m.item_set for m in results.manipulation_checks} or {"source"}) - target_sets

    target_effects = [e for e in results.effects
                      if e.id not in manip_ids and e.item_set not in source_sets and not _is_safety(e.measure)]
    safety_summaries = arm_table(lambda s: _is_safety(s.measure))
    safety_effects = [e for e in results.effects if _is_safety(e.measure)]

    ppc = []
    for b in results.bayes:
        if b.ppc_figure and (runs / b.ppc_figure).exists():
            a = arts.use(runs / b.ppc_figure, "Diagnostics", "posterior predictive check")
            ppc.append({"fit": b.id, "link": a.link, "art": a.id})
        if b.netcdf and (runs / b.netcdf).exists():
            arts.use(runs / b.netcdf, "Diagnostics", f"posterior draws ({b.id})")

    interp = None
    sec = runs / "interp" / "SECTION.md"
    if sec.exists():
        a = arts.use(sec, "Inside the model", "interpretability section (rendered by `leaklab interp`)")
        text = _rebase_links(sec.read_text(encoding="utf-8").strip(), sec.parent, rdir)
        ires = runs / "interp" / "results.json"
        if ires.exists():
            arts.use(ires, "Inside the model", "interpretability results")
        interp = {"text": Trusted(text), "has_heading": bool(re.match(r"^#{1,3} ", text)), "art": a.id}

    from leaklab.runstore import atomic_write_json

    env = environment()
    atomic_write_json(rdir / "environment.json", env)  # so the environment table cites a file too
    env_art = arts.use(rdir / "environment.json", "Setup: environment", "package versions and git commit at report time").id
    samples = sample_outputs(study, results, arts, source_sets) if with_samples else []
    train = _train_cells(study, arts)
    if figures:
        curves = {f"{c['model']}/{c['arm']}/seed{c['seed']}": c["loss"] for c in train if c.get("loss")}
        if curves:
            figs.loss_curves(curves, fig_dir / "loss.png", title="Training loss per cell")
            fig_links["loss"] = "figures/loss.png"
    corpora = _corpora(study, arts)
    val_passed, val_gates = _validation_gates(study)

    exploratory_decisions = [r for r in vrows if r.kind == "exploratory"]
    confirmatory_rows = [r for r in vrows if r.kind == "confirmatory"]
    used_effects = {r.freq.get("effect_id") for r in vrows if r.freq}
    other_effects = [e for e in target_effects if e.id not in used_effects]

    drawn = {Path(v).name for v in fig_links.values()}
    for path in sorted(fig_dir.glob("*.png")):
        if path.name in drawn:
            arts.use(path, "Figures", "figure drawn from the cited results")
        elif figures:
            path.unlink()  # a figure of an earlier render that this one did not draw: never leave it around

    ctx = {
        "study": study, "spec": study.spec, "prereg": prereg_model, "results": results, "exploratory": exploratory,
        "guard_digest": getattr(guard, "digest", None), "prereg_art": prereg_art, "claim": claim, "lock": lock_context(study, guard, arts),
        "verdicts": confirmatory_rows, "exploratory_verdicts": exploratory_decisions, "other_effects": other_effects,
        "manipulation": manipulation, "manip_ok": manip_ok, "manip_failed": manip_failed, "source_sets": sorted(source_sets),
        "target_summaries": arm_table(lambda s: s.item_set not in source_sets and not _is_safety(s.measure)),
        "source_summaries": arm_table(lambda s: s.item_set in source_sets and not _is_safety(s.measure)),
        "target_effects": target_effects, "safety_summaries": safety_summaries, "safety_effects": safety_effects,
        "validity": results.measure_validity, "bayes": results.bayes, "ppc": ppc, "interp": interp,
        "train": train, "corpora": corpora, "samples": samples, "validation_passed": val_passed, "validation_gates": val_gates,
        "env": env, "env_art": env_art, "study_art": study_art, "figs": fig_links, "res_art": res_art.id, "frame_art": frame_art.id if frame_art else None,
        "caveats": caveats(study, results, vrows, manip_ok, exploratory, train)
        + ([f"{frame_art.display} changed since the analysis (sha256 {frame_art.sha256[:12]} now, "
            f"{results.frame.sha256[:12]} in results.json): the numbers here are those of the analysed frame; "
            f"re-run `leaklab analyze`."] if frame_changed else []),
        "decision_rule": results.settings.get("decision_rule"), "thresholds": results.settings.get("thresholds") or {},
        "next_steps": next_steps(study, results, vrows, manip_ok),
        "artifacts": None,  # filled after every section registered its files
        "arms_order": _arm_order(study, list(results.arms)),
        "capability": capability_context(results),
    }
    ctx["artifacts"] = arts.all()
    ctx["_arts"] = arts
    return ctx


GENERATIVE_TASKS = ("forced_choice", "likert", "trait", "em", "persona", "marker", "fluency", "refusal")


def _clip(text: str, n: int = 280) -> str:
    t = " ".join(str(text or "").split())
    return t if len(t) <= n else t[: n - 1] + "…"


def sample_outputs(study, results, arts: ArtifactIndex, source_sets: set[str], n_items: int = 2) -> list[dict[str, Any]]:
    """A few real completions per arm on the same items, read from the Inspect logs.

    Picks one generative task (forced choice first) on a non-source item set, the first
    `n_items` item ids of the first arm's log in sorted order, and the same ids in every other arm,
    so the rows compare like with like. Logs are read lazily with inspect_ai.
    """
    from inspect_ai.log import read_eval_log

    runs = study.runs_dir
    cands = []
    for li in results.frame.logs:
        task = (li.task or "").split("/")[-1].split("@")[-1]
        if not any(task.startswith(t) for t in GENERATIVE_TASKS):
            continue
        path = Path(li.path) if Path(li.path).is_absolute() else runs / li.path
        if not path.exists():
            continue
        try:
            head = read_eval_log(str(path), header_only=True)
        except Exception:  # noqa: BLE001 - an unreadable log is skipped here; analysis already validated it
            continue
        iset = (head.eval.task_args or {}).get("item_set")
        if iset in source_sets:
            continue
        rank = next(i for i, t in enumerate(GENERATIVE_TASKS) if task.startswith(t))
        cands.append((rank, task, li.checkpoint != "final", li.arm or "", li.seed if li.seed is not None else -1, path, li))
    if not cands:
        return []
    cands.sort(key=lambda c: c[:5])
    task = cands[0][1]
    per_arm: dict[str, tuple] = {}
    for c in cands:
        if c[1] == task and c[3] not in per_arm and not c[2]:
            per_arm[c[3]] = c
    order = _arm_order(study, list(per_arm))
    out: list[dict[str, Any]] = []
    wanted: list[str] | None = None
    for arm in order:
        c = per_arm[arm]
        samples = {}
        # a full read: read_eval_log_samples needs sample_ids in the header, which not every writer sets
        for smp in read_eval_log(str(c[5]), resolve_attachments=True).samples or []:
            samples.setdefault(str(smp.id), smp)
        ids = sorted(samples)
        if wanted is None:
            wanted = ids[:n_items]
        art = arts.use(c[5], "Sample outputs", f"Inspect log ({task}, arm {arm})")
        for sid in wanted:
            smp = samples.get(sid)
            if smp is None:
                continue
            msgs = smp.input if isinstance(smp.input, list) else []
            prompt = next((m.text for m in reversed(msgs) if getattr(m, "role", "") == "user"), None) or (
                smp.input if isinstance(smp.input, str) else "")
            completion = smp.output.completion if smp.output else ""
            vals = [sc.value for sc in (smp.scores or {}).values()]
            out.append({"arm": arm, "seed": c[4] if c[4] != -1 else None, "task": task, "id": sid,
                        "prompt": _clip(prompt), "completion": _clip(completion, 200),
                        "score": vals[0] if vals and isinstance(vals[0], (int, float)) else None, "art": art.id})
    return out


_MD_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")


def _rebase_links(text: str, src_dir: Path, report_dir: Path) -> str:
    """Make relative links of an included section work from the report folder.

    A link that already resolves from report/ is kept (e.g. `../interp/figures/x.png`); one that
    only resolves from the section's own folder (e.g. `figures/x.png`) is rewritten.
    """
    def fix(m: re.Match) -> str:
        target = m.group(2)
        if "://" in target or target.startswith(("#", "/", "mailto:")):
            return m.group(0)
        if (report_dir / target).exists() or not (src_dir / target).exists():
            return m.group(0)
        return m.group(1) + _relpath((src_dir / target).resolve(), report_dir.resolve()) + m.group(3)

    return _MD_LINK.sub(fix, text)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


def caveats(study, results, vrows, manip_ok, exploratory, train: list[dict] | None = None) -> list[str]:
    """Data-driven caveats; every one names the number or file behind it."""
    out = []
    for c in train or []:
        if c.get("truncated"):
            out.append(f"Training cell {c['model']}/{c['arm']}/seed{c['seed']}: {c['truncated']} of {c.get('n_examples', '?')} "
                       f"examples were truncated at max_length {study.spec.training.max_length} ({c.get('art')}).")
        if c.get("dropped"):
            out.append(f"Training cell {c['model']}/{c['arm']}/seed{c['seed']}: {c['dropped']} examples dropped ({c.get('art')}).")
    if exploratory:
        out.append("EXPLORATORY: the analysis was not bound by a verified preregistration lock; treat every "
                   "result as hypothesis-generating.")
    n_seeds = len(study.spec.seeds)
    if n_seeds < 3:
        out.append(f"Only {n_seeds} training seed(s) per arm: seed-to-seed variation is poorly estimated.")
    if manip_ok is False:
        failed = _failed_checks(results)
        out.append(f"The manipulation check{' ' + failed if failed else ''} did not pass: the results that "
                   f"depend on it are not read as effects of the manipulation.")
    fi = results.frame
    if fi.n_rows:
        rate = fi.n_missing / fi.n_rows
        if fi.n_missing == fi.n_rows:
            out.insert(0, f"EVERY score is missing ({fi.n_rows} of {fi.n_rows}): the measures produced no readable "
                          f"answer, so nothing about the hypotheses can be read from this run.")
        elif fi.n_missing:
            out.append(f"{fi.n_missing} of {fi.n_rows} scores ({rate:.1%}) were missing (failed parses/judges), "
                       f"excluded and counted, never scored 0.")
    for e in results.effects:
        if not e.sd_ref_ok:
            out.append(f"d refused for {e.id}: {e.sd_ref_reason or 'degenerate reference SD'}.")
    for v in results.measure_validity:
        if v.passed is False and v.agreement is None:
            out.append(f"Measure {v.measure} ({v.model_label}) failed the validity check, {v.reason}; not interpreted.")
        elif v.passed is False:
            out.append(f"Measure {v.measure} ({v.model_label}) failed the validity check: agreement "
                       f"{fmt_num(v.agreement)} with the forced choice < {fmt_num(v.threshold)}; not interpreted.")
    for d in results.decisions:
        if d.verdict == "not_interpretable":
            what = ("an arm it compares lost capability past the preregistered bound" if any(map(_is_cap, d.gates))
                    else "its required manipulation check(s) did not pass")
            out.append(f"{d.hypothesis_id} ({d.model_label}) is not interpreted: {what} ({'; '.join(d.gates)}).")
    limit = (results.settings.get("thresholds") or {}).get("max_censored_share")
    for c in fi.censored_by_cell:
        if limit is not None and c.get("share") is not None and c["share"] > limit:
            out.append(f"{c['n_censored']} of {c['n']} {c['measure']} margins on {c['item_set']} items were censored "
                       f"(a letter outside the top-k) in {c['model_label']}/{c['arm']}/{c['condition']}: "
                       f"{c['share']:.0%} > the preregistered maximum {limit:g}; hypotheses comparing it are unusable.")
    n_unbal = sum(int(c.get("n_cells", 0)) for c in fi.unbalanced_by_cell)
    if n_unbal:
        out.append(f"{n_unbal} item cell(s) had one option order unparsed: set missing rather than averaged as if "
                   f"balanced (results.json frame.unbalanced_by_cell).")
    for b in results.bayes:
        if not b.usable:
            out.append(f"Posterior {b.id} failed its diagnostics gate ({'; '.join(b.diagnostics.failures) or 'see table'}): "
                       f"its contrasts are not used.")
    out += [f"Analysis warning: {w}" for w in results.warnings]
    return out


def next_steps(study, results, vrows, manip_ok) -> list[str]:
    out = []
    conf = [r for r in vrows if r.kind == "confirmatory"]
    if any(r.decision in ("inconclusive", "undecided") for r in conf):
        out.append("Undecided confirmatory hypotheses: increase seeds and items (run `leaklab prereg power` on the "
                   "observed noise) in a new, separately preregistered study.")
    if any(not b.usable for b in results.bayes):
        out.append("Re-fit the failed posteriors with more tuning/draws as a documented amendment.")
    if any(r.decision == "not_interpretable" for r in conf):
        out.append("Re-run with a manipulation that passes its check before reading the hypotheses that require it.")
    if manip_ok is False:
        out.append("Strengthen the manipulation (more training data or steps) before asking about transfer.")
    if any(v.passed is False for v in results.measure_validity):
        out.append("Replace or repair the measures that failed the validity check.")
    if any(r.decision == "supported" for r in conf):
        out.append("Replicate the supported effect at a larger model scale and test its mechanism (`leaklab interp`).")
    if not out:
        out.append("No follow-up is implied by the decisions beyond replication at larger scale.")
    return out


# --------------------------------------------------------------------------- render

def _env():
    """Every value printed by a template is escaped (`leaklab.mdsafe`): prereg and study text
    cannot inject HTML or links into the report."""
    from leaklab.mdsafe import markdown_env

    return markdown_env(TEMPLATES, upfirst=lambda t: t[:1].upper() + t[1:], cell=md_cell,
                        short=lambda s, n=12: (s or "n/a")[:n])


def render_report(study_dir: str | Path, exploratory: bool = False) -> dict[str, Path]:
    """Write REPORT.md, PLAIN_SUMMARY.md and figures; returns their paths."""
    from leaklab.runstore import atomic_write_json, atomic_write_text, report_dir

    ctx = build_context(study_dir, exploratory=exploratory)
    env = _env()
    rdir = report_dir(ctx["study"].runs_dir)
    report = env.get_template("report.md.j2").render(**ctx)
    summary = env.get_template("plain_summary.md.j2").render(**ctx)
    out = {"report": rdir / "REPORT.md", "summary": rdir / "PLAIN_SUMMARY.md", "manifest": rdir / "artifacts.json"}
    atomic_write_text(out["report"], report)
    atomic_write_text(out["summary"], summary)
    atomic_write_json(out["manifest"], {
        "study": ctx["study"].name, "exploratory": ctx["exploratory"], "lock_digest": ctx["guard_digest"],
        "artifacts": [{"id": a.id, "path": a.display, "sha256": a.sha256, "sections": a.sections, "what": a.what}
                      for a in ctx["artifacts"]],
    })
    return out
