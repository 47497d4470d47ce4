"""What an eval entry measures and which data files it reads, found by reading the task's source
(`ast`, no import: importing a task pulls in Inspect and torch).

Why: a task reads files the study never names (its default `items`, a traits file, a judge
prompt that is a default of the scorer it calls), and one task can produce several measures
(`trait` -> `trait_french`, `trait_caps`; `persona` -> `marker`). The lock must bind those files
and the prereg cross-check must accept those measures. We look one level deep: the task
function's own defaults, and the defaults of functions it calls that it imports from the
project's `scorers` / `solvers` / `tasks` packages (for parameters the call does not pass).
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from leaklab.study import looks_like_path

_PKGS = ("scorers", "solvers", "tasks")


@lru_cache(maxsize=64)
def _parse(path: str, mtime: float) -> ast.Module | None:
    try:
        return ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None


def _module(path: Path) -> ast.Module | None:
    return _parse(str(path), path.stat().st_mtime) if path.is_file() else None


def _find_def(tree: ast.Module, name: str) -> ast.FunctionDef | None:
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return node
    return None


def _defaults(fdef: ast.FunctionDef) -> dict[str, Any]:
    """Parameter -> literal default (only literals; others are skipped)."""
    out: dict[str, Any] = {}
    a = fdef.args
    pos = a.posonlyargs + a.args
    for arg, d in zip(pos[len(pos) - len(a.defaults):], a.defaults):
        try:
            out[arg.arg] = ast.literal_eval(d)
        except ValueError:
            pass
    for arg, d in zip(a.kwonlyargs, a.kw_defaults):
        if d is not None:
            try:
                out[arg.arg] = ast.literal_eval(d)
            except ValueError:
                pass
    return out


def _imports(tree: ast.Module) -> dict[str, tuple[str, str]]:
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in _PKGS:
            for alias in node.names:
                out[alias.asname or alias.name] = (node.module, alias.name)
    return out


class TaskInfo:
    """Effective defaults of a task and of the project functions it calls."""

    def __init__(self, task_ref: str, root: Path, args: dict):
        self.task_ref = task_ref
        self.args = dict(args)
        self.params: dict[str, Any] = {}  # the task's effective parameters (defaults overridden by args)
        self.called: list[tuple[str, dict[str, Any]]] = []  # (module.func, its unpassed literal defaults)
        self.measure_literals: set[str] = set()  # `measure="..."` keywords inside the task body
        self.found = False
        if "@" not in task_ref:
            return
        file, name = task_ref.rsplit("@", 1)
        tree = _module(root / file)
        fdef = _find_def(tree, name) if tree is not None else None
        if fdef is None:
            return
        self.found = True
        self.params = {**_defaults(fdef), **self.args}
        imports = _imports(tree)
        for node in ast.walk(fdef):
            if not isinstance(node, ast.Call):
                continue
            for kw in node.keywords:
                if kw.arg == "measure" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                    self.measure_literals.add(kw.value.value)
            if isinstance(node.func, ast.Name) and node.func.id in imports:
                module, fname = imports[node.func.id]
                mtree = _module(root / (module.replace(".", "/") + ".py"))
                cdef = _find_def(mtree, fname) if mtree is not None else None
                if cdef is None:
                    continue
                passed = {kw.arg for kw in node.keywords if kw.arg}
                npos = len(node.args)
                posnames = [a.arg for a in (cdef.args.posonlyargs + cdef.args.args)][:npos]
                unpassed = {k: v for k, v in _defaults(cdef).items() if k not in passed and k not in posnames}
                self.called.append((f"{module}.{fname}", unpassed))

    def files(self) -> list[tuple[str, str]]:
        """[(path, where)] for every path-like string default the entry does not override."""
        out = []
        for k, v in self.params.items():
            if k not in self.args and isinstance(v, str) and looks_like_path(v):
                out.append((v, f"{self.task_ref} default {k}"))
        for where, defaults in self.called:
            for k, v in defaults.items():
                if isinstance(v, str) and looks_like_path(v):
                    out.append((v, f"{where} default {k}"))
        return out

    def measures(self, resolve) -> set[str]:
        """Measure names the entry's scores can carry (see module docstring)."""
        name = self.task_ref.split("@")[-1]
        out = {name} | set(self.measure_literals)
        if isinstance(self.params.get("measure"), str):
            out.add(self.params["measure"])
        for _, defaults in self.called:
            if isinstance(defaults.get("measure"), str):
                out.add(defaults["measure"])
        out |= self._trait_measures(resolve)
        return out

    def _trait_measures(self, resolve) -> set[str]:
        tf, traits = self.params.get("traits_file"), self.params.get("traits")
        if not isinstance(tf, str) or traits is None:
            return set()
        ids = [t.strip() for t in (traits.split(",") if isinstance(traits, str) else traits) if str(t).strip()]
        path = resolve(tf)
        table: dict = {}
        if path is not None and path.is_file():
            import yaml

            try:
                table = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("traits", {}) or {}
            except yaml.YAMLError:
                table = {}
        out = set()
        for t in ids:
            spec = table.get(t) if isinstance(table, dict) else None
            out.add(spec.get("measure", f"trait_{t}") if isinstance(spec, dict) else f"trait_{t}")
        return out


