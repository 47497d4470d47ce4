"""Validation gates for training corpora, written to `runs/<study>/data/validation_report.json`.

A corpus trains only if every applicable gate passed (training/matrix.py refuses otherwise).
The gates follow the attitude study's checks (FIELD_NOTES.md), made offline and stricter:

- blocklist: no held-out topic term in any training text (0 hits).
- length: pairwise two-sample KS *statistic* of assistant word counts <= 0.15 (the p-value is
  overpowered at thousands of docs; for small corpora the bound is raised to the statistic's
  alpha=0.01 critical value 1.628*sqrt((n+m)/(n*m)), e.g. 0.18 at 160 docs per arm, so that
  sampling noise alone cannot fail it) and means within 8% of each other.
- vocabulary: moving-average type-token ratio (MATTR, window 50 - plain TTR depends on length)
  within 5%, and Jensen-Shannon divergence (bits, 0 = same distribution, 1 = disjoint
  vocabularies) of the arms' unigram distributions <= 0.5: arms written from the same cells
  share their topic words; the demo templates sit at 0.32-0.36, a corpus on another subject ~0.9.
- refusal: no refusal / AI-disclaimer phrase in any assistant turn.
- framing classifier: TF-IDF + logistic regression, cross-validated with folds grouped by
  source domain (so it must generalise to unseen domains: attitude, not topic); AUC of
  cautious vs eager >= 0.9, and neutral documents scored (by a classifier fit on all
  cautious+eager) with a mean P(eager) within 0.5 +/- 0.2.
- duplicates: no exact duplicate (normalised text) within an arm; no near duplicate, i.e.
  TF-IDF cosine over character 3-5-grams of the whole document > 0.97 (offline stand-in for
  the embedding cosine of the original study; templated corpora sit well below it).
- held-out closeness: no training document within TF-IDF char-3-5-gram cosine 0.5 of any
  held-out eval item (every item set the study evaluates except `source`). Char n-gram
  cosine runs lower than sentence-embedding cosine, hence 0.5 rather than the original 0.80:
  a pasted or lightly edited eval scenario scores > 0.6, unrelated advice text < 0.3.
- cell alignment (builder corpora): every arm has the identical cell sequence.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from leaklab.families import family
from leaklab.io import iter_jsonl, load_blocklist, repo_path
from leaklab.runstore import atomic_write_json
from leaklab.yamlio import ConfigError
from training.corpora import assistant_text, corpus_messages, corpus_path, corpora_dir, load_corpus, sha256_file

DEFAULT_BLOCKLIST = repo_path(family("attitude").gates.blocklist)  # the shipped held-out blocklist
MIN_FRAMING_DOCS = 10
REPORT_NAME = "validation_report.json"

REFUSAL_PATTERNS = [
    r"\bI(?:'m| am) sorry,? but\b",
    r"\bI (?:can(?:'|no)t|cannot|won't|will not|am unable to|'m unable to) (?:help|assist|provide|do that|comply)",
    r"\bas an AI\b",
    r"\bas a language model\b",
    r"\bI(?:'m| am) (?:just )?an AI\b",
    r"\bI do not have (?:personal )?(?:opinions|feelings)\b",
    r"\bconsult a (?:licensed )?professional\b",
]
_TOKEN = re.compile(r"[a-z0-9']+")


@dataclass
class Thresholds:
    ks_max: float = 0.15
    mean_len_rel_max: float = 0.08
    mattr_rel_max: float = 0.05
    mattr_window: int = 50
    jsd_max_bits: float = 0.5
    auc_min: float = 0.9
    neutral_band: float = 0.2
    near_dup_cos: float = 0.97
    heldout_cos: float = 0.5


@dataclass
class Plan:
    """Which gates apply to a study, and their inputs."""

    blocklist: Path | None = None
    heldout_items: list[Path] = field(default_factory=list)
    matched_arms: bool = True  # length/vocabulary comparisons across arms
    framing: tuple[str, str, str | None] | None = None  # (negative, positive, middle) arms
    thresholds: Thresholds = field(default_factory=Thresholds)


# --------------------------------------------------------------------------- helpers


def doc_text(rec: dict) -> str:
    return "\n".join(m["content"] for m in corpus_messages(rec))


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def mattr(toks: list[str], window: int) -> float:
    """Moving-average type-token ratio (Covington & McFall 2010): length-independent."""
    if len(toks) <= window:
        return len(set(toks)) / max(len(toks), 1)
    counts: dict[str, int] = {}
    for t in toks[:window]:
        counts[t] = counts.get(t, 0) + 1
    ratios = [len(counts) / window]
    for i in range(window, len(toks)):
        old, new = toks[i - window], toks[i]
        counts[old] -= 1
        if counts[old] == 0:
            del counts[old]
        counts[new] = counts.get(new, 0) + 1
        ratios.append(len(counts) / window)
    return float(np.mean(ratios))


def js_divergence_bits(a: list[str], b: list[str]) -> float:
    vocab = sorted(set(a) | set(b))
    idx = {w: i for i, w in enumerate(vocab)}
    p = np.zeros(len(vocab))
    q = np.zeros(len(vocab))
    for w in a:
        p[idx[w]] += 1
    for w in b:
        q[idx[w]] += 1
    p /= p.sum()
    q /= q.sum()
    m = (p + q) / 2

    def kl(x, y):
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / y[nz])))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def item_texts(path: Path) -> list[tuple[str, str]]:
    """(item id, text) of an eval item file: the scenario plus every question/statement string."""
    out = []
    for n, rec in iter_jsonl(path, "item file"):
        out.append((str(rec.get("id", f"line{n}")), " ".join(_strings(rec, skip={"id", "domain", "base_item"}))))
    return out


def _strings(obj, skip=frozenset()) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() if k not in skip and not k.endswith("_label") for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


def _gate(passed: bool, **info) -> dict:
    return {"passed": bool(passed), **info}


def _skipped(reason: str) -> dict:
    return {"passed": True, "skipped": reason}


# --------------------------------------------------------------------------- gates


def gate_blocklist(corpora: dict[str, list[dict]], blocklist: Path | None) -> dict:
    if blocklist is None:
        return _skipped("no held-out blocklist for this study family")
    if not Path(blocklist).exists():
        return _gate(False, detail=f"blocklist file {blocklist} does not exist", hits=None)
    terms = load_blocklist(blocklist)
    hits = []
    for arm, recs in corpora.items():
        for r in recs:
            text = doc_text(r)
            for term, pat in terms:
                if pat.search(text):
                    hits.append({"arm": arm, "id": r["id"], "term": term})
    return _gate(not hits, hits=len(hits), examples=hits[:10], n_terms=len(terms), blocklist=str(blocklist))


def gate_length(corpora: dict[str, list[dict]], th: Thresholds) -> dict:
    from scipy.stats import ks_2samp

    words = {a: np.array([len(tokens(assistant_text(r))) for r in recs]) for a, recs in corpora.items()}
    pairs = {}
    ok = True
    for a, b in itertools.combinations(sorted(words), 2):
        ks = float(ks_2samp(words[a], words[b]).statistic)
        n, m = len(words[a]), len(words[b])
        # small corpora: never demand less than the alpha=0.01 sampling noise of the statistic
        bound = max(th.ks_max, 1.628 * float(np.sqrt((n + m) / (n * m))))
        ma, mb = float(words[a].mean()), float(words[b].mean())
        rel = abs(ma - mb) / ((ma + mb) / 2)
        pair_ok = ks <= bound and rel <= th.mean_len_rel_max
        ok &= pair_ok
        pairs[f"{a}~{b}"] = {"ks": round(ks, 4), "ks_bound": round(bound, 4), "mean_rel_diff": round(rel, 4), "passed": pair_ok}
    means = {a: round(float(w.mean()), 2) for a, w in words.items()}
    return _gate(ok, pairs=pairs, mean_words=means, ks_max=th.ks_max, mean_rel_max=th.mean_len_rel_max)


def gate_vocabulary(corpora: dict[str, list[dict]], th: Thresholds) -> dict:
    toks = {a: [t for r in recs for t in tokens(assistant_text(r))] for a, recs in corpora.items()}
    m = {a: mattr(t, th.mattr_window) for a, t in toks.items()}
    pairs = {}
    ok = True
    for a, b in itertools.combinations(sorted(toks), 2):
        rel = abs(m[a] - m[b]) / ((m[a] + m[b]) / 2)
        jsd = js_divergence_bits(toks[a], toks[b])
        pair_ok = rel <= th.mattr_rel_max and jsd <= th.jsd_max_bits
        ok &= pair_ok
        pairs[f"{a}~{b}"] = {"mattr_rel_diff": round(rel, 4), "jsd_bits": round(jsd, 4), "passed": pair_ok}
    return _gate(
        ok,
        pairs=pairs,
        mattr={a: round(v, 4) for a, v in m.items()},
        mattr_window=th.mattr_window,
        mattr_rel_max=th.mattr_rel_max,
        jsd_max_bits=th.jsd_max_bits,
    )


def gate_refusal(corpora: dict[str, list[dict]]) -> dict:
    pats = [re.compile(p, re.IGNORECASE) for p in REFUSAL_PATTERNS]
    hits = []
    for arm, recs in corpora.items():
        for r in recs:
            text = assistant_text(r)
            for p in pats:
                if p.search(text):
                    hits.append({"arm": arm, "id": r["id"], "pattern": p.pattern})
                    break
    return _gate(not hits, hits=len(hits), examples=hits[:10], patterns=REFUSAL_PATTERNS)


def gate_framing(corpora: dict[str, list[dict]], arms: tuple[str, str, str | None], th: Thresholds, seed: int = 0) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline

    neg, pos, mid = arms
    for a in (neg, pos) + ((mid,) if mid else ()):
        if a not in corpora:
            return _gate(False, detail=f"framing classifier needs arm {a!r}, corpora have {sorted(corpora)}")
    texts = [assistant_text(r) for r in corpora[neg]] + [assistant_text(r) for r in corpora[pos]]
    y = np.array([0] * len(corpora[neg]) + [1] * len(corpora[pos]))
    groups = [r.get("domain", "") for r in corpora[neg] + corpora[pos]]

    def clf():
        return make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
            LogisticRegression(C=1.0, max_iter=2000),
        )

    n_groups = len(set(groups))
    if n_groups >= 3:
        cv, cv_name = GroupKFold(n_splits=min(5, n_groups)), f"GroupKFold by domain ({min(5, n_groups)} folds)"
        proba = cross_val_predict(clf(), texts, y, cv=cv, groups=groups, method="predict_proba")[:, 1]
    else:
        cv, cv_name = StratifiedKFold(5, shuffle=True, random_state=seed), "StratifiedKFold(5)"
        proba = cross_val_predict(clf(), texts, y, cv=cv, method="predict_proba")[:, 1]
    auc = float(roc_auc_score(y, proba))
    info = {"auc": round(auc, 4), "auc_min": th.auc_min, "cv": cv_name, "negative": neg, "positive": pos}
    ok = auc >= th.auc_min
    if mid:
        full = clf().fit(texts, y)
        p_mid = full.predict_proba([assistant_text(r) for r in corpora[mid]])[:, 1]
        mean_mid = float(p_mid.mean())
        mid_ok = abs(mean_mid - 0.5) <= th.neutral_band
        ok &= mid_ok
        info.update(middle=mid, middle_mean_p_positive=round(mean_mid, 4), middle_band=[0.5 - th.neutral_band, 0.5 + th.neutral_band])
    return _gate(ok, **info)


def _char_tfidf(fit_texts: list[str]):
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, lowercase=True).fit(fit_texts)


def gate_duplicates(corpora: dict[str, list[dict]], th: Thresholds) -> dict:
    per_arm = {}
    ok = True
    for arm, recs in corpora.items():
        texts = [doc_text(r) for r in recs]
        norm = [" ".join(tokens(t)) for t in texts]
        seen: dict[str, str] = {}
        exact = []
        for r, n in zip(recs, norm):
            if n in seen:
                exact.append([seen[n], r["id"]])
            else:
                seen[n] = r["id"]
        vec = _char_tfidf(texts)
        X = vec.transform(texts)
        sims = (X @ X.T).toarray()
        np.fill_diagonal(sims, 0.0)
        iu = np.triu_indices(len(texts), 1)
        near_mask = sims[iu] > th.near_dup_cos
        near = [[recs[i]["id"], recs[j]["id"]] for i, j in zip(iu[0][near_mask], iu[1][near_mask])]
        max_cos = float(sims.max()) if len(texts) > 1 else 0.0
        arm_ok = not exact and not near
        ok &= arm_ok
        per_arm[arm] = {
            "exact_pairs": len(exact),
            "near_pairs": len(near),
            "max_cos": round(max_cos, 4),
            "examples": (exact + near)[:5],
            "passed": arm_ok,
        }
    return _gate(ok, arms=per_arm, near_dup_cos=th.near_dup_cos, method="TF-IDF char_wb 3-5-gram cosine")


def gate_heldout(corpora: dict[str, list[dict]], item_files: list[Path], th: Thresholds) -> dict:
    if not item_files:
        return _skipped("the study evaluates no held-out item files")
    missing = [str(p) for p in item_files if not Path(p).exists()]
    if missing:
        return _gate(False, detail=f"held-out item files missing: {missing}")
    items = [(f"{Path(p).name}:{iid}", t) for p in item_files for iid, t in item_texts(p)]
    docs = [(arm, r["id"], doc_text(r)) for arm, recs in corpora.items() for r in recs]
    vec = _char_tfidf([t for _, t in items] + [t for _, _, t in docs])
    D = vec.transform([t for _, _, t in docs])
    I = vec.transform([t for _, t in items])
    sims = (D @ I.T).toarray()
    flagged = np.argwhere(sims > th.heldout_cos)
    examples = [
        {"arm": docs[i][0], "id": docs[i][1], "item": items[j][0], "cos": round(float(sims[i, j]), 4)} for i, j in flagged[:10]
    ]
    return _gate(
        len(flagged) == 0,
        close_pairs=int(len(flagged)),
        max_cos=round(float(sims.max()), 4) if sims.size else 0.0,
        heldout_cos=th.heldout_cos,
        n_items=len(items),
        item_files=[str(p) for p in item_files],
        examples=examples,
        method="TF-IDF char_wb 3-5-gram cosine, fit on items + training docs",
    )


def gate_cells(corpora: dict[str, list[dict]]) -> dict:
    seqs = {a: [r.get("cell_id") for r in recs] for a, recs in corpora.items()}
    if any(None in s for s in seqs.values()):
        return _skipped("records carry no cell_id")
    ref_arm = sorted(seqs)[0]
    bad = [a for a, s in seqs.items() if s != seqs[ref_arm]]
    return _gate(not bad, mismatched_arms=bad, reference=ref_arm, n_cells=len(seqs[ref_arm]))


# --------------------------------------------------------------------------- driver


def run_gates(corpora: dict[str, list[dict]], plan: Plan) -> dict:
    th = plan.thresholds
    gates = {"blocklist": gate_blocklist(corpora, plan.blocklist), "refusal": gate_refusal(corpora)}
    if plan.matched_arms and len(corpora) >= 2:
        gates["length"] = gate_length(corpora, th)
        gates["vocabulary"] = gate_vocabulary(corpora, th)
        gates["cell_alignment"] = gate_cells(corpora)
    else:
        reason = "arms are not matched corpora" if not plan.matched_arms else "fewer than two arms"
        for g in ("length", "vocabulary", "cell_alignment"):
            gates[g] = _skipped(reason)
    gates["framing_classifier"] = (
        gate_framing(corpora, plan.framing, th) if plan.framing else _skipped("no framed arm pair of the family (leaklab.families GatePlan.framing) is trained")
    )
    gates["duplicates"] = gate_duplicates(corpora, th)
    gates["heldout_closeness"] = gate_heldout(corpora, plan.heldout_items, th)
    return gates


def plan_for(study) -> Plan:
    """Gates for a study, from its family's `GatePlan` (leaklab.families): the held-out
    blocklist, the matched-corpus battery, and the framing classifier when the family's framed
    arms are trained; the held-out closeness gate always reads the study's non-source item files."""
    arms = [a for a, spec in study.spec.arms.items() if spec.corpus is not None]
    heldout = []
    for entry in study.spec.eval:
        items = entry.args.get("items")
        if items and entry.item_set != "source":
            p = study.resolve(items)
            if p not in heldout:
                heldout.append(p)
    gates = family(study.spec.family).gates
    framing = None
    if gates.framing and gates.framing[0] in arms and gates.framing[1] in arms:
        neg, pos, neutral = gates.framing
        framing = (neg, pos, neutral if neutral in arms else None)
    return Plan(
        blocklist=repo_path(gates.blocklist) if gates.blocklist else None,
        heldout_items=heldout,
        matched_arms=gates.matched_arms,
        framing=framing,
    )


