"""A deployment's life: its replica workers (their names, placement and spec) and the deployment's state.

A deployment runs `maxReplicaCount` replicas (the managed path sets min = max = replica_count; 0 scales to zero).
A replica that dies is reported in the deployment's status and restarted; one that dies `MAX_RESTARTS` times in
a row without ever answering marks the deployment FAILED with the tail of its log.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from shapeyard.control.auth import require_account
from shapeyard.control.state import ControlPlane
from shapeyard.launch.base import Launcher, Placement, WorkerState
from shapeyard.store import catalog as store
from shapeyard.store.accounts import Caller
from shapeyard.store.tables import Deployment, DeploymentShapeVersion, utcnow
from shapeyard.wire import names
from shapeyard.wire.control import DeploymentState, ReplicaStatus
from shapeyard.wire.errors import NotFound
from shapeyard.wire.worker import DeploymentWorkerSpec, Listener, Snapshot

MAX_RESTARTS = 3
DEFAULT_CONTEXT = 4096  # for shapeless deployments


def find_deployment(session: Session, caller: Caller, account: str, deployment_id: str) -> Deployment:
    names.check_id("deployment id", deployment_id)
    name = names.deployment_name(account, deployment_id)
    require_account(caller, account, f"deployment {name}")
    row = session.get(Deployment, name)
    if row is None:
        raise NotFound(f"deployment {name} not found")
    return row


def _replicas(deployment: str) -> str:
    return f"{deployment}/replicas/"


def replica_name(deployment: str, index: int) -> str:
    """The launcher's name of a replica's worker."""
    return f"{_replicas(deployment)}{index}"


def replicas_running(launcher: Launcher, deployment: str) -> list[str]:
    return launcher.running(_replicas(deployment))


def stop_replicas(launcher: Launcher, deployment: str) -> None:
    for name in replicas_running(launcher, deployment):
        launcher.stop(name)


def desired_replicas(row: Deployment) -> int:
    return 0 if row.state == DeploymentState.DELETED else row.max_replica_count


def set_deployment_state(row: Deployment, state: DeploymentState, message: str = "") -> None:
    if row.state != state.value or row.status_message != message:
        row.state, row.status_message, row.update_time = state.value, message, utcnow()


def replica_placement(control: ControlPlane, accelerator_type: str, accelerator_count: int) -> Placement:
    """One replica's devices."""
    accelerator = control.catalog.accelerators[accelerator_type]
    return Placement(accelerator=accelerator, count=accelerator_count, nodes=1, replicas=1, memory_gib=0.0)


def replica_spec(session: Session, control: ControlPlane, row: Deployment, index: int) -> DeploymentWorkerSpec:
    context = DEFAULT_CONTEXT
    if row.deployment_shape_version:
        shape = session.get(DeploymentShapeVersion, row.deployment_shape_version)
        context = store.deployment_snapshot(shape).max_context_length
    snapshot = None
    if row.snapshot_identity and row.snapshot_path:
        snapshot = Snapshot(identity=row.snapshot_identity, path=Path(row.snapshot_path))
    return DeploymentWorkerSpec(
        deployment_name=row.name,
        replica=index,
        base_model=row.base_model,
        weights=store.get_model(session, row.base_model).weights,
        max_context_length=context,
        work_dir=control.settings.files.replica(row.account, row.deployment_id, index),
        snapshot=snapshot,
    )


def ready_replicas(control: ControlPlane, row: Deployment) -> list[tuple[int, Listener]]:
    """The replicas that answer, by index."""
    found = []
    for index in range(desired_replicas(row)):
        name = replica_name(row.name, index)
        status = control.launcher.status(name)
        listener = control.launcher.listener(name)
        if status is not None and status.state == WorkerState.READY and listener is not None:
            found.append((index, listener))
    return found


def replica_statuses(control: ControlPlane, row: Deployment) -> list[ReplicaStatus]:
    statuses = []
    for index in range(desired_replicas(row)):
        status = control.launcher.status(replica_name(row.name, index))
        if status is None:
            statuses.append(ReplicaStatus(replica=index, state="PENDING", message="waiting for a worker slot"))
        elif status.state == WorkerState.EXITED:
            statuses.append(ReplicaStatus(replica=index, state="FAILED", message=status.detail.splitlines()[0]))
        else:
            statuses.append(ReplicaStatus(replica=index, state=status.state.value.upper()))
    return statuses


class ReplicaSupervisor:
    """The deployment half of the supervisor's tick (see `shapeyard.control.lifecycle.supervisor`)."""

    def __init__(self, control: ControlPlane) -> None:
        self.control = control
        self.failures: dict[str, int] = {}  # replica -> deaths in a row without becoming ready
        self.last_death: dict[str, str] = {}  # deployment -> the last replica death, kept in the status

    def reconcile(self, session: Session, row: Deployment) -> None:
        launcher, want = self.control.launcher, desired_replicas(row)
        for name in replicas_running(launcher, row.name):
            if int(names.short(name)) >= want:
                launcher.stop(name)  # scaled down
        ready = 0
        waiting = ""
        for index in range(want):
            name = replica_name(row.name, index)
            status = launcher.status(name)
            if status is None:
                where = replica_placement(self.control, row.accelerator_type, row.accelerator_count)
                if launcher.has_capacity(where):
                    launcher.start(name, replica_spec(session, self.control, row, index), where)
                else:
                    waiting = launcher.capacity_message(where)
            elif status.state == WorkerState.READY:
                ready += 1
                self.failures.pop(name, None)
            elif status.state == WorkerState.EXITED:
                launcher.stop(name)
                deaths = self.failures[name] = self.failures.get(name, 0) + 1
                cause = status.detail.strip().splitlines()[-1]
                self.last_death[row.name] = f"replica {index} died ({cause}); restarting (attempt {deaths})"
                if deaths >= MAX_RESTARTS:
                    set_deployment_state(
                        row, DeploymentState.FAILED, f"replica {index} died {deaths} times: {status.detail}"
                    )
                    stop_replicas(launcher, row.name)
                    return
        if ready == want:
            message = "scaled to zero" if want == 0 else f"{ready} of {want} replicas ready"
            set_deployment_state(row, DeploymentState.READY, message)
            self.last_death.pop(row.name, None)
            return
        message = "; ".join(filter(None, [f"{ready} of {want} replicas ready", waiting, self.last_death.get(row.name)]))
        first = row.state == DeploymentState.CREATING
        set_deployment_state(row, DeploymentState.CREATING if first else DeploymentState.UPDATING, message)