def task_info(study, entry) -> TaskInfo:
    from leaklab.study import REPO_ROOT

    file = entry.task.rsplit("@", 1)[0] if "@" in entry.task else None
    root = REPO_ROOT
    if file and not (REPO_ROOT / file).is_file() and (study.folder / file).is_file():
        root = study.folder
    return TaskInfo(entry.task, root, entry.args)


def entry_measures(study, entry) -> set[str]:
    return task_info(study, entry).measures(study.resolve)


# ---------------------------------------------------------------- what defines a measure

_CONST = re.compile(r"^_?[A-Z][A-Z0-9_]*$")


def _project_modules(tree: ast.Module) -> set[str]:
    """Project modules (tasks/solvers/scorers) a module imports, at any nesting level."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] in _PKGS:
            out.add(node.module)
            # `from scorers import rules`: a submodule imported by name
            out |= {f"{node.module}.{a.name}" for a in node.names if _module_path(f"{node.module}.{a.name}") is not None}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] in _PKGS}
    return out


def _module_path(module: str) -> Path | None:
    from leaklab.study import REPO_ROOT

    base = REPO_ROOT / module.replace(".", "/")
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def _constants(tree: ast.Module) -> list[str]:
    """The structure (no line numbers, no formatting) of every module-level constant: prompt
    templates, rule versions, word lists, parsing patterns."""
    out = []
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and _CONST.match(t.id) for t in targets):
            out.append(ast.dump(value, include_attributes=False))
    return out


def measure_definition(study, entry) -> dict:
    """What defines the measures of an eval entry, for the lock: the values of the module-level
    constants (prompt templates, scoring-rule versions, word pairs, parsing patterns: what each
    task hashes into the `measure_version` it stamps) of the task's module and of every project
    module it imports, transitively, pooled and sorted. Changing a template, a rule version or a
    pattern changes it; moving, renaming, reformatting or re-documenting code does not. A changed
    scoring function whose rule version was not bumped is not seen (the project rule: bump it)."""
    from leaklab.study import REPO_ROOT

    file = entry.task.rsplit("@", 1)[0] if "@" in entry.task else None
    if not file or not file.endswith(".py"):
        return {"task": entry.task, "modules": [], "constants": []}
    start = REPO_ROOT / file
    if not start.is_file() and (study.folder / file).is_file():
        start = study.folder / file
    tree = _module(start)
    if tree is None:
        from prereg.errors import PreregError

        raise PreregError(f"{study.study_yaml}: eval task {entry.task!r}: cannot read {start}")
    seen: dict[str, ast.Module] = {file: tree}
    todo = list(_project_modules(tree))
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        path = _module_path(mod)
        mtree = _module(path) if path is not None else None
        if mtree is None:
            continue
        seen[mod] = mtree
        todo += [m for m in _project_modules(mtree) if m not in seen]
    constants = sorted(c for t in seen.values() for c in _constants(t))
    return {"task": entry.task.rsplit("@", 1)[-1], "modules": sorted(seen), "constants": constants}
