"""`leaklab register-log`: bring a log made by plain `inspect eval` into a study's custody.

The card's workflow evaluates a checkpoint by hand:

    inspect eval tasks/stance.py@letter_logprob -T items=data/attitude/target.jsonl -T item_set=target \
        --model leaklab/smollm2-135m-instruct -M adapter=runs/demo/train/smollm2/cautious/seed0/adapter

`register_log` checks that log before analysis may read it: complete (status success); its task,
item set, task args and condition are an entry of the study's eval plan; its model is one of the
study's models; its adapter (`-M adapter=...`) is a finished cell of the study (or none: the base
model) whose cell record matches the study and the lock; any leaklab metadata it already carries
agrees. It then writes a copy under `runs/<study>/logs/<checkpoint>/registered/` stamped with the
same `leaklab` metadata `leaklab eval` writes, and ledgers that copy (`prereg.ledger`).
"""

from __future__ import annotations

from pathlib import Path

from leaklab.study import REPO_ROOT, LoadedStudy, looks_like_path
from leaklab.yamlio import ConfigError


def _locate(value: str) -> Path | None:
    """A path from a log's args: absolute, else relative to the working directory or the repo."""
    p = Path(value).expanduser()
    for cand in ([p] if p.is_absolute() else [Path.cwd() / p, REPO_ROOT / p]):
        if cand.exists():
            return cand.resolve()
    return None


def _adapter_arg(log) -> str | None:
    args = log.eval.model_args or {}
    if args.get("adapter"):
        return str(args["adapter"])
    model = str(log.eval.model)
    if model.startswith("vllm/") and ":" in model.split("/", 1)[1]:
        return model.split(":", 1)[1]
    return None


def _model_of(study: LoadedStudy, log):
    from leaklab.models import canonical_name

    provider, _, name = str(log.eval.model).partition("/")
    name = name.split(":", 1)[0]
    for m in study.spec.models:
        if name in (m.name, canonical_name(m.name)):
            return m
        if provider == "vllm":
            from leaklab.models import ModelNotFound, prepare

            try:
                if Path(name).resolve() == Path(prepare(m.name)).resolve():
                    return m
            except ModelNotFound:
                continue
    raise ConfigError(f"model {log.eval.model!r} is not one of the study's models {[m.name for m in study.spec.models]}")


def _cell_of_adapter(study: LoadedStudy, adapter: Path) -> tuple[str, str, int, str]:
    """(model label, arm, seed, checkpoint) from an adapter path under runs/<study>/train/."""
    train = (study.runs_dir / "train").resolve()
    try:
        parts = adapter.resolve().relative_to(train).parts
    except ValueError:
        raise ConfigError(f"adapter {adapter} is not a cell of study {study.name!r} (not under {train})") from None
    if len(parts) >= 4 and parts[2].startswith("seed") and parts[2][4:].isdigit():
        label, arm, seed = parts[0], parts[1], int(parts[2][4:])
        rest = parts[3:]
        if rest == ("adapter",):
            return label, arm, seed, "final"
        if len(rest) in (2, 3) and rest[0] == "checkpoints" and rest[1].startswith("step-") and rest[2:] in ((), ("adapter",)):
            return label, arm, seed, rest[1]
    raise ConfigError(f"adapter {adapter}: expected runs/<study>/train/<model>/<arm>/seed<k>/adapter "
                      "(or .../checkpoints/step-N)")


def _same_value(study: LoadedStudy, want, got) -> bool:
    if isinstance(want, str) and looks_like_path(want):
        a = study.resolve(want)
        b = _locate(got) if isinstance(got, str) else None
        return a is not None and b is not None and Path(a).resolve() == b
    return want == got


def _cond_equal(study: LoadedStudy, want: dict | None, got) -> bool:
    if not want and not got:
        return True
    if not isinstance(want, dict) or not isinstance(got, dict):
        return False
    from leaklab.study import Conditioning

    try:
        g = Conditioning(**got).model_dump()
    except Exception:  # noqa: BLE001 - a malformed conditioning arg is simply not the plan's
        return False
    keys = set(want) | set(g)
    return all(_same_value(study, want.get(k), g.get(k)) if k == "rephrasings" and want.get(k)
               else want.get(k) == g.get(k) for k in keys)


