"""What the tests share besides fixtures (those are in conftest.py): names of the tiny catalog entries, real
servers, request builders, and independent in-process computations to compare the server's answers with."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import torch
from fastapi import FastAPI
from peft import PeftConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from shapeyard.control.embedded import EmbeddedServer
from shapeyard.control.settings import ServerSettings
from shapeyard.control.state import ControlPlane
from shapeyard.cookbook.config import RunSection
from shapeyard.models.chat import render_chat, render_prompt
from shapeyard.shapes.recipe import training_recipe
from shapeyard.store import accounts
from shapeyard.store.layout import JobFiles
from shapeyard.trainer import compute
from shapeyard.trainer.backend import ModelKind
from shapeyard.trainer.losses import LossSpec
from shapeyard.trainer.spmd import SpmdBackend
from shapeyard.wire import names
from shapeyard.wire.shapes import AcceleratorSpec, DeviceKind, TrainingRecipe
from shapeyard.wire.trainer import AdamParams, Datum, ForwardBackwardOutput, GradNormalization, LoraConfig

T = TypeVar("T")
TINY = "accounts/fireworks/models/tiny-qwen3"
SHAPES = "accounts/fireworks/trainingShapes"
FULL_SHAPE = f"{SHAPES}/tiny-qwen3-2k-cpu"
LORA_SHAPE = f"{SHAPES}/tiny-qwen3-2k-cpu-lora"
FORWARD_ONLY_SHAPE = f"{SHAPES}/tiny-qwen3-2k-cpu-forward-only"
TINY_DEPLOYMENT_SHAPE = "accounts/fireworks/deploymentShapes/rft-tiny-qwen3-cpu"
API_KEY = "fw_test_bootstrap_key"
TINKER_KEY = "tml-test-bootstrap-key"
PROMPT = [1, 20, 21, 22]  # a few tokens to sample from


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


# --- servers ----------------------------------------------------------------------------------------------


@dataclass
class RunningServer:
    control: ControlPlane
    app: FastAPI
    base_url: str
    api_key: str = API_KEY
    tinker_key: str = TINKER_KEY

    def http(self, api_key: str | None = None) -> httpx.Client:
        key = self.api_key if api_key is None else api_key
        headers = {"X-Api-Key": key} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)

    def add_account(self, name: str, *, admin: bool = False) -> str:
        """A second tenant: returns its (non-admin unless asked) API key."""
        with self.control.db.session() as session:
            accounts.ensure_account(session, name)
            return accounts.add_key(session, name, admin=admin)

    @property
    def account(self) -> str:
        return self.control.settings.account

    def job_files(self, job_id: str) -> JobFiles:
        """The checkpoints and sampler snapshots of one of the bootstrap account's jobs."""
        return self.control.settings.files.job(self.account, job_id)

    def worker_name(self, job_id: str) -> str:
        """The launcher's name of a job's worker."""
        return names.job_name(self.account, job_id)


@contextmanager
def run_server(
    data_dir: Path,
    database_url: str | None = None,
    cpu_slots: int = 0,
    model_dirs: dict[str, str] | None = None,
    warm_workers: int = 0,
) -> Iterator[RunningServer]:
    """cpu_slots=0 runs the control plane alone: jobs wait in PENDING and no worker starts."""
    settings = ServerSettings(
        data_dir=data_dir,
        database_url=database_url,
        port=0,
        api_key=API_KEY,
        tinker_api_key=TINKER_KEY,
        cpu_worker_slots=cpu_slots,
        model_dirs=model_dirs or {},
        warm_workers=warm_workers,
    )
    with EmbeddedServer(settings) as server:
        yield RunningServer(server.control, server.app, server.base_url)


def same_record(after: dict, before: dict) -> bool:
    """Equal but for what the supervisor may move meanwhile (servers without workers put jobs in PENDING, and
    deployments report their replicas waiting)."""
    moving = ("state", "statusMessage", "updateTime", "replicas")
    return {k: v for k, v in after.items() if k not in moving} == {k: v for k, v in before.items() if k not in moving}


