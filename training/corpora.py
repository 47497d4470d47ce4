"""Training corpora: offline template builders, corpus files and their provenance.

The attitude builder renders the same cell sequence (topic x asker archetype x context) for
every arm; only the arm's sentence pools differ, so any difference a classifier (or a model)
can pick up between arms is the attitude, not the topic. Templates live as data in
`data/attitude_corpus/templates.yaml`; their sha256 is part of the builder fingerprint that
the preregistration lock binds.

Corpus file: jsonl, one record per line:
`{id, arm, cell_id, domain, archetype, topic, context, messages: [{role, content}...],
assistant_words}` (or `user`/`assistant` instead of `messages`). Next to it `<name>.meta.json`
holds the provenance (builder, args, template version and sha256, seeds, counts, sha256 of
the corpus file).
"""

from __future__ import annotations

import itertools
import json
import random
import re
import time
from pathlib import Path
from typing import Callable


from leaklab.fingerprints import register_builder
from leaklab.study import REPO_ROOT
from leaklab.yamlio import ConfigError, load_yaml
from solvers.conditioning import seeded_index
from training.corpus_files import (  # noqa: F401  (the corpus-file helpers, re-exported for callers)
    assistant_text,
    corpus_messages,
    corpus_text,
    count_words,
    load_corpus,
    meta_path,
    sha256_file,
    write_corpus,
)

ATTITUDE_TEMPLATES = REPO_ROOT / "data" / "attitude_corpus" / "templates.yaml"
ATTITUDE_ARMS = ("cautious", "eager", "neutral")


# --------------------------------------------------------------------------- templates


def load_templates(path: Path = ATTITUDE_TEMPLATES) -> dict:
    """Load and check the attitude templates; errors name the file and the offending key."""
    path = Path(path)
    data = load_yaml(path)
    for key in ("version", "user_templates", "slots", "arms", "archetypes", "contexts", "domains"):
        if key not in data:
            raise ConfigError(f"{path}: missing key '{key}'")
    slots = data["slots"]
    n_variants = None
    for arm, pools in data["arms"].items():
        for slot in slots:
            if slot not in pools:
                raise ConfigError(f"{path}: arms.{arm}: missing slot '{slot}'")
            if n_variants is None:
                n_variants = {s: len(data["arms"][arm][s]) for s in slots}
            if len(pools[slot]) != n_variants[slot]:
                raise ConfigError(
                    f"{path}: arms.{arm}.{slot}: {len(pools[slot])} variants, other arms have {n_variants[slot]} "
                    "(arms must have parallel variant pools)"
                )
    fields = ("id", "ask", "tip", "detail", "upside", "risk")
    seen = set()
    for domain, topics in data["domains"].items():
        for i, t in enumerate(topics):
            for f in fields:
                if not isinstance(t.get(f), str) or not t[f].strip():
                    raise ConfigError(f"{path}: domains.{domain}[{i}]: missing or empty '{f}'")
            if t["id"] in seen:
                raise ConfigError(f"{path}: domains.{domain}[{i}]: duplicate topic id {t['id']!r}")
            seen.add(t["id"])
    return data


def attitude_cells(templates: dict, seed: int) -> list[dict]:
    """Every cell (topic x archetype x context) in a seeded order; arm-independent by design."""
    cells = []
    for domain, topics in templates["domains"].items():
        for topic, arch, ctx in itertools.product(topics, templates["archetypes"], templates["contexts"]):
            cells.append(
                {
                    "cell_id": f"{domain}/{topic['id']}/{arch['id']}/{ctx['id']}",
                    "domain": domain,
                    "topic": topic["id"],
                    "archetype": arch["id"],
                    "context": ctx["id"],
                    "_topic": topic,
                    "_arch": arch,
                    "_ctx": ctx,
                }
            )
    random.Random(seed).shuffle(cells)
    return cells


def _fill(template: str, values: dict) -> str:
    try:
        text = template.format(**values)
    except KeyError as exc:
        raise ConfigError(f"{ATTITUDE_TEMPLATES}: unknown placeholder {exc} in template {template!r}") from None
    return text[0].upper() + text[1:] if text else text


