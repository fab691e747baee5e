"""The `shapeyard` command against a running server, and its admin commands on a database."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from shapeyard.cli import app
from shapeyard.cli.common import console
from tests.helpers import RunningServer, unique

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Tables wide enough that full names appear on one line."""
    monkeypatch.setattr(console, "width", 250)


@pytest.fixture
def cli(server: RunningServer):
    def run(*args: str, key: str | None = None):
        return runner.invoke(app, ["--base-url", server.base_url, "--api-key", key or server.api_key, *args])

    return run


def test_shapes_list_filters(cli):
    result = cli("shapes", "list", "--model", "tiny-qwen3", "--mode", "lora")
    assert result.exit_code == 0, result.output
    assert "tiny-qwen3-2k-cpu-lora" in result.output and "shape version(s)" in result.output
    assert "tiny-qwen3-8k-cpu" not in result.output and "POLICY_TRAINER" not in result.output
    by_accelerator = cli("shapes", "list", "--accelerator", "NVIDIA_H200_141GB")
    assert "qwen3-8b-256k-h200-lora" in by_accelerator.output and "qwen3p5-9b-256k" not in by_accelerator.output
    assert cli("shapes", "list", "--mode", "sideways").exit_code == 2


def test_shapes_show_prints_fields_versions_plan_and_deployment_shape(cli):
    result = cli("shapes", "show", "qwen3p5-9b-256k")
    assert result.exit_code == 0, result.output
    for text in (
        "maxSupportedContextLength",
        "262144",
        "NVIDIA_B200_180GB",
        "memory plan: fits",
        "optimizer state",
        "linked deployment shape",
        "rft-qwen3p5-9b",
    ):
        assert text in result.output
    missing = cli("shapes", "show", "no-such-shape")
    assert missing.exit_code == 1 and "NOT_FOUND" in missing.output


def test_shapes_validate_needs_admin(cli, tenant):
    ok = cli("shapes", "validate", "tiny-qwen3-2k-cpu")
    assert ok.exit_code == 0 and "validated" in ok.output and "total" in ok.output
    refused = cli("shapes", "validate", "tiny-qwen3-2k-cpu", key=tenant.key)
    assert refused.exit_code == 1 and "PERMISSION_DENIED" in refused.output


def test_jobs_and_deployments_commands(cli, http):
    job_id = unique("cli")
    http.post(
        "/v1/accounts/local/rlorTrainerJobs",
        params={
            "trainingShape": "accounts/fireworks/trainingShapes/tiny-qwen3-2k-cpu",
            "rlorTrainerJobId": job_id,
        },
        json={"trainingConfig": {"baseModel": "accounts/fireworks/models/tiny-qwen3"}},
    )
    dep_id = unique("cli-dep")
    http.post(
        "/v1/accounts/local/deployments",
        params={"deploymentId": dep_id},
        json={
            "baseModel": "accounts/fireworks/models/tiny-qwen3",
            "hotLoadTrainerJob": f"accounts/local/rlorTrainerJobs/{job_id}",
        },
    )
    assert job_id in cli("jobs", "list").output
    shown = cli("jobs", "show", job_id)
    assert "tiny-qwen3-2k-cpu" in shown.output and "JOB_STATE_" in shown.output
    assert dep_id in cli("deployments", "list").output
    assert "rft-tiny-qwen3-cpu" in cli("deployments", "show", dep_id).output
    assert "JOB_STATE_DELETED" in cli("jobs", "delete", job_id).output
    assert job_id not in cli("jobs", "list").output and job_id in cli("jobs", "list", "--deleted").output
    assert cli("jobs", "show", "nope").exit_code == 1


def test_missing_key_and_unreachable_server():
    result = runner.invoke(app, ["--api-key", "", "jobs", "list"], env={"SHAPEYARD_API_KEY": ""})
    assert result.exit_code == 2 and "No API key" in result.output
    result = runner.invoke(app, ["--base-url", "http://127.0.0.1:9", "--api-key", "k", "jobs", "list"])
    assert result.exit_code == 1 and "cannot reach" in result.output


def test_admin_creates_accounts_and_keys_in_the_database(tmp_path: Path):
    data = ["--data-dir", str(tmp_path / "new")]  # no server has used it yet
    created = runner.invoke(app, ["admin", "create-account", "team-a", *data])
    assert created.exit_code == 0, created.output
    keys = [line.split()[-1] for line in created.output.splitlines() if line.strip().startswith("key")]
    assert keys[0].startswith("fw_") and keys[1].startswith("tml-")
    assert runner.invoke(app, ["admin", "create-account", "team-a", *data]).exit_code == 1
    extra = runner.invoke(app, ["admin", "create-key", "team-a", "--admin", *data])
    assert extra.exit_code == 0 and extra.output.strip().startswith("fw_")
    listed = runner.invoke(app, ["admin", "list-accounts", *data])
    assert "team-a" in listed.output and "(admin)" in listed.output
    assert runner.invoke(app, ["admin", "create-key", "nobody", *data]).exit_code == 1
    assert runner.invoke(app, ["admin", "create-account", "Bad_Name", *data]).exit_code == 1
