"""The import layers: core <- stages <- pipeline/CLI, and no import cycle anywhere.

Reads every project module's imports with `ast` (imports inside functions count: a lazy import
is still a dependency, it only hides the cycle from Python), so the check needs no heavy import.
Layers (CONTRACTS.md "Layers"):
- core: study schema, yamlio, run store, io, family specs, builder fingerprints, markdown env,
  model registry: imports nothing above it;
- stages: prereg, training, tasks/solvers/scorers (with the Inspect model provider), analysis,
  reports: import core and earlier stages, never the pipeline/CLI;
- pipeline/CLI: leaklab's eval/run/executors/register/cli and every stage's `cli.py`.
Among the stages the package graph must be acyclic; `prereg.power` and `prereg.calibrate`
(which simulate the analysis to size and calibrate the plan) count as their own unit above
analysis.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("leaklab", "prereg", "training", "tasks", "solvers", "scorers", "analysis", "reports")

CORE = {"leaklab", "leaklab.io", "leaklab.yamlio", "leaklab.study", "leaklab.runstore", "leaklab.families",
        "leaklab.fingerprints", "leaklab.mdsafe", "leaklab.models", "leaklab.pytensor_blas"}
STAGE_LEAKLAB = {"leaklab.provider", "leaklab._registry", "leaklab.vllm_server", "leaklab.child_guard"}  # the Inspect model provider (tasks stage)
PIPELINE_LEAKLAB = {"leaklab.cli", "leaklab.evaluate", "leaklab.executors", "leaklab.pipeline", "leaklab.register"}
DESIGN_UNIT = {"prereg.power", "prereg.calibrate"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            parts = f.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = f
    return out


MODULES = _modules()


def _target(name: str) -> str | None:
    """The project module an imported name lives in (longest module prefix)."""
    parts = name.split(".")
    while parts and ".".join(parts) not in MODULES:
        parts = parts[:-1]
    return ".".join(parts) if parts else None


def import_graph(modules: dict[str, Path] = MODULES) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                # `from pkg import submodule` depends on the submodule, not on what pkg/__init__ defines
                subs = [f"{src}.{a.name}" for a in node.names]
                names = [s for s in subs if s in modules] or [src]
                names += [src] if any(s not in modules for s in subs) else []
            for n in names:
                t = _target(n) if n.split(".")[0] in PACKAGES else None
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def layer(mod: str) -> str:
    top = mod.split(".")[0]
    if top == "leaklab":
        head = ".".join(mod.split(".")[:2])
        if head in CORE or mod in CORE:
            return "core"
        if head in STAGE_LEAKLAB:
            return "stage"
        if head in PIPELINE_LEAKLAB:
            return "pipeline"
        raise AssertionError(f"{mod}: not assigned to a layer in tests/test_layers.py")
    if mod.endswith(".cli"):
        return "pipeline"
    return "stage"


def unit(mod: str) -> str:
    """The stage unit a stage module belongs to (its top-level package; see DESIGN_UNIT)."""
    if mod in DESIGN_UNIT:
        return "prereg.design"
    if mod.split(".")[0] == "leaklab":
        return "tasks"  # the Inspect model provider serves the tasks
    return mod.split(".")[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    nodes = sorted(set(graph) | {t for ts in graph.values() for t in ts})
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


GRAPH = import_graph()


def test_every_module_has_a_layer():
    for mod in MODULES:
        layer(mod)


def test_core_imports_only_core():
    bad = sorted(f"{m} -> {t}" for m, ts in GRAPH.items() if layer(m) == "core" for t in ts if layer(t) != "core")
    assert not bad, "core imports a stage or the pipeline:\n" + "\n".join(bad)


def test_stages_never_import_the_pipeline():
    bad = sorted(f"{m} -> {t}" for m, ts in GRAPH.items() if layer(m) == "stage" for t in ts if layer(t) == "pipeline")
    assert not bad, "a stage imports the pipeline/CLI:\n" + "\n".join(bad)


def test_no_module_import_cycle():
    found = cycles(GRAPH)
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_stage_units_form_a_dag():
    units: dict[str, set[str]] = defaultdict(set)
    why: dict[tuple[str, str], str] = {}
    for m, ts in GRAPH.items():
        if layer(m) != "stage":
            continue
        for t in ts:
            if layer(t) == "stage" and unit(m) != unit(t):
                units[unit(m)].add(unit(t))
                why.setdefault((unit(m), unit(t)), f"{m} -> {t}")
    found = cycles(units)
    lines = []
    for c in found:
        lines += [f"{a} -> {b} ({why[(a, b)]})" for a in c for b in c if (a, b) in why]
    assert not found, "stage packages import each other in a cycle:\n" + "\n".join(lines)


def test_the_checks_catch_a_cycle_and_an_upward_import(tmp_path):
    """The checker itself: a planted cycle and a core -> stage import are found."""
    (tmp_path / "leaklab").mkdir()
    (tmp_path / "prereg").mkdir()
    files = {
        "leaklab.study": tmp_path / "leaklab" / "study.py",
        "leaklab.runstore": tmp_path / "leaklab" / "runstore.py",
        "prereg.gate": tmp_path / "prereg" / "gate.py",
    }
    files["leaklab.study"].write_text("def f():\n    from leaklab.runstore import x\n")
    files["leaklab.runstore"].write_text("from leaklab.study import y\nimport prereg.gate\n")
    files["prereg.gate"].write_text("")
    global MODULES
    saved = MODULES
    MODULES = files
    try:
        g = import_graph(files)
    finally:
        MODULES = saved
    assert cycles(g) == [["leaklab.runstore", "leaklab.study"]]
    assert "prereg.gate" in g["leaklab.runstore"] and layer("prereg.gate") == "stage"


@pytest.mark.parametrize("name", ["attitude", "inoculation", "persona", "custom"])
def test_family_specs_are_core_and_complete(name):
    from leaklab.families import family

    fam = family(name)
    assert fam.name == name and fam.noun
    assert layer(f"leaklab.families.{name}") == "core"
