"""Loading a model and its tokenizer, without touching the network.

An `embedded` model is built locally (the tiny model); an `hfRepo` model must already be in the local HF cache;
a `localDir` model is read from that directory (`shapeyard.store.weights`). Nothing is ever downloaded.
"""

from __future__ import annotations

import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from shapeyard.store.weights import WeightsUnavailable, local_checkpoint
from shapeyard.wire.shapes import WeightsSource

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def weights_path(weights: WeightsSource) -> str:
    """A local directory holding an HF checkpoint (config, safetensors, tokenizer); an embedded model is built."""
    if weights.embedded is None:
        return local_checkpoint(weights)
    from shapeyard.models import tiny

    if weights.embedded != tiny.NAME:
        raise WeightsUnavailable(f"unknown embedded model {weights.embedded!r}")
    return str(tiny.ensure_tiny_model())


def default_dtype(device: str) -> torch.dtype:
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def load_model(path: str, device: str, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """The model on `device`, in `dtype` (default: the device's, bf16 on GPUs and fp32 on CPU)."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or default_dtype(device), local_files_only=True)
    return model.to(device)


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(path, local_files_only=True)
