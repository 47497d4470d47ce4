"""Shared fixtures: an isolated run root per test, and the prepared tiny-random model."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("INSPECT_LOG_LEVEL", "warning")
# One BLAS/OpenMP thread per process, inherited by every `leaklab`/`inspect` subprocess: the suite
# runs on two pytest-xdist workers (pyproject addopts), and on 2 cores a second intra-op thread per
# process only spin-waits (an `inspect eval` of the four stance tasks on tiny-random took 4x longer
# with torch's default threads on a loaded 2-core machine). Export OMP_NUM_THREADS to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# The suite fits its many small Bayesian models with pymc: pytensor keeps their compiled C on disk
# between runs, while nutpie (the default sampler) compiles each new graph with numba for ~15-30 s
# and caches nothing across processes. tests/test_bayes_nutpie.py covers the default: the same
# posterior as pymc, compile reuse, the run-effect parametrisation.
os.environ.setdefault("LEAKLAB_BAYES_SAMPLER", "pymc")


def _scope(item, name):
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.get(name) if info else None
    return defs[-1].scope if defs else "function"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """pytest-xdist (`--dist loadgroup`): a test that shares an expensive fixture runs on the worker
    that built it. Users of the session's toy run form one group; tests of a module with a
    module-scoped fixture form the module's group; every other test goes wherever a worker is free.
    `tryfirst`: the markers must exist before xdist's worker hook reads them into the node ids."""
    # the longest single tests first, so the short ones fill both workers' tails (xdist schedules
    # groups by size, then single tests in collection order)
    items.sort(key=lambda item: item.get_closest_marker("long_running") is None)
    for item in items:
        names = item.fixturenames
        if "toy_run" in names:
            item.add_marker(pytest.mark.xdist_group("toy_run"))
        elif any(_scope(item, n) == "module" and n != "_one_torch_thread" for n in names):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def pytest_collection_finish(session):
    """Fail loudly if xdist's loadgroup silently stopped grouping: it passes a test's group to the
    scheduler as an '@group' suffix of its node id, which pytest 9.2 ignores (pytest-xdist issue
    #1386; pyproject pins pytest < 9.2). Ungrouped, both workers build the toy run and every
    module fixture (the suite took 11 min instead of about 8)."""
    if not (os.environ.get("PYTEST_XDIST_WORKER") and session.config.getvalue("loadgroup")):
        return
    lost = [i.nodeid for i in session.items if any(i.iter_markers("xdist_group")) and "@" not in i.nodeid]
    if lost:
        raise pytest.UsageError(f"--dist loadgroup is not grouping ({len(lost)} tests, e.g. {lost[0]}): this pytest "
                                f"({pytest.__version__}) drops xdist's group suffix; install pytest < 9.2")


@pytest.fixture
def runs_root(tmp_path, monkeypatch):
    """Point $LEAKLAB_RUNS at a fresh folder so tests never touch the real runs/."""
    root = tmp_path / "runs"
    monkeypatch.setenv("LEAKLAB_RUNS", str(root))
    return root


@pytest.fixture(scope="session")
def tiny_model_dir():
    from leaklab.models import prepare

    return prepare("tiny-random")


@pytest.fixture(scope="module")
def _one_torch_thread():
    """One torch thread for a module (opt in with `pytestmark = pytest.mark.usefixtures("_one_torch_thread")`):
    on 2 shared cores torch's spin-waiting threads slow tiny forwards ~20x under load; restored after."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer) of tiny-random, loaded once per session. Read-only: a test that wraps or
    trains the model (PEFT injects layers in place) loads its own."""
    from leaklab.models import load_model, load_tokenizer

    return load_model("tiny-random", device="cpu"), load_tokenizer("tiny-random")


@pytest.fixture(scope="session")
def varied_dir(tmp_path_factory):
    """A random Llama shaped like tiny-random with a wide initialisation, so greedy outputs differ
    per prompt and per step (tiny-random puts almost all its mass on "\\n")."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    from leaklab import models

    out = tmp_path_factory.mktemp("varied")
    cfg = AutoConfig.from_pretrained(models.prepare("tiny-random"))
    cfg.initializer_range = 0.5
    cfg.tie_word_embeddings = False
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    models.load_tokenizer("tiny-random").save_pretrained(out)
    return out.resolve()


def leaklab_cli(args, runs, **kw):
    """`python -m leaklab.cli ARGS` with $LEAKLAB_RUNS=runs, from the repository root."""
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, LEAKLAB_RUNS=str(runs), PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "leaklab.cli", *args], cwd=Path(__file__).resolve().parent.parent,
                          env=env, capture_output=True, text=True, **kw)


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    """The toy study (tests/toy_study.py) locked and run once per session by the local executor,
    killed as soon as its first cell is DONE and resumed: tests/test_pipeline_e2e.py checks its
    artifacts and the resume, tests/test_executors.py compares `--executor ray` with it (one
    local pipeline run for both)."""
    import json
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    from types import SimpleNamespace

    from toy_study import write_toy_study

    root = tmp_path_factory.mktemp("toy_run")
    study, runs = write_toy_study(root / "toy"), root / "runs"
    r = leaklab_cli(["prereg", "lock", str(study)], runs)
    assert r.returncode == 0, r.stdout + r.stderr
    lock = json.loads((study / "prereg.lock.json").read_text())
    env = dict(os.environ, LEAKLAB_RUNS=str(runs), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "leaklab.cli", "run", str(study)],
                            cwd=Path(__file__).resolve().parent.parent, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    train = runs / "toy" / "train" / "tiny"
    deadline = time.time() + 400
    while time.time() < deadline and not list(train.glob("*/seed*/DONE")):
        assert proc.poll() is None, "run ended before any cell finished"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first_done = {p.parent: p.stat().st_mtime_ns for p in train.glob("*/seed*/DONE")}
    resumed = leaklab_cli(["run", str(study)], runs, timeout=800)
    return SimpleNamespace(study=study, runs=runs, lock=lock, first_done=first_done, resumed=resumed)
