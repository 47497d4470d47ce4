"""Shared fixtures: an isolated run root per test, and the prepared tiny-random model."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("INSPECT_LOG_LEVEL", "warning")


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
