"""Route templates and headers: the paths the servers serve and the clients call, in one place.

Templates take `str.format` arguments named as the server's path parameters, e.g.
`TRAINER_JOB.format(account="local", job_id="my-job")`.
"""

from __future__ import annotations

# --- control plane (camelCase JSON) ---------------------------------------------------------------------
ACCOUNTS = "/v1/accounts"
ACCOUNT = ACCOUNTS + "/{account}"
MODELS = ACCOUNT + "/models"
MODEL = MODELS + "/{model}"
TRAINING_SHAPES = ACCOUNT + "/trainingShapes"
TRAINING_SHAPE = TRAINING_SHAPES + "/{shape}"
TRAINING_SHAPE_VERSIONS = TRAINING_SHAPE + "/versions"
TRAINING_SHAPE_VERSION = TRAINING_SHAPE_VERSIONS + "/{version}"
VALIDATE_TRAINING_SHAPE_VERSION = TRAINING_SHAPE_VERSION + ":validate"
DEPLOYMENT_SHAPE_VERSIONS = ACCOUNT + "/deploymentShapes/{shape}/versions"
DEPLOYMENT_SHAPE_VERSION = DEPLOYMENT_SHAPE_VERSIONS + "/{version}"
TRAINER_JOBS = ACCOUNT + "/rlorTrainerJobs"
TRAINER_JOB = TRAINER_JOBS + "/{job_id}"
RESUME_TRAINER_JOB = TRAINER_JOB + ":resume"
DEPLOYMENTS = ACCOUNT + "/deployments"
DEPLOYMENT = DEPLOYMENTS + "/{deployment_id}"
HEALTH = "/healthz"


def resource(name: str) -> str:
    """The route of a resource by its full name (`accounts/<a>/<collection>/<id>...`)."""
    return f"/v1/{name}"


# --- trainer protocol (snake_case JSON) -----------------------------------------------------------------
TRAINER_API = "/api/v1"  # a worker's own routes, and the tinker client's entry at the server root
# A job's trainer as the clients reach it: the base URL its service client is given.
TRAINER_GATEWAY = "/training/v1/rlorTrainerJobs/{account}/{job_id}"
TRAINER_HEALTH = TRAINER_API + HEALTH


def trainer_op(op: str) -> str:
    return f"{TRAINER_API}/{op}"


# --- inference and hot-load -----------------------------------------------------------------------------
COMPLETIONS = "/inference/v1/completions"
OPENAI_COMPLETIONS = "/v1/completions"
CHAT_COMPLETIONS = "/v1/chat/completions"
HOT_LOAD = "/hot_load/v1/models/hot_load"
REPLICA_HOT_LOAD = "/hot_load"  # a deployment worker's own hot-load route

# --- headers --------------------------------------------------------------------------------------------
DEPLOYMENT_HEADER = "fireworks-deployment"  # the hot-load API names its target in a header
# The gateway proves to a worker that a request passed the control plane's authentication.
WORKER_TOKEN_HEADER = "X-Shapeyard-Worker-Token"
