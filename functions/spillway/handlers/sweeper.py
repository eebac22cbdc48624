"""The safety net, on a schedule: pump every waiting room, hold every open task to its clocks, and
bring every job record in line with its execution. On an execution status change (EventBridge),
just that job's record.
"""

from collections.abc import Callable

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from spillway.handlers.wiring import dispatcher, faas_dispatcher, reconciler
from spillway.settings import settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()

EXECUTION_STATUS_CHANGE = "Step Functions Execution Status Change"


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_source(data_class=EventBridgeEvent)
def handler(event: EventBridgeEvent, context: LambdaContext) -> dict:
    if event.detail_type == EXECUTION_STATUS_CHANGE:
        outcome = reconciler().reconcile_id(event.detail["name"])  # the execution is named by the job id
        logger.info("execution ended", job_id=event.detail["name"], status=event.detail.get("status"),
                    outcome=outcome)
        return {"jobs": {outcome: 1}}
    # Each sweep on its own: one that fails must not keep the others from running.
    tasks = _guarded("tasks", dispatcher().sweep)
    if settings().faas_endpoint_id:
        tasks |= {f"faas_{k}": v for k, v in _guarded("faas tasks", faas_dispatcher().sweep).items()}
    jobs = _guarded("jobs", reconciler().sweep)
    metrics.add_metric(name="JobsReconciled", unit=MetricUnit.Count, value=jobs.get("reconciled", 0))
    if jobs.get("reconciled") or jobs.get("admitted"):
        logger.warning("swept", tasks=tasks, jobs=jobs)
    else:
        logger.debug("swept", tasks=tasks, jobs=jobs)
    return {"tasks": tasks, "jobs": jobs}


def _guarded(what: str, sweep: Callable[[], dict[str, int]]) -> dict[str, int]:
    try:
        return sweep()
    except Exception:
        logger.exception("sweeping failed", what=what)
        return {"error": 1}
