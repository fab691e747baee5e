"""A trainer's snapshot served on a transformers model: read, checked against the base model, then swapped in.

A snapshot is a full HF directory (its weights replace the base's, in place) or a PEFT LoRA adapter (added on the
base; an adapter replaces the previous one rather than stacking on it). Everything is read and validated before
anything changes, so a snapshot that cannot be served leaves the previous weights in place. Not thread-safe: the
sampler that owns it serialises loading with decoding.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, load_peft_weights, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from torch import Tensor
from transformers import AutoConfig, PreTrainedModel

from shapeyard.models.sampling import SnapshotError

# A full snapshot must agree with the base model on each of these; keys and shapes are checked separately.
ARCHITECTURE_FIELDS = (
    "model_type",
    "architectures",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "tie_word_embeddings",
)


class SnapshotSlot:
    """The base model of `base_dir` with at most one snapshot on it (`identity`; None while serving the base)."""

    def __init__(self, base: PreTrainedModel, base_dir: Path) -> None:
        self.base, self.base_dir = base, base_dir
        self.identity: str | None = None
        self.peft: PeftModel | None = None
        self.adapter: str | None = None
        # Tensors the weights of a full snapshot are copied into, by name; tied names share one tensor. peft leaves
        # these objects in place when it wraps their modules, so they stay valid whatever is loaded.
        self.weights: dict[str, Tensor] = dict(base.state_dict(keep_vars=True))
        self.base_modified = False  # a snapshot's weights (full, or an adapter's base layers) replace the base's
        self._adapter_names = (f"snapshot-{n}" for n in itertools.count(1))

    @property
    def network(self) -> torch.nn.Module:
        return self.peft if self.peft is not None else self.base

    def load(self, directory: str | Path, identity: str) -> None:
        """Serve the snapshot in `directory` from now on; SnapshotError, changing nothing, if it cannot be served."""
        path = Path(directory)
        with torch.no_grad():
            if not path.is_dir():
                raise SnapshotError(f"snapshot {identity!r}: {path} is not a directory")
            if (path / "adapter_config.json").is_file():
                self._load_adapter(path, identity)
            elif (path / "config.json").is_file():
                self._load_full(path, identity)
            else:
                raise SnapshotError(
                    f"snapshot {identity!r}: {path} holds neither adapter_config.json (a LoRA adapter) nor "
                    "config.json (full weights)"
                )
            self.identity = identity

    def _load_full(self, path: Path, identity: str) -> None:
        what = f"snapshot {identity!r} ({path})"
        try:
            config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:
            raise SnapshotError(f"{what}: unreadable config.json: {exc}") from exc
        differences = [
            f"{key} {getattr(config, key, None)!r} (the base model's is {getattr(self.base.config, key, None)!r})"
            for key in ARCHITECTURE_FIELDS
            if getattr(config, key, None) != getattr(self.base.config, key, None)
        ]
        if differences:
            raise SnapshotError(f"{what} is not of the base model's architecture: " + "; ".join(differences))
        weights = self._read_weights(path, what)
        self._drop_adapter()
        self._copy_in(weights)
        self.base_modified = True

    def _load_adapter(self, path: Path, identity: str) -> None:
        what = f"snapshot {identity!r} ({path})"
        try:
            peft_type = json.loads((path / "adapter_config.json").read_text()).get("peft_type")
            if peft_type != "LORA":
                raise SnapshotError(f"{what} is a {peft_type} adapter; only LoRA adapters can be served")
            config = LoraConfig.from_pretrained(str(path))
            adapter_weights = load_peft_weights(str(path), device="cpu")
        except SnapshotError:
            raise
        except Exception as exc:
            raise SnapshotError(f"{what}: unreadable LoRA adapter: {exc}") from exc
        # peft saves whole base layers next to the adapter when it targets tied embeddings (lm_head), and loading
        # them overwrites the base weights. They go in like a full snapshot's, after the adapter has loaded.
        overrides = {}
        for key in list(adapter_weights):
            base_key = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
            if base_key in self.weights:
                overrides[base_key] = adapter_weights.pop(key)
        overrides = self._checked(overrides, what, complete=False)
        # The adapter was trained on the base weights; read them back first if a full snapshot replaced them.
        base = self._read_weights(self.base_dir, "the base model") if self.base_modified else None
        name = next(self._adapter_names)
        config.inference_mode = True
        try:
            if self.peft is None:
                self.peft = PeftModel(self.base, config, adapter_name=name)
            else:
                self.peft.add_adapter(name, config)
            result = set_peft_model_state_dict(self.peft, adapter_weights, adapter_name=name)
            missing = [key for key in result.missing_keys if f".{name}." in key and "lora_" in key]
            if missing or result.unexpected_keys:
                raise SnapshotError(
                    f"{what} does not fit the base model: missing {missing[:3]}, unexpected "
                    f"{list(result.unexpected_keys)[:3]}"
                )
        except Exception as exc:
            self._discard_adapter(name)
            if isinstance(exc, SnapshotError):
                raise
            raise SnapshotError(f"{what} does not fit the base model: {exc}") from exc
        if base is not None:
            self._copy_in(base)
        self._copy_in(overrides)
        self.base_modified = bool(overrides)
        self.peft.set_adapter(name)
        if self.adapter is not None:
            self.peft.delete_adapter(self.adapter)  # replaced, not stacked
        self.adapter = name

    def _discard_adapter(self, name: str) -> None:
        """Undoes a failed adapter load, leaving the previous adapter (or none) active."""
        if self.adapter is None:
            self._drop_adapter()
            return
        if name in self.peft.peft_config:
            self.peft.delete_adapter(name)
        self.peft.set_adapter(self.adapter)

    def _drop_adapter(self) -> None:
        """Removes every LoRA layer, leaving the plain base model (whatever weights it holds)."""
        if self.peft is not None:
            self.peft.unload()
        # What an injection that failed halfway may have left behind, where there is no PeftModel to unload it.
        for module_name, module in list(self.base.named_modules()):
            if isinstance(module, BaseTunerLayer):
                parent, _, child = module_name.rpartition(".")
                setattr(self.base.get_submodule(parent), child, module.get_base_layer())
        if hasattr(self.base, "peft_config"):
            del self.base.peft_config  # set by peft; a stale one would confuse the next PeftModel
        self.peft, self.adapter = None, None

    def _read_weights(self, directory: Path, what: str) -> dict[str, Tensor]:
        """A directory's safetensors weights, on the CPU and checked."""
        index = directory / "model.safetensors.index.json"
        try:
            if index.is_file():
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                files = [directory / shard for shard in shards]
            else:
                files = [directory / "model.safetensors"]
            state = {key: value for file in files for key, value in load_file(file, device="cpu").items()}
        except Exception as exc:
            raise SnapshotError(f"{what}: unreadable safetensors weights in {directory}: {exc}") from exc
        return self._checked(state, what, complete=True)

    def _checked(self, state: dict[str, Tensor], what: str, complete: bool) -> dict[str, Tensor]:
        """Base-model weights checked against the base model's names and shapes (all of them, if complete), and
        cast to its dtypes, so that copying them in cannot fail halfway."""
        unexpected = sorted(set(state) - set(self.weights))
        if unexpected:
            raise SnapshotError(f"{what} has weights the base model lacks: {unexpected[:5]}")
        if complete:
            # Tied weights are saved once, under either name.
            aliases: dict[int, list[str]] = {}
            for key, tensor in self.weights.items():
                aliases.setdefault(id(tensor), []).append(key)
            missing = [names[0] for names in aliases.values() if not any(name in state for name in names)]
            if missing:
                raise SnapshotError(f"{what} lacks weights of the base model: {missing[:5]}")
        for key, tensor in state.items():
            if tensor.shape != self.weights[key].shape:
                raise SnapshotError(
                    f"{what}: {key} has shape {list(tensor.shape)}, the base model's is {list(self.weights[key].shape)}"
                )
        return {key: tensor.to(self.weights[key].dtype) for key, tensor in state.items()}

    def _copy_in(self, state: dict[str, Tensor]) -> None:
        for key, tensor in state.items():
            self.weights[key].copy_(tensor)