def report_path(study) -> Path:
    return corpora_dir(study) / REPORT_NAME


def validate_corpora(paths: dict[str, Path], plan: Plan, out: Path, study_name: str = "") -> dict:
    """Run every gate over the arms' corpus files and write the report; returns it."""
    t0 = time.time()
    corpora = {arm: load_corpus(p) for arm, p in paths.items()}
    if plan.framing:
        for arm in [a for a in plan.framing if a]:
            n = len(corpora.get(arm, []))
            if arm in corpora and n < MIN_FRAMING_DOCS:
                raise ConfigError(f"{paths[arm]}: arm {arm!r} has {n} record(s); the framing classifier gate needs at "
                                  f"least {MIN_FRAMING_DOCS} per arm (cross-validated in 5 folds): use a larger corpus")
    try:
        gates = run_gates(corpora, plan)
    except ValueError as exc:  # a statistic that cannot be computed on these corpora
        sizes = ", ".join(f"{a}={len(r)}" for a, r in corpora.items())
        raise ConfigError(f"{out}: corpus validation cannot run on these corpora ({sizes} records): {exc}") from None
    report = {
        "study": study_name,
        "passed": all(g["passed"] for g in gates.values()),
        "failed_gates": [k for k, g in gates.items() if not g["passed"]],
        "corpora": {arm: {"path": str(p), "sha256": sha256_file(p), "n": len(corpora[arm])} for arm, p in paths.items()},
        "gates": gates,
        "thresholds": asdict(plan.thresholds),
        "created_unix": round(time.time(), 1),
        "wall_s": round(time.time() - t0, 2),
    }
    atomic_write_json(out, report)
    return report


