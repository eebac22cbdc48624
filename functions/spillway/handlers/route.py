"""The dispatch state machine's Route step (`lambda:invoke`): where the job's next attempt goes."""

from aws_lambda_powertools import Logger, Metrics, Tracer, single_metric
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from spillway.handlers.wiring import router
from spillway.models import JobId

logger = Logger()
tracer = Tracer()
metrics = Metrics()


class RouteRequest(BaseModel):
    job_id: JobId


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: LambdaContext) -> dict:
    request = RouteRequest.model_validate(event)
    logger.append_keys(job_id=request.job_id)
    route = router().route(request.job_id)
    logger.info("routed", action=route.action.value, pool=route.pool and route.pool.value, reason=route.reason)
    with single_metric(name="AttemptsRouted", unit=MetricUnit.Count, value=1,
                       default_dimensions=metrics.default_dimensions) as metric:
        metric.add_dimension(name="Pool", value=route.pool.value if route.pool else "none")
    if route.faas_budget_spent:  # the FaasBudgetSpent alarm watches it
        logger.warning("faas budget spent: routed elsewhere", reason=route.reason)
        metrics.add_metric(name="FaasBudgetSpent", unit=MetricUnit.Count, value=1)
    return route.model_dump(mode="json")
