"""LoRA supervised fine-tuning on transformers + peft, with resumable checkpoints.

Why our own loop rather than `transformers.Trainer`: exact resumption (optimizer, scheduler,
RNG and data position restored, so a killed-and-resumed run ends with the same weights as an
uninterrupted one), token-weighted loss across gradient accumulation (Trainer averages per
micro-batch, over-weighting short examples), and adapters written with the canonical base
model name the eval provider checks. benchmarks/train_throughput.py compares its speed with
a plain Trainer loop.

Randomness: `seed` seeds torch before LoRA init (init and dropout), and a separate
random.Random(seed) fixes the data order; both are recorded in the manifest.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from leaklab.io import read_jsonl
from leaklab.runstore import append_jsonl, atomic_write_json, atomic_write_text
from leaklab.study import Conditioning, TrainingConfig
from solvers.conditioning import condition_messages
from training.corpora import corpus_messages
from training.masks import IGNORE_INDEX, Encoded, encode


class SimulatedKill(RuntimeError):
    """Raised by the `stop_after` test hook to emulate a process killed mid-training."""


@dataclass
class Example:
    id: str
    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class PreparedData:
    examples: list[Example]
    dropped: list[str] = field(default_factory=list)  # ids with no supervised token left
    truncated: int = 0


def prepare_examples(
    records: list[dict],
    tokenizer,
    cfg: TrainingConfig,
    conditioning: Conditioning | None = None,
    rephrasings_path: Path | None = None,
) -> PreparedData:
    """Condition (same function as eval), chat-template, tokenise and mask every record."""
    out = PreparedData([])
    for rec in records:
        msgs = condition_messages(corpus_messages(rec, where=str(rec.get("id"))), conditioning, str(rec["id"]), rephrasings_path)
        enc: Encoded = encode(
            tokenizer, msgs, cfg.loss_mask, max_length=cfg.max_length, marker=cfg.marker, tail_k=cfg.tail_k
        )
        out.truncated += int(enc.truncated)
        if enc.n_labels == 0:
            out.dropped.append(str(rec["id"]))
            continue
        out.examples.append(Example(str(rec["id"]), enc.input_ids, enc.labels))
    return out


def length_grouped_batches(
    lengths: list[int], batch_size: int, seed: int, group: bool = True, mega_factor: int = 50
) -> list[list[int]]:
    """One epoch of batches. Grouped: shuffle, cut into mega-batches of `mega_factor` batches,
    sort each by length (so a batch holds similar lengths and padding is small), then shuffle
    the batch order so training does not see a length curriculum. Ungrouped: plain shuffle."""
    rng = random.Random(seed)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    if not group:
        return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    mega = batch_size * mega_factor
    batches = []
    for m in range(0, len(idx), mega):
        chunk = sorted(idx[m : m + mega], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def padding_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    real = sum(lengths[i] for b in batches for i in b)
    return 1.0 - real / padded if padded else 0.0


def batch_plan(lengths: list[int], cfg: TrainingConfig, seed: int) -> tuple[list[list[int]], int]:
    """Micro-batches for the whole run and the number of optimizer steps."""
    per_epoch = math.ceil(len(lengths) / cfg.batch_size)
    steps = max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))
    if cfg.max_steps is not None:
        steps = min(steps, cfg.max_steps) if cfg.max_steps > 0 else steps
    need = steps * cfg.grad_accum
    plan: list[list[int]] = []
    epoch = 0
    while len(plan) < need:
        plan += length_grouped_batches(lengths, cfg.batch_size, seed * 1000 + epoch, cfg.group_by_length)
        epoch += 1
    return plan[:need], steps


def collate(examples: list[Example], pad_id: int):
    import torch

    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    for r, e in enumerate(examples):
        n = len(e)
        ids[r, :n] = torch.tensor(e.input_ids)
        labels[r, :n] = torch.tensor(e.labels)
        attn[r, :n] = 1
    return ids, attn, labels


def resolve_dtype(cfg: TrainingConfig, device: str):
    import torch

    if cfg.dtype == "float32":
        return torch.float32
    if cfg.dtype == "bfloat16":
        return torch.bfloat16
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _set_adapter_base_name(folder: Path, base_name: str) -> None:
    cfg_file = Path(folder) / "adapter_config.json"
    data = json.loads(cfg_file.read_text())
    data["base_model_name_or_path"] = base_name
    cfg_file.write_text(json.dumps(data, indent=2, sort_keys=True))


def save_adapter(model, folder: Path, base_name: str) -> None:
    """Write a PEFT adapter folder atomically (temp folder + rename) with the canonical base name."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    _set_adapter_base_name(tmp, base_name)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def complete_checkpoints(ckpt_root: Path) -> list[int]:
    """Steps of checkpoints that finished writing (state.json is written last)."""
    if not ckpt_root.exists():
        return []
    steps = []
    for d in ckpt_root.iterdir():
        num = d.name.split("-", 1)[1] if d.name.startswith("step-") else ""
        if d.is_dir() and num.isdigit() and (d / "state.json").exists():
            steps.append(int(num))
    return sorted(steps)


