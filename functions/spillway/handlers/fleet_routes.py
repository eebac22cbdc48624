"""Operator routes of the job API: GET /v1/fleet, PUT /v1/fleet/{gpu_id} (enroll),
POST /v1/fleet/{gpu_id}/rotate, POST /v1/fleet/{gpu_id}/{drain|readmit|quarantine}.

IAM-protected like the client routes (the API's default authorizer); served by the API function.
"""

from typing import Annotated, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body, Path

from spillway.handlers.wiring import fleet_operations
from spillway.health import OperatorAction
from spillway.models import AgentSecret, ApiError, Enrollment, FleetView, GpuId, GpuView

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


@router.put("/v1/fleet/<gpu_id>", tags=["fleet"],
            summary="Enroll a GPU: its pool, URL and memory; the answer holds its agent's secret, shown only there "
                    "(enrolling it again replaces the secret)")
def enroll_gpu(gpu_id: Annotated[GpuId, Path()], enrollment: Annotated[Enrollment, Body()]) -> AgentSecret:
    secret = fleet_operations().enroll(gpu_id, enrollment)
    logger.warning("gpu enrolled", gpu_id=gpu_id, pool=enrollment.pool.value, url=str(enrollment.url),
                   generation=secret.generation)
    return secret


# Before the actions' route: both match /v1/fleet/<gpu_id>/<word>, and the first registered wins.
@router.post("/v1/fleet/<gpu_id>/rotate", tags=["fleet"], responses={404: {"description": "Not enrolled", **_ERROR}},
             summary="A new secret for the GPU's agent; the current one stays valid for a day (both work meanwhile)")
def rotate_secret(gpu_id: Annotated[GpuId, Path()]) -> AgentSecret:
    secret = fleet_operations().rotate(gpu_id)
    logger.warning("agent secret rotated", gpu_id=gpu_id, generation=secret.generation,
                   previous_valid_until=secret.previous_valid_until)
    return secret


@router.post("/v1/fleet/<gpu_id>/<action>", tags=["fleet"], responses=_ACTION_ERRORS,
             summary="Drain a GPU (no new work; running tasks finish), quarantine it (no work), or readmit it "
                     "(one canary task, then healthy)")
def act_on_gpu(gpu_id: Annotated[GpuId, Path()], action: Annotated[OperatorAction, Path()]) -> GpuView:
    view = fleet_operations().act(gpu_id, action)
    logger.warning("operator action", gpu_id=gpu_id, action=action.value, health=view.health.value)
    return view