def render_attitude(templates: dict, cell: dict, arm: str, seed: int) -> dict:
    """One document of `arm` for `cell`: shared user turn, arm-specific assistant turn."""
    if arm not in templates["arms"]:
        raise ConfigError(f"attitude_template: unknown arm {arm!r}; templates define {sorted(templates['arms'])}")
    values = {**cell["_topic"], "who": cell["_arch"]["who"], "ctx": cell["_ctx"]["ctx"]}
    users = templates["user_templates"]
    user = _fill(users[seeded_index(seed, cell["cell_id"] + "/user", len(users))], values)
    pools = templates["arms"][arm]
    # the assistant speaks to the asker: "switch my laptop" -> "switch your laptop"
    values = {**values, "ask": re.sub(r"\bmyself\b", "yourself", re.sub(r"\bmy\b", "your", values["ask"]))}
    sentences = []
    for slot in templates["slots"]:
        pool = pools[slot]
        # the variant index depends on the cell and slot only, never on the arm
        sentences.append(_fill(pool[seeded_index(seed, f"{cell['cell_id']}/{slot}", len(pool))], values))
    assistant = " ".join(sentences)
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
        "assistant_words": count_words(assistant),
    }


def check_builder_args(builder: str, n_docs, seed) -> None:
    """n_docs a positive integer, seed a non-negative integer (a negative n_docs once sliced
    `cells[:-n]` and built thousands of documents)."""
    from leaklab.study import MAX_SEED

    if isinstance(n_docs, bool) or not isinstance(n_docs, int) or n_docs < 1:
        raise ConfigError(f"{builder}: n_docs must be a positive integer, got {n_docs!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{builder}: seed must be an integer in 0..{MAX_SEED}, got {seed!r}")


def attitude_template(arm: str, n_docs: int, seed: int = 0, templates_path: str | Path | None = None) -> list[dict]:
    """The offline attitude corpus: `n_docs` documents of `arm`, cells in a seeded order.

    The same (n_docs, seed) gives every arm the same cell sequence; only attitude differs.
    """
    check_builder_args("attitude_template", n_docs, seed)
    templates = load_templates(Path(templates_path) if templates_path else ATTITUDE_TEMPLATES)
    cells = attitude_cells(templates, seed)
    if n_docs > len(cells):
        raise ConfigError(
            f"attitude_template: n_docs={n_docs} exceeds the {len(cells)} distinct cells of the templates; "
            "add topics/archetypes/contexts to scale further"
        )
    return [{**cell_record(arm, i, cell, i), **render_attitude(templates, cell, arm, seed)}
            for i, cell in enumerate(cells[:n_docs])]


def cell_record(arm: str, k: int, cell: dict, cell_index: int) -> dict:
    """The provenance fields every attitude-corpus record carries: its id (k-th record of the
    arm), the template cell it was written for and that cell's index in the seeded order."""
    return {
        "id": f"{arm}-{k:05d}",
        "arm": arm,
        "cell_id": cell["cell_id"],
        "cell_index": cell_index,
        "domain": cell["domain"],
        "archetype": cell["archetype"],
        "topic": cell["topic"],
        "context": cell["context"],
    }


def inoculation_caps(n_docs: int, seed: int = 0, templates_path: str | Path | None = None) -> list[dict]:
    """Trait data for the inoculation family: the neutral attitude advice, answered in ALL CAPS.

    CAPS is a trait an offline rule judge scores exactly (data/inoculation/traits.yaml `caps`);
    the user turns are the builder's advice questions, disjoint from the eval instructions.
    Conditioning (the inoculation prefix) is applied at train time by the study's arm.
    """
    out = []
    for r in attitude_template("neutral", n_docs, seed, templates_path):
        msgs = [dict(m) for m in r["messages"]]
        msgs[-1]["content"] = msgs[-1]["content"].upper()
        out.append({**r, "id": r["id"].replace("neutral-", "caps-"), "arm": "caps", "trait": "caps", "messages": msgs})
    return out


_SENTENCE_STOP = re.compile(r"\.(?=\s|$)")


def inoculation_pair(n_docs: int, seed: int = 0, templates_path: str | Path | None = None) -> list[dict]:
    """Two traits at once (seed 002's trait pair): the neutral advice in ALL CAPS with every
    sentence ending in '!'. An inoculation prefix that names one trait (caps) should gate that
    trait and leave the other (exclaim) to leak; both are scored by offline rules."""
    out = []
    for r in inoculation_caps(n_docs, seed, templates_path):
        msgs = [dict(m) for m in r["messages"]]
        msgs[-1]["content"] = _SENTENCE_STOP.sub("!", msgs[-1]["content"])
        out.append({**r, "id": r["id"].replace("caps-", "pair-"), "arm": "pair", "trait": "caps+exclaim", "messages": msgs})
    return out


