"""GPU detection reads `nvidia-smi`, so that the server never imports torch. No GPU here: a stand-in `nvidia-smi`
(a shell script printing what the real one prints for this query) is the boundary we cannot reach."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shapeyard.launch.hardware import _gpus

ANSWER = "0, NVIDIA H200, 143771\n1, NVIDIA H200, 143771\n2, NVIDIA H100 80GB HBM3, 81559\n"


@pytest.fixture
def stand_in_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f'#!/bin/sh\n[ "$1" = "--query-gpu=index,name,memory.total" ] || exit 2\nprintf "{ANSWER}"\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return smi


def test_gpus_are_read_from_nvidia_smi(stand_in_smi: Path):
    gpus = _gpus()
    found = [(gpu.index, gpu.name) for gpu in gpus]
    assert found == [(0, "NVIDIA H200"), (1, "NVIDIA H200"), (2, "NVIDIA H100 80GB HBM3")]
    assert gpus[0].memory_gib == pytest.approx(143771 / 1024)


def test_the_servers_own_cuda_visible_devices_limit_them(stand_in_smi: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert [gpu.index for gpu in _gpus()] == [0, 2]


def test_no_nvidia_smi_means_no_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert _gpus() == []
