"""State survives a restart and stays isolated between accounts, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from shapeyard.store.db import MIGRATIONS_DIR, Database
from tests.helpers import LORA_SHAPE, TINY, run_server, same_record


def test_restart_keeps_everything_and_accounts_stay_isolated(tmp_path: Path, database_url: str):
    with run_server(tmp_path / "first", database_url) as server:
        other_key = server.add_account("other")
        with server.http() as http:
            job = http.post(
                "/v1/accounts/local/rlorTrainerJobs",
                params={"trainingShape": LORA_SHAPE, "rlorTrainerJobId": "kept"},
                json={"trainingConfig": {"baseModel": TINY, "loraRank": 8}, "displayName": "kept job"},
            ).json()
            dep = http.post(
                "/v1/accounts/local/deployments",
                params={"deploymentId": "kept-dep"},
                json={"baseModel": TINY, "hotLoadTrainerJob": job["name"], "maxReplicaCount": 2},
            ).json()
            shape = http.post(
                "/v1/accounts/local/trainingShapes",
                params={"trainingShapeId": "mine"},
                json={
                    "snapshot": {
                        **http.get(f"/v1/{job['trainingShape']}").json()["snapshot"],
                        "maxLoraRank": 8,
                    }
                },
            ).json()
        with server.http(other_key) as http:
            theirs = http.post(
                "/v1/accounts/other/rlorTrainerJobs",
                params={"trainingShape": LORA_SHAPE, "rlorTrainerJobId": "theirs"},
                json={"trainingConfig": {"baseModel": TINY, "loraRank": 4}},
            ).json()
        catalog_size = server.http().get("/v1/accounts/fireworks/trainingShapes/-/versions").json()["totalSize"]

    # A second server on the same database (a restart; the data dir may even move).
    with run_server(tmp_path / "second", database_url) as server:
        with server.http() as http:
            assert same_record(http.get("/v1/accounts/local/rlorTrainerJobs/kept").json(), job)
            assert same_record(http.get("/v1/accounts/local/deployments/kept-dep").json(), dep)
            assert http.get("/v1/accounts/local/trainingShapes/mine").json() == shape
            assert http.get("/v1/accounts/fireworks/trainingShapes/-/versions").json()["totalSize"] == catalog_size
        with server.http(other_key) as http:
            assert same_record(http.get("/v1/accounts/other/rlorTrainerJobs/theirs").json(), theirs)
            assert [j["name"] for j in http.get("/v1/accounts/other/rlorTrainerJobs").json()["rlorTrainerJobs"]] == [
                theirs["name"]
            ]
            for path in (
                "/v1/accounts/local/rlorTrainerJobs/kept",
                "/v1/accounts/local/deployments/kept-dep",
                "/v1/accounts/local/trainingShapes/mine",
            ):
                assert http.get(path).status_code == 404


def test_a_newer_shapeyard_opens_a_database_written_by_every_older_schema(database_url: str):
    """Walk the migration chain one revision at a time, writing an account at each step; all must survive."""
    revisions = [script.revision for script in ScriptDirectory(str(MIGRATIONS_DIR)).walk_revisions()][::-1]
    db = Database(database_url)
    for step, revision in enumerate(revisions):
        db.upgrade(revision)
        assert db.revision() == revision
        with db.engine.begin() as connection:
            connection.execute(
                text("INSERT INTO accounts (name, display_name, create_time) VALUES (:n, '', CURRENT_TIMESTAMP)"),
                {"n": f"written-at-{step}"},
            )
    db.upgrade()
    db.upgrade()  # idempotent
    with db.engine.connect() as connection:
        names = {row[0] for row in connection.execute(text("SELECT name FROM accounts"))}
    assert {f"written-at-{step}" for step in range(len(revisions))} <= names
    assert {"accounts", "trainer_jobs", "deployments", "training_shape_versions"} <= set(
        inspect(db.engine).get_table_names()
    )
    db.dispose()


def test_sqlite_runs_in_wal_mode(tmp_path: Path):
    db = Database(f"sqlite:///{tmp_path / 'wal.db'}")
    with db.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
    db.dispose()