RESUME_KEEP = 2  # checkpoints that keep their optimizer state: the newest and the one before it


def _plain(obj, where: str = "state"):
    """Check that a checkpoint holds only tensors and plain types (no objects to unpickle)."""
    import torch

    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is not a plain type")
            _plain(v, f"{where}.{k}")
        return obj
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _plain(v, f"{where}[{i}]")
        return obj
    raise TypeError(f"{where}: {type(obj).__name__} is not a tensor or a plain type")


def load_resume_state(ckpt_root: Path, device: str):
    """(step, adapter tensors, trainer state) of the newest checkpoint that loads, or None.

    Trainer state is read with `torch.load(weights_only=True)`: tensors and plain types only, so
    a pickle planted in a run folder cannot run code. A torn or unreadable checkpoint (a kill
    during a disk fault, a truncated file, a planted pickle) is skipped with a warning and the one
    before it is used; nothing is applied to the model until both files of a checkpoint loaded."""
    import warnings

    import torch
    from safetensors.torch import load_file

    steps = [s for s in complete_checkpoints(ckpt_root) if (ckpt_root / f"step-{s}" / "trainer_state.pt").exists()]
    for step in reversed(steps):
        ck = ckpt_root / f"step-{step}"
        try:
            adapter_state = load_file(str(ck / "adapter_model.safetensors"), device=device)
            state = torch.load(ck / "trainer_state.pt", map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not {"optimizer", "scheduler", "torch_rng"} <= set(state):
                raise ValueError("trainer_state.pt lacks optimizer/scheduler/torch_rng")
            _plain(state)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint: fall back to the previous one
            warnings.warn(f"{ck}: checkpoint unreadable ({type(exc).__name__}: {str(exc)[:200]}); "
                          "falling back to the previous checkpoint", RuntimeWarning, stacklevel=2)
            continue
        return step, adapter_state, state
    return None


@dataclass
class TrainResult:
    steps: int
    train_tokens: int  # non-pad tokens forwarded
    padded_tokens: int  # tokens forwarded including padding
    label_tokens: int
    wall_s: float  # training loop only (no model load)
    tokens_per_s: float
    padding_fraction: float
    checkpoints: list[int]
    resumed_from: int | None
    final_loss: float | None
    n_examples: int
    dropped: list[str]
    truncated: int
    device: str
    dtype: str
    trainable_params: int


def train_lora(
    model_name: str,
    records: list[dict],
    cfg: TrainingConfig,
    out_dir: Path,
    seed: int,
    conditioning: Conditioning | None = None,
    rephrasings_path: Path | None = None,
    device: str | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train one LoRA adapter into out_dir/{adapter/, checkpoints/step-N/, loss.jsonl}.

    Resumes from the newest complete checkpoint in out_dir/checkpoints; without one, it
    starts cleanly (a stale loss.jsonl is discarded). `stop_after` (tests) raises SimulatedKill
    after that many optimizer steps of this call.
    """
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM, get_scheduler

    from leaklab.models import canonical_name, default_device, load_tokenizer, prepare

    out_dir = Path(out_dir)
    device = device or default_device()
    dtype = resolve_dtype(cfg, device)
    base_name = canonical_name(model_name)
    tokenizer = load_tokenizer(model_name)
    data = prepare_examples(records, tokenizer, cfg, conditioning, rephrasings_path)
    if not data.examples:
        from leaklab.yamlio import ConfigError

        raise ConfigError("training.loss_mask/marker/max_length: no training example has a supervised token left "
                          f"({len(data.dropped)} of {len(records)} dropped)")
    lengths = [len(e) for e in data.examples]
    plan, total_steps = batch_plan(lengths, cfg, seed)

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(prepare(model_name), dtype=dtype)
    model.to(device)
    lcfg = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        use_rslora=cfg.lora.use_rslora,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)  # LoRA init depends on the seed only, not on model loading
    model = get_peft_model(model, lcfg)
    model.peft_config["default"].base_model_name_or_path = base_name
    if getattr(model.config, "use_cache", None) is not None:
        model.config.use_cache = False
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=0.0)
    warmup = int(round(cfg.warmup_ratio * total_steps))
    sched = get_scheduler(cfg.schedule, opt, num_warmup_steps=warmup, num_training_steps=total_steps)

    ckpt_root = out_dir / "checkpoints"
    loss_file = out_dir / "loss.jsonl"
    resumed = load_resume_state(ckpt_root, device)
    start = 0
    resumed_from = None
    if resumed is not None:
        start, adapter_state, state = resumed
        set_peft_model_state_dict(model, adapter_state)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        resumed_from = start
        kept = [r for r in read_jsonl(loss_file, "loss log", torn_tail_ok=True) if r["step"] <= start] if loss_file.exists() else []
        # atomic: a kill during the rewrite leaves the old file, never a truncated one
        atomic_write_text(loss_file, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    else:
        loss_file.unlink(missing_ok=True)
        shutil.rmtree(ckpt_root, ignore_errors=True)

    pad_id = tokenizer.pad_token_id
    use_autocast = device.startswith("cuda") and dtype == torch.bfloat16
    model.train()
    train_tokens = padded_tokens = label_tokens = 0
    final_loss = None
    t0 = time.time()
    for step in range(start, total_steps):
        micro = plan[step * cfg.grad_accum : (step + 1) * cfg.grad_accum]
        batches = [collate([data.examples[i] for i in mb], pad_id) for mb in micro]
        n_lab = sum(int((lab[:, 1:] != IGNORE_INDEX).sum()) for _, _, lab in batches)
        loss_sum = 0.0
        for ids, attn, lab in batches:
            ids, attn, lab = ids.to(device), attn.to(device), lab.to(device)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_autocast):
                loss = token_loss_sum(model, ids, attn, lab)
            (loss / max(n_lab, 1)).backward()
            loss_sum += float(loss.detach())
            train_tokens += int(attn.sum())
            padded_tokens += attn.numel()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, 1.0))
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        label_tokens += n_lab
        final_loss = loss_sum / max(n_lab, 1)
        append_jsonl(
            loss_file,
            {"step": step + 1, "loss": final_loss, "lr": lr, "grad_norm": grad_norm, "label_tokens": n_lab, "elapsed_s": round(time.time() - t0, 3)},
        )
        if progress:
            progress(step + 1, total_steps, final_loss)
        done_steps = step + 1
        if cfg.checkpoint_every and done_steps % cfg.checkpoint_every == 0 and done_steps < total_steps:
            _save_checkpoint(model, opt, sched, ckpt_root, done_steps, base_name)
        if stop_after is not None and done_steps - start >= stop_after and done_steps < total_steps:
            raise SimulatedKill(f"stopped after step {done_steps} (test hook)")
    wall = time.time() - t0

    save_adapter(model, out_dir / "adapter", base_name)
    lengths_padded = padding_fraction(plan, lengths)
    return TrainResult(
        steps=total_steps,
        train_tokens=train_tokens,
        padded_tokens=padded_tokens,
        label_tokens=label_tokens,
        wall_s=round(wall, 3),
        tokens_per_s=round(train_tokens / wall, 2) if wall > 0 else float("nan"),
        padding_fraction=round(lengths_padded, 4),
        checkpoints=complete_checkpoints(ckpt_root),
        resumed_from=resumed_from,
        final_loss=final_loss,
        n_examples=len(data.examples),
        dropped=data.dropped,
        truncated=data.truncated,
        device=device,
        dtype=str(dtype).replace("torch.", ""),
        trainable_params=sum(p.numel() for p in trainable),
    )


def token_loss_sum(model, ids, attn, labels):
    """Summed next-token cross-entropy over supervised positions.

    Projects onto the vocabulary only at positions whose next token is supervised (a 2D
    boolean `logits_to_keep`): with assistant-only loss about half of the lm_head FLOPs and
    the (B, T, vocab) logits tensor are skipped. Models without that argument get full logits.
    """
    import torch

    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    targets = labels[:, 1:][keep[:, :-1]]
    try:
        logits = model(input_ids=ids, attention_mask=attn, logits_to_keep=keep).logits
        logits = logits.reshape(-1, logits.size(-1))
        if logits.size(0) != targets.numel():
            raise TypeError("logits_to_keep mask not honoured")
    except (TypeError, IndexError):  # IndexError: transformers < 5.20 (the vLLM venv) slices with it
        logits = model(input_ids=ids, attention_mask=attn).logits[keep]
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")


def _save_checkpoint(model, opt, sched, ckpt_root: Path, step: int, base_name: str) -> None:
    """checkpoints/step-N/: a loadable PEFT adapter (for learning-curve evals) + resume state.

    Written to a temp folder and renamed; state.json last. Older checkpoints keep their
    adapter; the optimizer state is kept for the newest RESUME_KEEP (so a torn newest checkpoint
    falls back to the one before it). Only tensors and plain types are saved."""
    import torch

    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step}"
    tmp = ckpt_root / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    _set_adapter_base_name(tmp, base_name)
    state = {
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "step": step,
    }
    torch.save(_plain(state), tmp / "trainer_state.pt")
    atomic_write_json(tmp / "state.json", {"step": step})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in complete_checkpoints(ckpt_root)[:-RESUME_KEEP]:
        (ckpt_root / f"step-{old}" / "trainer_state.pt").unlink(missing_ok=True)
