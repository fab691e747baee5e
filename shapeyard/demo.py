"""`make demo`: an embedded server, the catalog, a shape resolved, a trainer job created, shown and deleted."""

from __future__ import annotations

import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from shapeyard.client.control import ControlClient
from shapeyard.config import ServerSettings
from shapeyard.server import EmbeddedServer
from shapeyard.wire.control import CreateTrainerJobRequest, TrainingConfig

console = Console()
SHAPE = "accounts/fireworks/trainingShapes/tiny-qwen3-2k-cpu"
MODEL = "accounts/fireworks/models/tiny-qwen3"


def main() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="shapeyard-demo-"))
    with EmbeddedServer(ServerSettings(data_dir=data_dir, port=0)) as server:
        console.rule(f"shapeyard server at {server.base_url} (data in {data_dir})")
        with ControlClient(server.base_url, server.keys.api_key) as client:
            versions = client.list_training_shape_versions(filter="latest_validated=true")
            table = Table(
                "shape", "mode", "accelerators", "context", title=f"catalog: {len(versions)} validated shapes"
            )
            for version in sorted(versions, key=lambda v: v.name):
                snap = version.snapshot
                if snap.accelerator_type == "CPU" or version.name.startswith(f"{SHAPE.rsplit('/', 1)[0]}/qwen3p5-9b"):
                    table.add_row(
                        version.name.split("/trainingShapes/")[1].split("/versions/")[0],
                        snap.trainer_mode,
                        f"{snap.accelerator_count * snap.node_count} x {snap.accelerator_type}",
                        f"{snap.max_supported_context_length:,}",
                    )
            console.print(table)

            resolved = client.resolve_training_shape(SHAPE)
            plan = resolved.validation_report.memory_plan
            console.print(f"resolved {SHAPE}\n  -> {resolved.name}")
            console.print(f"  validated: {resolved.validation_report.summary} (plan total {plan.total_gib:.2f} GiB)")

            request = CreateTrainerJobRequest(
                training_config=TrainingConfig(base_model=MODEL, learning_rate=1e-3), display_name="demo"
            )
            job = client.create_trainer_job(request, job_id="demo-job", training_shape=SHAPE)
            console.print(f"created {job.name}: {job.state.value} on {job.training_shape}")
            shown = client.get_trainer_job("demo-job")
            console.print(
                f"  trainer mode {shown.trainer_mode}, context {shown.training_config.max_context_length}, "
                f"{shown.training_config.accelerator_count} x {shown.training_config.accelerator_type}"
            )
            deleted = client.delete_trainer_job("demo-job")
            console.print(f"deleted {deleted.name}: {deleted.state.value}")
    console.rule("done")


if __name__ == "__main__":
    main()
