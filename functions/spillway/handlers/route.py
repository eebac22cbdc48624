"""The dispatch state machine's Route step (`lambda:invoke`): where the job's next attempt goes, opened (with its
pool's queue, where RunAttempt sends it); or why the job ends, written."""

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, Field

from spillway.handlers.wiring import router
from spillway.logs import job_keys
from spillway.models import JobId

logger = Logger()
tracer = Tracer()


class RouteRequest(BaseModel):
    job_id: JobId
    after: int = Field(ge=0, description="the attempt the execution just closed")


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def handler(event: dict, context: LambdaContext) -> dict:
    request = RouteRequest.model_validate(event)
    logger.append_keys(**job_keys(request.job_id))
    return router().route(request.job_id, request.after).model_dump(mode="json")
