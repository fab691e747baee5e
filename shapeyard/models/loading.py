"""Where weights come from, and loading them without touching the network.

An `embedded` model is built locally (the tiny model); an `hfRepo` model must already be in the local HF cache;
a `localDir` model is read from that directory. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from shapeyard.shapes.types import WeightsSource

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class WeightsUnavailable(RuntimeError):
    pass


def weights_path(weights: WeightsSource) -> str:
    """A local directory holding an HF checkpoint (config, safetensors, tokenizer)."""
    if weights.embedded is not None:
        from shapeyard.models import tiny

        if weights.embedded != tiny.NAME:
            raise WeightsUnavailable(f"unknown embedded model {weights.embedded!r}")
        return str(tiny.ensure_tiny_model())
    if weights.local_dir is not None:
        path = Path(weights.local_dir).expanduser()
        if not (path / "config.json").exists():
            raise WeightsUnavailable(f"{path} holds no HF checkpoint (config.json is missing)")
        return str(path)
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(weights.hf_repo, local_files_only=True)
    except Exception as exc:
        raise WeightsUnavailable(
            f"the weights of {weights.hf_repo} are not in the local HF cache and shapeyard never downloads; "
            f"fetch them once (huggingface-cli download {weights.hf_repo}) or point the model at a localDir"
        ) from exc


def default_dtype(device: str) -> torch.dtype:
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def load_model(path: str, device: str) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=default_dtype(device), local_files_only=True)
    return model.to(device)


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(path, local_files_only=True)