def reference_jobs(server: RunningServer, job_id: str) -> list[dict]:
    """The reference jobs provisioned for a policy job, deleted ones included."""
    with server.http() as http:
        listed = http.get(f"/v1/accounts/{server.account}/rlorTrainerJobs", params={"showDeleted": "true"}).json()
    return [job for job in listed["rlorTrainerJobs"] if names.short(job["name"]).startswith(f"{job_id}-reference")]


# --- requests ---------------------------------------------------------------------------------------------


def tiny_datum(tokens: list[int], weights: list[float] | None = None) -> dict:
    """A trainer-protocol Datum as JSON: inputs drop the last token, targets the first."""
    inputs = {"target_tokens": {"data": tokens[1:], "dtype": "int64"}}
    if weights is not None:
        inputs["weights"] = {"data": weights[1:], "dtype": "float32"}
    return {"model_input": {"chunks": [{"tokens": tokens[:-1], "type": "encoded_text"}]}, "loss_fn_inputs": inputs}


ADDITION_PROBLEMS = [("12+34=", "46"), ("57+21=", "78"), ("40+40=", "80"), ("19+66=", "85")]


def chat_data() -> list[Any]:
    """Four addition problems as the fireworks SDK's Datums, trained on the answers."""
    from fireworks.training.sdk import Datum, ModelInput

    from shapeyard.models import tiny

    tokenizer = tiny.build_tokenizer()
    data = []
    for prompt, answer in ADDITION_PROBLEMS:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        tokens, weights = render_chat(tokenizer, messages)
        data.append(
            Datum(
                model_input=ModelInput.from_ints(tokens[:-1]),
                loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights[1:]},
            )
        )
    return data


def create_lora_job(server: RunningServer) -> tuple[Any, Any, Any]:
    """A rank-8 LoRA job on the tiny LoRA shape, created and waited for through the fireworks SDK:
    (TrainerJobManager, TrainingShapeProfile, TrainerServiceEndpoint)."""
    from fireworks.training.sdk import TrainerJobConfig, TrainerJobManager

    jobs = TrainerJobManager(api_key=server.api_key, base_url=server.base_url)
    profile = jobs.resolve_training_profile(LORA_SHAPE)
    endpoint = jobs.create_and_wait(
        TrainerJobConfig(base_model=TINY, lora_rank=8, training_shape_ref=profile.training_shape), poll_interval_s=0.5
    )
    return jobs, profile, endpoint


# --- recipes ----------------------------------------------------------------------------------------------


def metrics(log_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]


