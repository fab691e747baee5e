"""The supervisor: makes workers match what the database says jobs and deployments should be.

Every tick, for each active job: no worker yet -> start one when the launcher has room (PENDING meanwhile); the
worker answers healthz -> RUNNING; the worker died -> FAILED with the tail of its log. A worker always starts from
the job's latest training checkpoint if it has one, so `:resume` (and a server restart) continue where the job
left off. Deployments get their replicas the same way (`lifecycle.deployments`).
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import select
from sqlalchemy.orm import Session

from shapeyard.control.lifecycle.deployments import ReplicaSupervisor
from shapeyard.control.lifecycle.jobs import job_placement, set_state, trainer_spec
from shapeyard.control.state import ControlPlane
from shapeyard.launch.base import WorkerState
from shapeyard.store.tables import Deployment, TrainerJob
from shapeyard.wire.control import ACTIVE_JOB_STATES, SERVING_DEPLOYMENT_STATES, JobState

log = logging.getLogger("shapeyard.supervisor")
TICK_SECONDS = 0.25


class Supervisor:
    def __init__(self, control: ControlPlane) -> None:
        self.control = control
        self.replicas = ReplicaSupervisor(control)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="shapeyard-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            try:
                self.tick()
            except Exception:
                log.exception("supervisor tick failed")

    def tick(self) -> None:
        active_states = [state.value for state in ACTIVE_JOB_STATES]
        serving_states = [state.value for state in SERVING_DEPLOYMENT_STATES]
        with self.control.db.session() as session:
            jobs = session.execute(
                select(TrainerJob.name, TrainerJob.state).where(TrainerJob.state.in_(active_states))
            ).all()
            deployments = list(session.scalars(select(Deployment.name).where(Deployment.state.in_(serving_states))))
        # one short transaction per job or deployment, on a fresh read under the lifecycle lock (see ControlPlane)
        for name, state in jobs:
            if self._settled(name, state):
                continue
            with self.control.lifecycle, self.control.db.session() as session:
                job = session.get(TrainerJob, name)
                if job is not None and job.state in active_states:
                    self._reconcile(session, job)
        for name in deployments:
            with self.control.lifecycle, self.control.db.session() as session:
                row = session.get(Deployment, name)
                if row is not None and row.state in serving_states:
                    self.replicas.reconcile(session, row)

    def _settled(self, name: str, state: str) -> bool:
        """Nothing for `_reconcile` to do: the worker is starting, or ready and the job already RUNNING. Training
        jobs spend their life here, so the tick skips their transaction (its CPU would compete with training)."""
        status = self.control.launcher.status(name)
        if status is None:
            return False
        return status.state == WorkerState.STARTING or (status.state == WorkerState.READY and state == JobState.RUNNING)

    def _reconcile(self, session: Session, job: TrainerJob) -> None:
        launcher = self.control.launcher
        status = launcher.status(job.name)
        if status is None:
            where = job_placement(session, self.control, job)
            if launcher.has_capacity(where):
                launcher.start(job.name, trainer_spec(session, self.control, job), where)
                set_state(job, JobState.PENDING, "worker starting")
            else:
                set_state(job, JobState.PENDING, launcher.capacity_message(where))
        elif status.state == WorkerState.READY:
            set_state(job, JobState.RUNNING)
        elif status.state == WorkerState.EXITED:
            launcher.stop(job.name)
            set_state(job, JobState.FAILED, status.detail)
            log.warning("trainer job %s failed: %s", job.name, status.detail.splitlines()[0])