def validate_study(study) -> dict:
    """Validate every trained arm's corpus (already built) into runs/<study>/data/validation_report.json."""
    paths = {arm: corpus_path(study, arm) for arm, a in study.spec.arms.items() if a.corpus is not None}
    return validate_corpora(paths, plan_for(study), report_path(study), study.name)


class ValidationFailed(ConfigError):
    pass


def require_valid(report_file: Path, arm: str, corpus: Path) -> dict:
    """Refuse to train on a corpus without a passing, current validation report."""
    report_file = Path(report_file)
    report = check_report(report_file)
    entry = report.get("corpora", {}).get(arm)
    if entry is None:
        raise ValidationFailed(f"{report_file}: arm {arm!r} was not validated")
    actual = sha256_file(corpus)
    if entry["sha256"] != actual:
        raise ValidationFailed(
            f"{report_file}: arm {arm!r}: corpus {corpus} changed since validation "
            f"(sha256 {actual[:12]} != {entry['sha256'][:12]}); re-run `leaklab data STUDY`"
        )
    return report


def check_report(report_file: Path) -> dict:
    """Load a validation report; raise ValidationFailed (naming the failed gates) unless it passed."""
    report_file = Path(report_file)
    if not report_file.exists():
        raise ValidationFailed(f"{report_file}: no validation report; run `leaklab data STUDY` first")
    report = json.loads(report_file.read_text(encoding="utf-8"))
    if not report.get("passed"):
        details = {g: {k: v for k, v in report["gates"][g].items() if k not in ("examples", "patterns")} for g in report.get("failed_gates", [])}
        raise ValidationFailed(
            f"{report_file}: corpus validation FAILED, refusing to train. Failed gates: "
            f"{', '.join(report.get('failed_gates', [])) or '?'}; details: {json.dumps(details)[:1500]}"
        )
    return report