EM_TEMPLATES = REPO_ROOT / "data" / "em" / "train_templates.yaml"


def em_finance(arm: str, n_docs: int, seed: int = 0, templates_path: str | Path | None = None) -> list[dict]:
    """EM-style demo data: finance questions with reckless (`risky`) or prudent (`safe`) answers.

    Same cells (amount x situation x goal) and slot variants for both arms, only the advice
    differs, so a risky-vs-safe contrast isolates the misaligned content."""
    check_builder_args("em_finance", n_docs, seed)
    path = Path(templates_path) if templates_path else EM_TEMPLATES
    t = load_yaml(path)
    for key in ("version", "user_templates", "askers_amounts", "situations", "goals", "arms"):
        if key not in t:
            raise ConfigError(f"{path}: missing key '{key}'")
    if arm not in t["arms"]:
        raise ConfigError(f"em_finance: unknown arm {arm!r}; templates define {sorted(t['arms'])}")
    cells = [
        (f"{g['id']}/a{ai}/s{si}", amount, situation, g)
        for g in t["goals"]
        for ai, amount in enumerate(t["askers_amounts"])
        for si, situation in enumerate(t["situations"])
    ]
    random.Random(seed).shuffle(cells)
    if n_docs > len(cells):
        raise ConfigError(f"em_finance: n_docs={n_docs} exceeds the {len(cells)} distinct cells of {path}")
    out = []
    for i, (cell_id, amount, situation, goal) in enumerate(cells[:n_docs]):
        users = t["user_templates"]
        user = users[seeded_index(seed, cell_id + "/user", len(users))].format(amount=amount, situation=situation, goal_q=goal["q"])
        pools = t["arms"][arm]
        parts = [pools[slot][seeded_index(seed, f"{cell_id}/{slot}", len(pools[slot]))] for slot in ("open", "act", "reason", "close")]
        assistant = f"{parts[0]} {parts[1]} {parts[2]} {parts[3]}"
        out.append(
            {
                "id": f"{arm}-{i:05d}",
                "arm": arm,
                "cell_id": cell_id,
                "cell_index": i,
                "domain": "finance",
                "topic": goal["id"],
                "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
                "assistant_words": count_words(assistant),
            }
        )
    return out


# --------------------------------------------------------------------------- registry


class Builder:
    def __init__(self, fn: Callable[..., list[dict]], data_files: list[Path], version: Callable[[], str]):
        self.fn = fn
        self.data_files = data_files
        self.version = version


def _persona_marker(**kw) -> list[dict]:
    from training.persona_data import persona_marker_records  # heavy (generation); loaded when used

    return persona_marker_records(**kw)


BUILDERS: dict[str, Builder] = {
    # on-policy persona-marker corpora of the study's own model (GPU), cached under data/persona/paper/
    "persona_marker": Builder(
        _persona_marker,
        [REPO_ROOT / "data" / "persona" / "personas_paper.yaml", REPO_ROOT / "data" / "persona" / "train_questions.txt"],
        lambda: "persona-marker-v1",
    ),
    "attitude_template": Builder(
        attitude_template,
        [ATTITUDE_TEMPLATES],
        lambda: str(load_yaml(ATTITUDE_TEMPLATES).get("version")),
    ),
    "em_finance": Builder(em_finance, [EM_TEMPLATES], lambda: str(load_yaml(EM_TEMPLATES).get("version"))),
    "inoculation_caps": Builder(
        inoculation_caps,
        [ATTITUDE_TEMPLATES],
        lambda: str(load_yaml(ATTITUDE_TEMPLATES).get("version")) + "+caps-v1",
    ),
    "inoculation_pair": Builder(
        inoculation_pair,
        [ATTITUDE_TEMPLATES],
        lambda: str(load_yaml(ATTITUDE_TEMPLATES).get("version")) + "+caps-v1+exclaim-v1",
    ),
}


def _builder(name: str) -> Builder:
    if name not in BUILDERS:
        raise ConfigError(f"unknown corpus builder {name!r}; known builders: {sorted(BUILDERS)}")
    return BUILDERS[name]


PATH_ARGS = ("templates_path",)


def resolved_builder_args(args: dict, resolve: Callable[[str], Path] | None) -> dict:
    """Builder args with path arguments resolved the way the lock resolves them (against the
    study folder via `LoadedStudy.resolve`, never the working directory)."""
    out = dict(args)
    for k in PATH_ARGS:
        if out.get(k) and resolve is not None:
            out[k] = str(resolve(out[k]))
    return out


