"""Where a model's weights are on this machine, without loading them: a local HF directory, or the local HF cache.

Nothing is ever downloaded. Embedded models are built by the worker that loads them (`shapeyard.models`).
"""

from __future__ import annotations

from pathlib import Path

from shapeyard.wire.shapes import WeightsSource


class WeightsUnavailable(RuntimeError):
    pass


def local_checkpoint(weights: WeightsSource) -> str:
    """The local directory holding a `localDir` or `hfRepo` model's HF checkpoint (config, safetensors, tokenizer)."""
    if weights.local_dir is not None:
        path = Path(weights.local_dir).expanduser()
        if not (path / "config.json").exists():
            raise WeightsUnavailable(f"{path} holds no HF checkpoint (config.json is missing)")
        return str(path)
    if weights.hf_repo is None:
        raise ValueError("an embedded model has no checkpoint until its worker builds it")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(weights.hf_repo, local_files_only=True)
    except Exception as exc:
        raise WeightsUnavailable(
            f"the weights of {weights.hf_repo} are not in the local HF cache and shapeyard never downloads; "
            f"fetch them once (huggingface-cli download {weights.hf_repo}) or point the model at a localDir"
        ) from exc
