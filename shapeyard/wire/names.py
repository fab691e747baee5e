"""Names on the wire: resource names and checkpoint references.

Resource names are `accounts/<account>/<collection>/<id>[/versions/<version>]`. Every id segment follows the public
grammar (lowercase letters, digits and dashes, 1-63 characters, no leading or trailing dash). The public catalog
lives in the account `fireworks`, so that names the official clients hard-code resolve here too; catalog files
and the command line may use short ids, which name resources of that account.

A checkpoint is named by a bare name (the job the request reached), `cross_job://<job>/<name>` (another job of the
same account, as the fireworks client writes it) or `tinker://<job>/<weights|sampler_weights>/<name>` (as the
tinker client writes it). A malformed name is refused with a message that shows the expected form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shapeyard.wire.errors import InvalidArgument

PUBLIC_ACCOUNT = "fireworks"
ANY = "-"  # every account, or every shape, in a version listing

MODELS = "models"
TRAINING_SHAPES = "trainingShapes"
DEPLOYMENT_SHAPES = "deploymentShapes"
TRAINER_JOBS = "rlorTrainerJobs"
DEPLOYMENTS = "deployments"

_ID = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_ID_RE = re.compile(rf"^{_ID}$")
VERSIONS = "/versions/"


@dataclass(frozen=True)
class ResourceName:
    account: str
    collection: str
    id: str
    version: str | None = None

    @property
    def parent(self) -> str:
        """The unversioned name."""
        return resource_name(self.account, self.collection, self.id)

    def __str__(self) -> str:
        return self.parent if self.version is None else f"{self.parent}{VERSIONS}{self.version}"


def check_id(kind: str, value: str) -> str:
    if not _ID_RE.match(value or ""):
        raise InvalidArgument(
            f"{kind} {value!r} is malformed: use 1-63 lowercase letters, digits and dashes, "
            "starting and ending with a letter or digit"
        )
    return value


def parse(name: str, collection: str, *, versioned: bool | None = None, field: str = "name") -> ResourceName:
    """Parse `accounts/<a>/<collection>/<id>` and, where allowed, `.../versions/<v>`.

    versioned: None accepts both forms, True requires a version, False forbids one.
    """
    forms = {
        None: f"accounts/<account>/{collection}/<id> or accounts/<account>/{collection}/<id>/versions/<version>",
        True: f"accounts/<account>/{collection}/<id>/versions/<version>",
        False: f"accounts/<account>/{collection}/<id>",
    }
    pattern = rf"^accounts/({_ID})/{collection}/({_ID})(?:/versions/({_ID}))?$"
    match = re.match(pattern, name or "")
    has_version = bool(match and match.group(3))
    if not match or (versioned is True and not has_version) or (versioned is False and has_version):
        raise InvalidArgument(f"{field} {name!r} is malformed; expected {forms[versioned]}")
    return ResourceName(match.group(1), collection, match.group(2), match.group(3))


def training_shape(name: str, field: str = "trainingShape") -> ResourceName:
    return parse(name, TRAINING_SHAPES, field=field)


def deployment_shape(name: str, field: str = "deploymentShape") -> ResourceName:
    return parse(name, DEPLOYMENT_SHAPES, field=field)


def model(name: str, field: str = "baseModel") -> ResourceName:
    return parse(name, MODELS, versioned=False, field=field)


def trainer_job(name: str, field: str = "name") -> ResourceName:
    return parse(name, TRAINER_JOBS, versioned=False, field=field)


def deployment(name: str, field: str = "name") -> ResourceName:
    return parse(name, DEPLOYMENTS, versioned=False, field=field)


def account_name(account: str) -> str:
    return f"accounts/{account}"


def resource_name(account: str, collection: str, resource_id: str) -> str:
    return f"{account_name(account)}/{collection}/{resource_id}"


def job_name(account: str, job_id: str) -> str:
    return resource_name(account, TRAINER_JOBS, job_id)


def deployment_name(account: str, deployment_id: str) -> str:
    return resource_name(account, DEPLOYMENTS, deployment_id)


def in_account(name: str, account: str) -> bool:
    return name.startswith(f"{account_name(account)}/")


def is_full(name: str) -> bool:
    """Whether a name is a full resource name, rather than a bare or short id."""
    return name.startswith("accounts/")


def public(collection: str, short: str) -> str:
    """A full name as given, or a short id of the public catalog (`tiny-qwen3` -> accounts/fireworks/models/...)."""
    return short if is_full(short) else resource_name(PUBLIC_ACCOUNT, collection, short)


def short(name: str) -> str:
    """The last segment of a name: a resource's id, or a version's."""
    return name.rsplit("/", 1)[-1]


def split_version(name: str) -> tuple[str, str | None]:
    """(unversioned name, version or None)."""
    parent, _, version = name.partition(VERSIONS)
    return parent, version or None


def unversioned(name: str) -> str:
    return split_version(name)[0]


# --- checkpoints -----------------------------------------------------------------------------------------

CROSS_JOB = "cross_job://"
TINKER = "tinker://"
WEIGHTS, SAMPLER_WEIGHTS = "weights", "sampler_weights"  # the tinker client's kinds of checkpoint
_CHECKPOINT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint as a client names it: `name` of job `job` (None: the job the request reached)."""

    job: str | None
    name: str


def check_checkpoint_name(name: str) -> str:
    if not _CHECKPOINT_NAME_RE.match(name or "") or ".." in name:
        raise InvalidArgument(
            f"checkpoint name {name!r} is invalid: use 1-128 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return name


def checkpoint_ref(reference: str) -> CheckpointRef:
    """A bare name, `cross_job://<job>/<name>`, or `tinker://<job>/[weights|sampler_weights/]<name>`."""
    for scheme in (CROSS_JOB, TINKER):
        if reference.startswith(scheme):
            parts = reference.removeprefix(scheme).split("/")
            if len(parts) == 3 and parts[1] in (WEIGHTS, SAMPLER_WEIGHTS):
                parts = [parts[0], parts[2]]
            if len(parts) != 2:
                raise InvalidArgument(f"checkpoint reference {reference!r} is malformed; expected {scheme}<job>/<name>")
            return CheckpointRef(check_checkpoint_name(parts[0]), check_checkpoint_name(parts[1]))
    return CheckpointRef(None, check_checkpoint_name(reference))


def tinker_ref(path: str, kind: str, field: str) -> CheckpointRef:
    """A path the tinker client's own routes take: exactly `tinker://<job>/<kind>/<name>`."""
    if not path.startswith(TINKER) or len(path.removeprefix(TINKER).split("/")) != 3:
        raise InvalidArgument(f"{field} {path!r} is malformed; expected {TINKER}<job>/{kind}/<name>")
    return checkpoint_ref(path)


def tinker_path(job_id: str, kind: str, name: str) -> str:
    return f"{TINKER}{job_id}/{kind}/{name}"


def cross_job_path(job_id: str, name: str) -> str:
    return f"{CROSS_JOB}{job_id}/{name}"