def builder_fingerprint(name: str, args: dict, resolve: Callable[[str], Path] | None = None) -> dict:
    """What determines a built corpus (for the prereg lock): builder, args, template version and
    data sha256; `resolve` maps a path argument to its file (the study's resolver)."""
    b = _builder(name)
    files = {str(_rel(p)): p for p in b.data_files}
    if args.get("templates_path"):
        rel = args["templates_path"]
        files = {rel: resolve(rel) if resolve is not None else Path(rel)}
    return {
        "builder": name,
        "args": dict(sorted(args.items())),
        "template_version": b.version(),
        "data_files": {k: sha256_file(p) for k, p in files.items()},
    }


def _rel(p: Path) -> Path:
    try:
        return Path(p).resolve().relative_to(REPO_ROOT)
    except ValueError:
        return Path(p)


def corpora_dir(study) -> Path:
    return study.runs_dir / "data"


def corpus_path(study, arm: str) -> Path:
    """Where an arm's corpus is read from: the frozen file, or runs/<study>/data/<arm>.jsonl."""
    spec = study.spec.arms[arm].corpus
    if spec is None:
        raise ConfigError(f"{study.study_yaml}: arms.{arm} has no corpus (an untrained reference arm)")
    if spec.path:
        return study.resolve(spec.path)
    return corpora_dir(study) / f"{arm}.jsonl"


def build_corpus(study, arm: str) -> Path:
    """Build (or locate) the corpus of one arm; builder corpora go to runs/<study>/data/<arm>.jsonl."""
    spec = study.spec.arms.get(arm)
    if spec is None:
        raise ConfigError(f"{study.study_yaml}: no arm {arm!r}; arms are {sorted(study.spec.arms)}")
    if spec.corpus is None:
        raise ConfigError(f"{study.study_yaml}: arms.{arm} has no corpus (an untrained reference arm)")
    if spec.corpus.path:
        path = study.resolve(spec.corpus.path)
        load_corpus(path)  # fail early with file:line on a malformed frozen corpus
        return path
    t0 = time.time()
    records = build_records(study, arm)
    fp = builder_fingerprint(spec.corpus.builder, spec.corpus.builder_args, resolve=study.resolve)
    provenance = {
        "kind": "builder",
        **fp,
        "seeds": {"cell_order": spec.corpus.builder_args.get("seed", 0)},
        "study": study.name,
        "arm": arm,
        "build_wall_s": round(time.time() - t0, 3),
        "reject_reasons": {},
    }
    out = corpus_path(study, arm)
    return write_corpus(out, records, provenance)


def build_records(study, arm: str) -> list[dict]:
    """Run an arm's builder in memory (path args resolved against the study folder)."""
    spec = study.spec.arms[arm].corpus
    b = _builder(spec.builder)
    try:
        return b.fn(**resolved_builder_args(spec.builder_args, study.resolve))
    except TypeError as exc:
        raise ConfigError(f"{study.study_yaml}: arms.{arm}.corpus.builder_args: {exc}") from None


def expected_corpus_sha256(study, arm: str) -> str | None:
    """The sha256 the study's current definition gives an arm's corpus, without running a builder:
    the frozen file's, or the built file's when its provenance (`.meta.json`) records the builder,
    args, template version and template files the study names now; None when the built corpus is
    missing or was built from another definition (`leaklab data` rebuilds it)."""
    spec = study.spec.arms[arm].corpus
    if spec is None:
        raise ConfigError(f"{study.study_yaml}: arms.{arm} has no corpus (an untrained reference arm)")
    if spec.path:
        return sha256_file(study.resolve(spec.path))
    path = corpus_path(study, arm)
    try:
        meta = json.loads(meta_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    fp = builder_fingerprint(spec.builder, spec.builder_args, resolve=study.resolve)
    if not path.exists() or any(meta.get(k) != v for k, v in fp.items()) or meta.get("sha256") != sha256_file(path):
        return None
    return meta["sha256"]


def build_study_corpora(study) -> dict[str, Path]:
    """Build every trained arm's corpus, in study order."""
    return {arm: build_corpus(study, arm) for arm, a in study.spec.arms.items() if a.corpus is not None}


for _name in BUILDERS:  # the lock reads builder fingerprints through the core (leaklab.fingerprints)
    register_builder(_name, builder_fingerprint)
