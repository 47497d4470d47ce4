"""The tests' study and prereg folders, in one place.

- `STUDY` / `PREREG` / `write_toy_study`: the toy attitude study on tiny-random (3 arms, letter
  read-out on source and target items), run end to end by the session fixture `toy_run`
  (tests/conftest.py) and edited by text replacement in the adversarial tests.
- `TWO_ARM_STUDY` / `two_arm_study`: two template arms (a = cautious, b = eager) on tiny-random,
  small enough to train in seconds (training and custody tests).
- `SYNTH_STUDY` / `synth_prereg` / `write_synth_study`: a three-arm attitude study over synthetic
  logs with planted effects (analysis tests; nothing is trained).
- `ECHO_STUDY` / `write_echo_study`: an inoculation study whose task echoes its arguments (eval
  planning tests).

The YAML is written in the builders' own inline style, so tests can edit it by `str.replace`.
"""

from __future__ import annotations

from pathlib import Path


def template_corpus(arm: str, n_docs: int = 60, seed: int = 3) -> str:
    """An arm's corpus from the attitude template builder, as one inline YAML mapping."""
    return f"{{corpus: {{builder: attitude_template, builder_args: {{arm: {arm}, n_docs: {n_docs}, seed: {seed}}}}}}}"


def letter_eval(item_set: str, limit_base_items: int) -> str:
    return (f"  - task: tasks/stance.py@letter_logprob\n    item_set: {item_set}\n"
            f"    args: {{items: data/attitude/{item_set}.jsonl, limit_base_items: {limit_base_items}}}\n")


def study_text(name: str, *, family: str, arms: dict[str, str], reference_arm: str, seeds=(0, 1), training: str = "",
               eval: str = "", title: str | None = None, extra: str = "") -> str:
    """study.yaml on tiny-random (label tiny); `training` and `eval` are their indented YAML bodies."""
    out = f"name: {name}\n" + (f"title: {title}\n" if title else "") + f"family: {family}\n"
    out += "models:\n  - {name: tiny-random, label: tiny}\narms:\n" + "".join(f"  {a}: {c}\n" for a, c in arms.items())
    out += f"reference_arm: {reference_arm}\nseeds: {list(seeds)}\n"
    out += (f"training:\n{training}" if training else "") + extra
    return out + ("eval:\n" + eval if eval else "eval: []\n")


def hypothesis(id: str, statement: str, *, item_set: str, estimand: str = "combined_directional", direction: str = "positive",
               family: str = "primary", confirmatory: bool = True, measure: str = "letter_logprob") -> str:
    """One prereg hypothesis; the combined estimand contrasts eager (pro) with cautious (anti)."""
    arms = "    pro_arm: eager\n    anti_arm: cautious\n" if estimand == "combined_directional" else ""
    return (f"  - id: {id}\n    statement: \"{statement}\"\n    measure: {measure}\n    item_set: {item_set}\n"
            f"    estimand: {estimand}\n{arms}    direction: {direction}\n"
            "    sesoi: {value: 0.2, unit: d, justification: conventional}\n"
            f"    confirmatory: {str(confirmatory).lower()}\n    family: {family}\n")


def prereg_text(id: str, title: str, hypotheses: list[str], *, outcome_item_set: str, families: dict[str, str], frequentist: str,
                bayesian: str, header: str = "", exclusions: str = "") -> str:
    """prereg.yaml around the given hypotheses; `frequentist` is its inline mapping, `bayesian` its indented body."""
    return (
        f"id: {id}\ntitle: {title}\nversion: 1\nauthors: [tests]\ndata_status: prior_to_creation\n{header}"
        "hypotheses:\n" + "".join(hypotheses)
        + "outcomes:\n  primary:\n"
        f"    - {{id: o1, measure: letter_logprob, item_set: {outcome_item_set}, description: letter margin, scale: log-odds}}\n"
        + exclusions
        + "missing_data: Failed parses are excluded and counted.\n"
        "stopping_rule: {kind: fixed_design, description: fixed design at toy scale}\n"
        "multiplicity: {families: {" + ", ".join(f"{k}: {v}" for k, v in families.items()) + "}}\n"
        f"frequentist: {frequentist}\nbayesian:\n{bayesian}"
        "decision_rule: CI beyond SESOI and HDI outside ROPE with gates passed.\n"
    )


