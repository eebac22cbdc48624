"""The dispatch state machine's Route step (`lambda:invoke`): where the job's next attempt goes."""

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from spillway.handlers.wiring import endings, jobs, router
from spillway.logs import job_keys
from spillway.metrics import Metric, emit
from spillway.models import JobId, JobStatus
from spillway.routing.policy import RouteAction

logger = Logger()
tracer = Tracer()


class RouteRequest(BaseModel):
    job_id: JobId


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def handler(event: dict, context: LambdaContext) -> dict:
    request = RouteRequest.model_validate(event)
    logger.append_keys(**job_keys(request.job_id))
    route = router().route(request.job_id)
    logger.info("routed", action=route.action.value, pool=route.pool and route.pool.value, reason=route.reason)
    emit(Metric.ATTEMPTS_ROUTED, Pool=route.pool.value if route.pool else "none")
    if route.faas_budget_spent:  # the FaasBudgetSpent alarm watches it
        logger.warning("faas budget spent: routed elsewhere", reason=route.reason)
        emit(Metric.FAAS_BUDGET_SPENT)
    if route.action is RouteAction.FAIL:  # the state machine records the failure next
        job = jobs().get(request.job_id)
        if job is not None and not job.status.final:
            endings().ended(job, JobStatus.FAILED)
    return route.model_dump(mode="json")