def run_cli_recipe(server: RunningServer, tmp_path: Path, recipe: str, task: str, **settings: Any) -> str:
    """Writes the bundled task, then runs the recipe from a YAML config through the CLI on a LoRA policy. `settings`
    go into the config, those of its `run` section included."""
    import yaml
    from typer.testing import CliRunner

    from shapeyard.cli import app

    runner = CliRunner()
    written = runner.invoke(app, ["cookbook", "task", task, "--out", str(tmp_path / "data")])
    assert written.exit_code == 0, written.output
    config_file = tmp_path / f"{recipe}.yaml"
    lora = {"training_shape_id": LORA_SHAPE, "base_model": TINY, "lora_rank": 8}
    run = {key: settings.pop(key) for key in list(settings) if key in RunSection.model_fields}
    config = {"trainer": lora, "train_data": str(tmp_path / "data" / "train.jsonl"), **settings}
    config_file.write_text(yaml.safe_dump({**config, "run": {**run, "log_dir": str(tmp_path / "run")}}))
    base = ["--base-url", server.base_url, "--api-key", server.api_key]
    result = runner.invoke(app, [*base, "cookbook", recipe, "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    return result.output


# --- snapshots, scored in-process with plain transformers / peft ---------------------------------------------


def load_snapshot(path: Path) -> PreTrainedModel:
    """A full HF checkpoint, or a PEFT adapter on top of the base model it names."""
    if (path / "adapter_config.json").exists():
        base = AutoModelForCausalLM.from_pretrained(PeftConfig.from_pretrained(path).base_model_name_or_path)
        # Not merged: with tied embeddings, folding an lm_head adapter into the shared matrix changes the inputs too.
        return PeftModel.from_pretrained(base, path)
    return AutoModelForCausalLM.from_pretrained(path)


def snapshot_tokenizer(path: Path) -> Any:
    """A full snapshot carries its tokenizer; an adapter's is its base model's."""
    if (path / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(path)
    return AutoTokenizer.from_pretrained(PeftConfig.from_pretrained(path).base_model_name_or_path)


@torch.no_grad()
def greedy_answers(
    model: PreTrainedModel, tokenizer: Any, conversations: list[list[dict[str, str]]], max_new_tokens: int = 8
) -> list[str]:
    model.eval()
    answers: list[str] = []
    for start in range(0, len(conversations), 64):
        prompts = [render_prompt(tokenizer, c) for c in conversations[start : start + 64]]
        width = max(len(p) for p in prompts)
        pad = tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad,
        )
        answers += [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]
    return answers


def exact_match(model: PreTrainedModel, tokenizer: Any, examples: list[dict[str, Any]]) -> float:
    """Fraction of examples whose greedy answer equals the reference assistant message."""
    answers = greedy_answers(model, tokenizer, [e["messages"][:-1] for e in examples])
    correct = sum(a == e["messages"][-1]["content"].strip() for a, e in zip(answers, examples, strict=True))
    return correct / len(examples)


# --- the trainer backend, driven with wire types as the compute process drives it ------------------------------

CPU = AcceleratorSpec(accelerator_type="CPU", kind=DeviceKind.CPU, memory_gib=16.0)


def cpu_recipe(max_context_length: int, **changes: Any) -> TrainingRecipe:
    """The recipe of a CPU shape of that context (fp32, no checkpointing), with any field changed."""
    return training_recipe(CPU, max_context_length).model_copy(update=changes)


class WireBackend:
    """A backend behind the compute process's own conversions: wire requests in, wire outputs back, checkpoints
    named in the job's directory. The backend's other attributes (slots, peft model) stay reachable for checks."""

    def __init__(self, backend: SpmdBackend, job_dir: Path) -> None:
        self.backend, self.checkpoints = backend, JobFiles(job_dir)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def create_model(self, lora: LoraConfig | None, base_only: bool) -> tuple[str, ModelKind]:
        return self.backend.create_model(compute.adapter(lora), base_only)

    def prepare(self, data: list[Datum], spec: LossSpec, loss_fn: str) -> list[Any]:
        return self.backend.prepare(compute.examples(data), spec, loss_fn)

    def forward(
        self, model_id: str, data: list[Datum], loss_fn: str, config: dict[str, Any] | None, backward: bool
    ) -> ForwardBackwardOutput:
        return compute.forward_output(self.backend.forward(model_id, compute.examples(data), loss_fn, config, backward))

    def optim_step(self, model_id: str, adam: AdamParams, normalization: GradNormalization | None) -> dict[str, float]:
        return self.backend.optim_step(model_id, compute.adam_step(adam), normalization and normalization.value)

    def save_state(self, model_id: str, name: str) -> None:
        self.backend.save_state(model_id, self.checkpoints.training_dir(name))


def recipe_config(config_type: type[T], **fields: Any) -> T:
    """A recipe config from flat fields: those of the `run` section go there."""
    run = {key: fields.pop(key) for key in list(fields) if key in RunSection.model_fields}
    return config_type(run=RunSection(**run), **fields)


def with_run(config: T, **changes: Any) -> T:
    """The same recipe config with its `run` section changed."""
    return config.model_copy(update={"run": config.run.model_copy(update=changes)})
