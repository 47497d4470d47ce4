"""`leaklab` command line. Each stage package contributes its commands through `register(app)`
in its own `cli.py`, so a stage owns its CLI and heavy imports stay inside command bodies."""

from __future__ import annotations

import errno
import importlib
import json
import sys

import typer

from leaklab.yamlio import ConfigError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Preregistration-first leakage studies.")
models_app = typer.Typer(no_args_is_help=True, help="Model registry: list and prepare models (offline).")
app.add_typer(models_app, name="models")

# stage packages that add commands; a package that is absent from this checkout is skipped
STAGE_CLIS = [
    "prereg.cli",
    "training.cli",
    "analysis.cli",
    "analysis.interp_cli",
    "reports.cli",
    "leaklab.pipeline",
]


@models_app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """List registry aliases and whether they are prepared."""
    from leaklab.models import list_models

    rows = list_models()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "prepared", "description", "path")
    for r in rows:
        table.add_row(r["name"], "yes" if r["prepared"] else "no", r["description"], r["path"])
    Console().print(table)


@models_app.command("prepare")
def models_prepare(name: str):
    """Build (once) the local folder for NAME and print its path."""
    from leaklab.models import ModelNotFound, prepare

    try:
        typer.echo(str(prepare(name)))
    except ModelNotFound as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)


_MOUNTED: list[str] = []


def _mount() -> None:
    if _MOUNTED:  # idempotent: main() may run more than once in a process (tests)
        return
    _MOUNTED.append("yes")
    for mod_name in STAGE_CLIS:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name == mod_name or mod_name.startswith(str(exc.name) + "."):
                continue
            raise
        mod.register(app)


# environment faults that are the user's to fix, not bugs: one line, exit 2
_ENV_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EROFS: "read-only file system",
               errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
               errno.EDQUOT: "disk quota exceeded", errno.EISDIR: "is a directory, expected a file",
               errno.ENOTDIR: "not a directory", errno.ENOENT: "no such file or directory",
               errno.EMFILE: "too many open files", errno.ENAMETOOLONG: "file name too long"}


def _env_error(exc: BaseException) -> str | None:
    """One line for an environment fault anywhere in the cause chain (None: not one)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _ENV_ERRNOS:
            where = exc.filename or ""
            return f"{where}{': ' if where else ''}{_ENV_ERRNOS[exc.errno]} ({exc.strerror or exc}); nothing already written was lost"
        if isinstance(exc, UnicodeDecodeError):
            return (f"a file is not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}): "
                    f"{exc.reason}; save it as UTF-8")
        exc = exc.__cause__ or exc.__context__
    return None


def main() -> None:
    from leaklab.models import ModelNotFound

    _mount()
    try:
        app()
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except ModelNotFound as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - an OSError/decode error, or one wrapped by a library (Inspect, torch)
        line = _env_error(exc)
        if line is None:
            raise
        typer.echo(f"error: {line}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
