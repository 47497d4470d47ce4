"""Tests for leaklab/models.py: registry, offline preparation and loading."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from leaklab import models


def test_prepare_is_idempotent(tiny_model_dir):
    cfg = tiny_model_dir / "config.json"
    before = (cfg.stat().st_mtime_ns, sorted(p.name for p in tiny_model_dir.iterdir()))
    again = models.prepare("tiny-random")
    assert again == tiny_model_dir == models.prepared_dir("tiny-random")
    assert (cfg.stat().st_mtime_ns, sorted(p.name for p in tiny_model_dir.iterdir())) == before


def test_unknown_name_error_lists_aliases():
    with pytest.raises(models.ModelNotFound) as err:
        models.prepare("no-such-model")
    msg = str(err.value)
    assert "no-such-model" in msg and "tiny-random" in msg and "smollm2-135m-instruct" in msg


def test_hf_id_not_in_cache_never_downloads(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(models.ModelNotFound, match="not in the local Hugging Face cache"):
        models.prepare("someone/definitely-not-cached-model-xyz")


def test_folder_without_config_is_rejected(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(models.ModelNotFound, match="config.json"):
        models.prepare(str(tmp_path))


def test_local_folder_resolves(tiny_model_dir):
    assert models.prepare(str(tiny_model_dir)) == tiny_model_dir.resolve()
    assert models.canonical_name(str(tiny_model_dir)) == str(tiny_model_dir.resolve())
    assert models.canonical_name("tiny-random") == "tiny-random"
    assert models.canonical_name("org/model") == "org/model"


def test_offline_env_is_forced():
    """In a fresh interpreter without the offline variables (conftest sets them for this process):
    the CLI does not pull in huggingface_hub before leaklab.models, and importing leaklab.models
    turns the hub and transformers offline (huggingface_hub reads the variable once, at import)."""
    import subprocess
    import sys

    code = (
        "import sys, leaklab.cli\n"
        "assert 'huggingface_hub' not in sys.modules, 'huggingface_hub imported before leaklab.models'\n"
        "import leaklab.models\n"
        "from huggingface_hub import constants\n"
        "from transformers.utils import hub\n"
        "assert constants.HF_HUB_OFFLINE is True, constants.HF_HUB_OFFLINE\n"
        "assert hub.is_offline_mode()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr[-2000:]


def test_tiny_random_loads_and_runs(tiny_model_dir):
    model = models.load_model("tiny-random", device="cpu")
    tok = models.load_tokenizer("tiny-random")
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == len(tok)
    assert tok.pad_token_id is not None
    ids = tok("hello world", return_tensors="pt")
    with torch.inference_mode():
        logits = model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], len(tok))
    assert torch.isfinite(logits).all()
    # the weights are the seeded random init, so two loads are identical
    again = models.load_model("tiny-random", device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_default_dtype_cpu():
    assert models.default_dtype("cpu") == torch.float32


def test_list_models():
    rows = {r["name"]: r for r in models.list_models()}
    assert set(rows) == set(models.ALIASES)
    assert rows["tiny-random"]["prepared"] is True


def test_embedded_model_is_a_plain_float_checkpoint():
    """The GGUF is dequantised once; the saved folder must not claim to be quantised, or vLLM
    and transformers would try to load it as a GGUF-quantised model."""
    import json

    folder = models.prepare("smollm2-135m-instruct")
    cfg = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert cfg["model_type"] == "llama" and cfg.get("dtype", cfg.get("torch_dtype")) == "float32"
    assert any(folder.glob("*.safetensors"))
