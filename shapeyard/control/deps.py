"""Request dependencies shared by the routers and gateways."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from shapeyard.control.auth import authenticate
from shapeyard.control.state import ControlPlane
from shapeyard.store.accounts import Caller


async def control_plane(request: Request) -> ControlPlane:
    # a coroutine: FastAPI would run a plain function in a worker thread, on every request
    return request.app.state.control


CallerDep = Annotated[Caller, Depends(authenticate)]
PlaneDep = Annotated[ControlPlane, Depends(control_plane)]


class WireRouter(APIRouter):
    """Responses leave out unset (None) fields, as protojson does."""

    def add_api_route(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        kwargs["response_model_exclude_none"] = True
        super().add_api_route(path, endpoint, **kwargs)
