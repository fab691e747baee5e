"""The trainer at world sizes 2 and 4 (sharded over 4, and 2 replicas of 2 shards) equals world size 1:
per-token logprobs, losses, the gradients of the first step and the weights after ten steps, for cross-entropy
and PPO, full-parameter and LoRA; and checkpoints saved at world size 2 resume at world sizes 1 and 4 exactly as
the uninterrupted run continues.

The world of 4 also computes the loss 16 tokens at a time. Each world runs `spmd_program.py` under torch's elastic
launcher (gloo on CPU, one thread per rank). Tolerance, fp32 throughout: logprobs within 1e-4 absolute, losses
within 1e-5 relative, gradients within 1e-4 (absolute plus relative), weights within 1e-6 absolute. A different
world size sums the same terms in a different order; measured differences are about a tenth of these bounds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PROGRAM = Path(__file__).with_name("spmd_program.py")
STEPS = 10
SAVE_AT = 5


def run_world(size: int, out: Path, *args: str) -> dict:
    launcher = [] if size == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={size}"]
    command = [sys.executable, *launcher, str(PROGRAM), "--out", str(out), *args]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return torch.load(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("spmd")
    checkpoint = root / "checkpoint"
    return {
        "1": run_world(1, root / "w1.pt"),
        "2": run_world(2, root / "w2.pt", "--save-at", str(SAVE_AT), "--save-dir", str(checkpoint)),
        "4": run_world(4, root / "w4.pt", "--loss-chunk", "16"),  # the head in chunks, recomputed under FSDP
        "2 replicas x 2": run_world(4, root / "h4.pt", "--replicas", "2"),
        "resumed at 1": run_world(1, root / "r1.pt", "--resume-from", str(checkpoint)),
        "resumed at 4": run_world(4, root / "r4.pt", "--resume-from", str(checkpoint)),
    }


def assert_same_run(reference: dict, other: dict, steps: range) -> None:
    assert sorted(other["loss"]) == list(steps)
    for step in steps:
        assert other["loss"][step] == pytest.approx(reference["loss"][step], rel=1e-5), f"loss of step {step}"
        for ours, theirs in zip(other["logprobs"][step], reference["logprobs"][step], strict=True):
            torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs), rtol=0, atol=1e-4)
    assert other["weights"].keys() == reference["weights"].keys()
    for name, weight in reference["weights"].items():
        torch.testing.assert_close(other["weights"][name], weight, rtol=0, atol=1e-6, msg=f"weights of {name}")


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("size", ["2", "4", "2 replicas x 2"])
def test_a_larger_world_trains_exactly_as_one_process(runs: dict[str, dict], size: str, mode: str) -> None:
    reference, other = runs["1"][mode], runs[size][mode]
    assert_same_run(reference, other, range(STEPS))
    assert other["grads"].keys() == reference["grads"].keys()
    assert any(grad.abs().max() > 0 for grad in reference["grads"].values()), "no gradient at all"
    for name, grad in reference["grads"].items():
        torch.testing.assert_close(other["grads"][name], grad, rtol=1e-4, atol=1e-4, msg=f"gradient of {name}")
    assert other["moved"] > 1e-3, "the weights hardly moved: the equality would prove little"


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("resumed", ["resumed at 1", "resumed at 4"])
def test_a_checkpoint_saved_at_world_size_2_resumes_at_another(runs: dict[str, dict], resumed: str, mode: str) -> None:
    assert_same_run(runs["1"][mode], runs[resumed][mode], range(SAVE_AT, STEPS))
