"""The dispatch state machine's Route step (`lambda:invoke`): where the job's next attempt goes, opened (with its
pool's queue, where RunAttempt sends it); or why the job ends, written. Its RoutingFailed step asks here too, when
the Route step failed past its retries: the job ends FAILED with that error through the same `Router.fail` (its
record, its metric, its webhook) as every route that ends a job."""

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from spillway.handlers.wiring import router
from spillway.logs import job_keys
from spillway.models import JobId

logger = Logger()
tracer = Tracer()


class RouteRequest(BaseModel):
    job_id: JobId
    after: int = Field(ge=0, description="the attempt the execution just closed")


class RoutingFailure(BaseModel):
    """RoutingFailed's request: the Route step failed past its retries, and why."""
    model_config = ConfigDict(extra="forbid")

    job_id: JobId
    reason: str = Field(min_length=1)


class RoutingFailureAnswer(BaseModel):
    failed: bool = Field(description="this call ended the job (False: it was final already, or moved on)")


_REQUEST = TypeAdapter(RouteRequest | RoutingFailure)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def handler(event: dict, context: LambdaContext) -> dict:
    request = _REQUEST.validate_python(event)
    logger.append_keys(**job_keys(request.job_id))
    if isinstance(request, RoutingFailure):
        logger.error("the routing step failed: the job fails with its error", reason=request.reason)
        return RoutingFailureAnswer(failed=router().fail(request.job_id, request.reason)).model_dump(mode="json")
    return router().route(request.job_id, request.after).model_dump(mode="json")
