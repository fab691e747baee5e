"""Resource names: `accounts/<account>/<collection>/<id>[/versions/<version>]`.

Every id segment follows the public grammar (lowercase letters, digits and dashes, 1-63 characters, no leading
or trailing dash). A malformed name is refused with a message that shows the expected form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shapeyard.errors import InvalidArgument

_ID = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_ID_RE = re.compile(rf"^{_ID}$")


@dataclass(frozen=True)
class ResourceName:
    account: str
    collection: str
    id: str
    version: str | None = None

    @property
    def parent(self) -> str:
        """The unversioned name."""
        return f"accounts/{self.account}/{self.collection}/{self.id}"

    def __str__(self) -> str:
        return self.parent if self.version is None else f"{self.parent}/versions/{self.version}"


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
    return parse(name, "trainingShapes", field=field)


def deployment_shape(name: str, field: str = "deploymentShape") -> ResourceName:
    return parse(name, "deploymentShapes", field=field)


def model(name: str, field: str = "baseModel") -> ResourceName:
    return parse(name, "models", versioned=False, field=field)


def trainer_job(name: str, field: str = "name") -> ResourceName:
    return parse(name, "rlorTrainerJobs", versioned=False, field=field)


def job_name(account: str, job_id: str) -> str:
    return f"accounts/{account}/rlorTrainerJobs/{job_id}"


def deployment_name(account: str, deployment_id: str) -> str:
    return f"accounts/{account}/deployments/{deployment_id}"
