"""YAML loading that remembers where every key came from, so errors can name file and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A user-facing error about an input file: always names the file and, when known, line and key."""


def read_text(path: str | Path, what: str = "file") -> str:
    """A file's text as UTF-8; every failure is a ConfigError naming the file (and, for bytes
    that are not UTF-8, the line and byte offset)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a {what}") from None
    except NotADirectoryError:
        raise ConfigError(f"{path}: a parent of this path is a file, not a directory") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied reading this {what}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read this {what}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                          f"save the {what} as UTF-8") from None


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: the SafeLoader reports it below
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"duplicate key {key!r} (first defined on line {first}); a repeated key would silently replace the first",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line + 1
    mapping = yaml.SafeLoader.construct_mapping(loader, node, deep=deep)
    lines = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        lines[key] = key_node.start_mark.line + 1
    return _LinedDict(mapping, lines)


class _LinedDict(dict):
    """A dict that also knows the source line of each of its keys."""

    def __init__(self, data: dict, lines: dict):
        super().__init__(data)
        self.key_lines = lines


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: str | Path) -> Any:
    """Parse a YAML file; syntax errors become ConfigError naming file and line."""
    path = Path(path)
    text = read_text(path, "YAML file")
    try:
        return yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        if problem and str(problem).startswith("duplicate key"):
            raise ConfigError(f"{path}{where}: {problem}") from None
        raise ConfigError(f"{path}{where}: invalid YAML: {' '.join(str(exc).split())}") from None


def line_of(data: Any, loc: tuple) -> int | None:
    """Best line number for a pydantic error location inside data loaded by load_yaml."""
    line = None
    node = data
    for part in loc:
        if isinstance(node, _LinedDict) and part in node.key_lines:
            line = node.key_lines[part]
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            break
    return line


def validate_yaml(model: type[BaseModel], path: str | Path, data: Any | None = None, **context: Any):
    """Load `path` and validate it against `model`; errors name file, line and dotted key."""
    path = Path(path)
    if data is None:
        data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data, context={"path": path, **context})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, path, data)) from None


def format_validation_error(exc: ValidationError, path: Path, data: Any) -> str:
    msgs = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = ".".join(str(p) for p in loc) or "<top>"
        line = line_of(data, loc)
        where = f"{path}:{line}" if line else f"{path}"
        if err["type"] == "extra_forbidden":
            msgs.append(f"{where}: unknown key '{key}'")
        else:
            msgs.append(f"{where}: key '{key}': {err['msg']}")
    return "\n".join(msgs)
