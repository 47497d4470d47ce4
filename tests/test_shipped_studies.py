"""Every study shipped under studies/ loads, its prereg passes the cross-checks against the
study, every file it binds exists, and its eval plan builds Inspect tasks for the base model."""

import pytest

from leaklab.study import REPO_ROOT, load_study

STUDIES = sorted(p.parent.name for p in (REPO_ROOT / "studies").glob("*/study.yaml"))


def test_the_three_families_are_shipped():
    fams = {load_study(REPO_ROOT / "studies" / s).spec.family for s in STUDIES}
    assert {"attitude", "inoculation", "persona"} <= fams


@pytest.mark.parametrize("name", STUDIES)
def test_prereg_checks_and_binds_files(name):
    from prereg.locking import compute_components
    from prereg.schema import load_prereg

    folder = REPO_ROOT / "studies" / name
    pr = load_prereg(folder)
    assert any(h.confirmatory for h in pr.hypotheses)
    comps = compute_components(folder)
    assert len(comps.digest) == 64


@pytest.mark.parametrize("name", STUDIES)
def test_eval_plan_builds_for_the_base_model(name):
    from leaklab.evaluate import Checkpoint, build_tasks

    st = load_study(REPO_ROOT / "studies" / name)
    base = Checkpoint(model=st.spec.models[0], arm="base", seed=None, checkpoint="final", adapter=None)
    # a GPU grader (vllm/...) is resolved when the task is built; here only the task arguments matter
    entries = [e.model_copy(update={"grader": None}) if e.grader and not e.grader.startswith("leaklab/") else e
               for e in st.spec.eval]
    tasks = build_tasks(st, base, entries)
    assert tasks and all(len(t.dataset) > 0 for t in tasks)


def test_persona_paper_is_at_the_seed_scale():
    """5 sources, 111 personas x 20 questions x 10 samples per checkpoint, a 7B model on vLLM."""
    from leaklab.evaluate import Checkpoint, build_tasks

    st = load_study(REPO_ROOT / "studies" / "persona-paper")
    assert st.spec.backend == "vllm" and "7B" in st.spec.models[0].name and len(st.spec.arms) == 5
    base = Checkpoint(model=st.spec.models[0], arm="base", seed=None, checkpoint="final", adapter=None)
    tasks = build_tasks(st, base, [e for e in st.spec.eval if e.task.startswith("tasks/persona.py")])  # not capability
    personas = {s.metadata["persona"] for t in tasks for s in t.dataset}
    questions = {s.metadata["question_id"] for t in tasks for s in t.dataset}
    assert len(personas) == 111 and len(questions) == 20 and {t.epochs for t in tasks} == {10}
    assert set(st.spec.arms) <= personas


@pytest.mark.parametrize("name", STUDIES)
def test_every_shipped_study_evaluates_capability(name):
    """A leak claimed from an adapter that broke the model is no leak: every shipped study runs
    the capability tasks (refusal, fluency; perplexity wherever the backend can score text,
    i.e. not under vLLM) as plain eval entries, which run on the base model and every arm, and
    its prereg bounds them."""
    from prereg.schema import load_prereg

    st = load_study(REPO_ROOT / "studies" / name)
    measures = {e.task.split("@")[1] for e in st.spec.eval if e.task.startswith("tasks/capability.py@")}
    assert {"refusal", "fluency"} <= measures
    assert "perplexity" in measures or st.spec.backend == "vllm"
    bounded = set(load_prereg(REPO_ROOT / "studies" / name).capability.bounds(measures))
    assert bounded == measures
