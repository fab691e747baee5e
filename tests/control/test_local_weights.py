"""`shapeyard serve --model-dir MODEL=DIR`: a catalog model's workers load its weights from a local directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from shapeyard.catalog.loader import load_catalog, with_local_weights
from shapeyard.cli import app
from shapeyard.client import Datum, ModelInput, managed_training
from shapeyard.models import tiny
from tests.helpers import TINY, run_server

TOKENS = [1, 20, 21, 22, 23, 24, 25, 26]


def logprobs_in_process(directory: Path) -> list[float]:
    model = AutoModelForCausalLM.from_pretrained(directory)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([TOKENS[:-1]])).logits[0]
    return logits.log_softmax(-1).gather(1, torch.tensor(TOKENS[1:])[:, None]).squeeze(1).tolist()


def test_a_jobs_worker_loads_the_local_directory(tmp_path: Path):
    # a checkpoint that differs from the embedded model: its own weights, saved as any HF checkpoint is
    model = AutoModelForCausalLM.from_pretrained(tiny.ensure_tiny_model())
    with torch.no_grad():
        torch.manual_seed(0)
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    local = tmp_path / "my-tiny"
    model.save_pretrained(local)
    AutoTokenizer.from_pretrained(tiny.ensure_tiny_model()).save_pretrained(local)

    with run_server(tmp_path / "server", cpu_slots=1, model_dirs={"tiny-qwen3": str(local)}) as server:
        run = managed_training(
            base_url=server.base_url,
            api_key=server.api_key,
            base_model=TINY,
            training_shape_id="accounts/fireworks/trainingShapes/tiny-qwen3-2k-cpu",
        )
        datum = Datum(model_input=ModelInput.from_ints(TOKENS[:-1]), loss_fn_inputs={"target_tokens": TOKENS[1:]})
        served = run.training_client.forward([datum]).result().loss_fn_outputs[0]["logprobs"].to_list()
        run.close(delete_job=True)
    assert served == pytest.approx(logprobs_in_process(local), abs=1e-5)
    assert served != pytest.approx(logprobs_in_process(tiny.ensure_tiny_model()), abs=1e-3)


def test_unknown_models_and_malformed_options_are_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="model-dir qwen9: no such model in the catalog"):
        with_local_weights(load_catalog(), {"qwen9": "/models/qwen9"})
    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--data-dir", str(tmp_path), "--model-dir", "no-equals-sign"])
    assert result.exit_code == 2 and "expected MODEL=DIR" in result.output
    result = runner.invoke(app, ["serve", "--data-dir", str(tmp_path), "--model-dir", "qwen9=/models/qwen9"])
    assert result.exit_code == 2 and "no such model in the catalog" in result.output