def _plan_entry(study: LoadedStudy, log, ckpt):
    """The eval-plan entry (and condition) this log is an instance of, or a ConfigError saying why none is."""
    from leaklab.evaluate import eval_conditions_for

    task = str(log.eval.task).split("/")[-1]
    args = dict(log.eval.task_args or {})
    item_set = args.get("item_set")
    cond_name = args.get("condition", "default")
    why = []
    for e in study.spec.eval:
        if e.measure_task != task or e.item_set != item_set:
            continue
        bad = [k for k, v in e.args.items() if not _same_value(study, v, args.get(k))]
        if bad:
            why.append(f"{e.task} on {e.item_set}: task args {bad} differ from the plan's {[e.args[k] for k in bad]}")
            continue
        conds = dict(eval_conditions_for(study, ckpt, e.conditions))
        if cond_name not in conds:
            why.append(f"{e.task} on {e.item_set}: condition {cond_name!r} is not one of {sorted(conds)}")
            continue
        if not _cond_equal(study, conds[cond_name], args.get("conditioning")):
            why.append(f"{e.task} on {e.item_set}: the conditioning of condition {cond_name!r} differs from the plan's")
            continue
        return e
    detail = "; ".join(why) if why else "no entry with this task and item set"
    raise ConfigError(f"task {task!r} on item set {item_set!r} is not an entry of the study's eval plan ({detail})")


def register_log(study: LoadedStudy, log_file: str | Path, exploratory: bool = False) -> tuple[dict, Path]:
    """Check a hand-made Inspect log against the study, its cells and its lock; copy it under the
    study's logs with leaklab metadata and ledger it. Returns (ledger entry, copy path)."""
    from inspect_ai.log import read_eval_log, write_eval_log

    import prereg
    from leaklab.evaluate import Checkpoint, eval_metadata
    from prereg.ledger import read_ledger, ledger_path, record_log
    from prereg.canonical import file_sha256
    from training.matrix import cell_problems

    log_file = Path(log_file)
    where = str(log_file)
    guard = prereg.guard(study.folder, exploratory=exploratory)
    try:
        log = read_eval_log(str(log_file))
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such log file") from None
    except Exception as exc:  # noqa: BLE001 - not an Inspect log
        raise ConfigError(f"{where}: cannot read Inspect log: {type(exc).__name__}: {exc}") from None
    try:
        if log.status != "success":
            raise ConfigError(f"only a complete log can be registered; this one has status {log.status!r}")
        model = _model_of(study, log)
        adapter_arg = _adapter_arg(log)
        if adapter_arg is None:
            ckpt = Checkpoint(model, "base", None, "final", None)
        else:
            adapter = _locate(adapter_arg)
            if adapter is None:
                raise ConfigError(f"its adapter {adapter_arg!r} does not exist (relative paths are read from the "
                                  "working directory or the repository root)")
            label, arm, seed, name = _cell_of_adapter(study, adapter)
            if label != model.run_label:
                raise ConfigError(f"adapter {adapter} belongs to model label {label!r}, the log's model is {model.run_label!r}")
            from leaklab.runstore import train_dir

            cell = train_dir(study.runs_dir, label, arm, seed)
            from prereg.ledger import expected_adapter

            ckpt = Checkpoint(model, arm, seed, name, expected_adapter(study.runs_dir, label, arm, seed, name))
            if not (cell / "DONE").exists():
                raise ConfigError(f"cell {label}/{arm}/seed{seed} is not finished (no DONE)")
            probs = cell_problems(study, model, arm, seed, guard, [] if name == "final" else [name])
            if probs:
                raise ConfigError("its adapter's cell does not match the study and its lock: " + "; ".join(probs))
        _plan_entry(study, log, ckpt)
        meta = eval_metadata(study, ckpt, guard.digest, guard.exploratory)
        had = (log.eval.metadata or {}).get("leaklab")
        if isinstance(had, dict):
            diff = [k for k in ("study", "model_label", "arm", "seed", "checkpoint", "lock_digest")
                    if k in had and had[k] != meta["leaklab"][k]]
            if diff:
                raise ConfigError(f"its leaklab metadata {[(k, had[k]) for k in diff]} disagrees with what its model, "
                                  f"adapter and the lock say {[(k, meta['leaklab'][k]) for k in diff]}")
    except ConfigError as exc:
        raise ConfigError(f"{where}: refusing to register: {exc}") from None
    if log_file.resolve().is_relative_to((study.runs_dir / "logs").resolve()):
        # already in the study's logs (e.g. written by a leaklab eval before the ledger existed): ledger it in place
        if had != meta["leaklab"]:
            raise ConfigError(f"{where}: refusing to register a log inside {study.runs_dir / 'logs'} whose leaklab metadata "
                              "is not exactly what eval writes; move it out of logs/ and register it from there")
        return record_log(study, log_file, via="register-log", source=str(log_file.resolve())), log_file
    log.eval.metadata = {**(log.eval.metadata or {}), **meta}
    dest = ckpt.log_dir(study.runs_dir) / "registered" / log_file.name
    if dest.exists():
        rel = dest.resolve().relative_to(study.runs_dir.resolve()).as_posix()
        for e in reversed(read_ledger(ledger_path(study.runs_dir))):
            if e["log"] == rel and e["log_sha256"] == file_sha256(dest):
                return e, dest
        raise ConfigError(f"{dest}: exists and is not ledgered; remove it or rename the log before registering")
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_eval_log(log, str(dest))
    return record_log(study, dest, via="register-log", source=str(log_file.resolve())), dest
