"""Operator routes of the job API: GET /v1/fleet, POST /v1/fleet/{gpu_id}/{drain|readmit|quarantine}.

IAM-protected like the client routes (the API's default authorizer); served by the API function.
"""

from typing import Annotated, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Path

from spillway.handlers.wiring import fleet_operations
from spillway.health import OperatorAction
from spillway.models import ApiError, FleetView, GpuId, GpuView

logger = Logger(child=True)
router = Router()

_ERROR = {"content": {"application/json": {"schema": ApiError.model_json_schema()}}}
_ACTION_ERRORS: dict[int | str, Any] = {
    404: {"description": "No such GPU", **_ERROR},
    409: {"description": "The action does not apply to the GPU's state, with the reason", **_ERROR},
    422: {"description": "Not an action: drain, readmit or quarantine", **_ERROR},
}


@router.get("/v1/fleet",
            summary="Every GPU: pool, health and why, VRAM, compute and tasks, last heartbeat, recent events",
            tags=["fleet"])
def list_fleet() -> FleetView:
    return fleet_operations().view()


@router.post("/v1/fleet/<gpu_id>/<action>", tags=["fleet"], responses=_ACTION_ERRORS,
             summary="Drain a GPU (no new work; running tasks finish), quarantine it (no work), or readmit it "
                     "(one canary task, then healthy)")
def act_on_gpu(gpu_id: Annotated[GpuId, Path()], action: Annotated[OperatorAction, Path()]) -> GpuView:
    view = fleet_operations().act(gpu_id, action)
    logger.warning("operator action", gpu_id=gpu_id, action=action.value, health=view.health.value)
    return view