def write_study(folder: Path, study: str, prereg: str | None = None, files: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.yaml").write_text(study)
    if prereg is not None:
        (folder / "prereg.yaml").write_text(prereg)
    for name, text in (files or {}).items():
        (folder / name).write_text(text)
    return folder


# ---- the toy attitude study ------------------------------------------------------------------

TOY_TRAINING = """\
  lora: {r: 4, alpha: 8, dropout: 0.0}
  learning_rate: 1.0e-3
  batch_size: 8
  max_length: 96
  max_steps: 3
"""

STUDY = study_text(
    "toy", title="toy end-to-end study", family="attitude", arms={a: template_corpus(a) for a in ("cautious", "eager", "neutral")},
    reference_arm="neutral", training=TOY_TRAINING, eval=letter_eval("source", 4) + letter_eval("target", 6),
)

PREREG = prereg_text(
    "toy", "toy end-to-end study",
    [hypothesis("H1", "eager vs cautious moves target stance", item_set="target"),
     hypothesis("M1", "manipulation check", item_set="source", confirmatory=False, family="manipulation")],
    header="design: study.yaml\n", outcome_item_set="target", families={"primary": "none", "manipulation": "none"},
    frequentist="{estimator: d, ci: hierarchical_bootstrap, n_resamples: 400, alpha: 0.05, test: minimum_effect, seed: 1}",
    bayesian="""\
  likelihood: {letter_logprob: normal}
  random_effects: [seed, item]
  draws: 200
  tune: 200
  chains: 2
  seed: 1
  gates: {rhat_max: 1.05, ess_bulk_min: 50, ess_tail_min: 50, max_divergences: 5}
""",
)


def write_toy_study(folder: Path, seeds=(0, 1)) -> Path:
    """The toy study (its three arms: cautious, eager, neutral) with the given seeds."""
    return write_study(folder, STUDY.replace("seeds: [0, 1]", f"seeds: {list(seeds)}"), PREREG)


# ---- two template arms, a (cautious) and b (eager) --------------------------------------------


def two_arm_study(name: str, *, seeds=(0, 1), training: str, eval: str = "", extra: str = "", n_docs: int = 8) -> str:
    return study_text(name, family="custom", arms={"a": template_corpus("cautious", n_docs), "b": template_corpus("eager", n_docs)},
                      reference_arm="a", seeds=seeds, training=training, eval=eval, extra=extra)


# the training tests' study: one epoch with a checkpoint every step, no eval
TWO_ARM_STUDY = two_arm_study("tiny", training="""\
  lora: {r: 4, alpha: 8, dropout: 0.1}
  batch_size: 4
  max_length: 96
  epochs: 1
  warmup_ratio: 0.0
  checkpoint_every: 1
""")


# ---- synthetic logs for the analysis ----------------------------------------------------------

SYNTH_STUDY = study_text(
    "synth", family="attitude", arms={a: f"{{corpus: {{path: {a[0]}.jsonl}}}}" for a in ("cautious", "eager", "neutral")},
    reference_arm="neutral", seeds=(0, 1, 2),
    eval="".join(f'  - {{task: "tasks/stance.py@{m}", item_set: {s}}}\n'
                 for m in ("letter_logprob", "forced_choice", "token_logprob") for s in ("source", "target")),
)


def synth_prereg(draws: int = 100, tune: int = 100, chains: int = 2) -> str:
    """H1 combined (primary), H2/H3 per arm vs neutral (Holm), M1 the manipulation check on
    source items, E1 the token measure (exploratory); parse failures excluded."""
    return prereg_text(
        "synth-prereg", '"Synthetic prereg for analysis tests"',
        [hypothesis("H1", "H1: eager vs cautious on target", item_set="target"),
         hypothesis("H2", "H2: cautious vs neutral", item_set="target", estimand="cautious - neutral", direction="negative",
                    family="per_arm"),
         hypothesis("H3", "H3: eager vs neutral", item_set="target", estimand="eager - neutral", family="per_arm"),
         hypothesis("M1", "M1: manipulation check", item_set="source", confirmatory=False, family="manipulation"),
         hypothesis("E1", "E1: token measure", item_set="target", measure="token_logprob", confirmatory=False, family="exploratory")],
        outcome_item_set="target", families={"primary": "none", "per_arm": "holm", "manipulation": "none", "exploratory": "none"},
        exclusions='exclusions:\n  - {id: unparsed, predicate: "parsed == False", rationale: "a failed parse has no value"}\n',
        frequentist="{n_resamples: 2000, alpha: 0.05, test: minimum_effect, seed: 5}",
        bayesian=f"""\
  likelihood: {{letter_logprob: normal, forced_choice: bernoulli, token_logprob: normal}}
  random_effects: [seed, item]
  draws: {draws}
  tune: {tune}
  chains: {chains}
  seed: 3
  gates: {{rhat_max: 1.05, ess_bulk_min: 100, ess_tail_min: 100, max_divergences: 5, bfmi_min: 0.2}}
""",
    )


def write_synth_study(root: Path, **prereg_kw) -> Path:
    """studies/synth under `root` (the runs folder is the caller's $LEAKLAB_RUNS)."""
    return write_study(root / "studies" / "synth", SYNTH_STUDY, synth_prereg(**prereg_kw),
                       {f: '{"id": "x"}\n' for f in ("c.jsonl", "e.jsonl", "n.jsonl")})


# ---- eval planning: a task that echoes its arguments ------------------------------------------

ECHO_TASK = '''
from inspect_ai import Task, task
from inspect_ai.dataset import Sample

@task
def echo(items: str, item_set: str, condition: str = "default", conditioning: dict | None = None):
    return Task(dataset=[Sample(input="hi", target="x")], metadata={"items": items, "condition": condition, "conditioning": conditioning})
'''


def write_echo_study(folder: Path) -> Path:
    """An inoculation study (a fixed-prefix arm and a control) evaluating toy_task.py@echo under the
    default and the arms' training conditions, sampled (temperature 1, 3 epochs) with a grader role."""
    study = study_text(
        "toy", family="inoculation",
        arms={"fixed": '{corpus: {path: corpus.jsonl}, conditioning: {prefix_mode: fixed, user_prefix: "Be playful."}}',
              "control": "{corpus: {path: corpus.jsonl}}"},
        reference_arm="control",
        extra="eval_conditions:\n  - {name: default}\n  - {name: training, arm_training: true}\n",
        eval=(f"  - task: {folder / 'toy_task.py'}@echo\n    item_set: target\n    args: {{items: data/x.jsonl}}\n"
              "    conditions: [default, training]\n    temperature: 1.0\n    epochs: 3\n    grader: mockllm/model\n"),
    )
    return write_study(folder, study, files={"corpus.jsonl": "{}\n", "toy_task.py": ECHO_TASK})
