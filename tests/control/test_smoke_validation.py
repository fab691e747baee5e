"""Validation's smoke step: a real step where the hardware (and the weights) are on this machine."""

from __future__ import annotations

import pytest

from tests.helpers import RunningServer


def validate(server: RunningServer, shape: str) -> dict:
    with server.http() as http:
        response = http.post(f"/v1/accounts/fireworks/trainingShapes/{shape}/versions/latest:validate")
    assert response.status_code == 200, response.text
    return response.json()


def test_a_cpu_shape_runs_one_step_at_full_context_and_records_memory_and_time(server: RunningServer):
    version = validate(server, "tiny-qwen3-2k-cpu")
    smoke = version["validationReport"]["smoke"]
    assert version["validated"] and smoke["passed"]
    assert smoke["device"] == "cpu" and smoke["tokens"] == 2048
    assert 0.05 < smoke["peakMemoryGib"] < version["validationReport"]["memoryPlan"]["usableMemoryGib"]
    assert smoke["stepSeconds"] > 0
    assert "smoke step on cpu" in version["validationReport"]["summary"]
    forward_only = validate(server, "tiny-qwen3-2k-cpu-forward-only")["validationReport"]["smoke"]
    assert forward_only["passed"] and forward_only["tokens"] == 2048


@pytest.mark.parametrize(
    "shape",
    [
        "tiny-qwen3-8k-cpu",
        "tiny-qwen3-2k-cpu-lora",
        "tiny-qwen3-2k-cpu-x2",
        "tiny-qwen3-2k-cpu-x2-lora",
        "tiny-qwen3-2k-cpu-2node",
    ],
)
def test_the_measured_peak_of_a_cpu_shape_is_within_a_quarter_of_its_plan(server: RunningServer, shape: str):
    """The smoke step runs at the shape's world size (two ranks for x2 and 2node), and its largest per-rank peak
    is what the plan says one device holds, within 25 %."""
    report = validate(server, shape)["validationReport"]
    planned, measured = report["memoryPlan"]["totalGib"], report["smoke"]["peakMemoryGib"]
    assert report["smoke"]["passed"], report["smoke"]["detail"]
    assert 0.75 <= measured / planned <= 1.25, f"planned {planned} GiB, measured {measured} GiB"


def test_where_the_hardware_or_the_weights_are_missing_the_plan_stands_and_the_report_says_why(server):
    gpu = validate(server, "qwen3p5-9b-256k")
    assert gpu["validated"] and "smoke" not in gpu["validationReport"]
    assert "smoke step not run here: the shape needs 2 x NVIDIA_B200_180GB" in gpu["validationReport"]["summary"]
    real = validate(server, "qwen3-0p6b-4k-cpu-lora")
    assert (
        "smoke step not run here: the weights of Qwen/Qwen3-0.6B are not in the local HF cache"
        in real["validationReport"]["summary"]
    )
