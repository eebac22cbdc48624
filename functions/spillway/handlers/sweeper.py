"""The safety net, on a schedule: pump every waiting room, hold every open task to its clocks, and
bring every job record in line with its execution. On an execution status change (EventBridge),
just that job's record.
"""

import time
from collections.abc import Callable

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from spillway import metrics
from spillway.faas.billing import MICRO
from spillway.handlers.wiring import (
    budget,
    dispatcher,
    faas_dispatcher,
    fleet,
    fleet_operations,
    reconciler,
    routing_rules,
)
from spillway.logs import job_keys
from spillway.metrics import Metric, emit
from spillway.models import Pool
from spillway.settings import settings

logger = Logger()
tracer = Tracer()

EXECUTION_STATUS_CHANGE = "Step Functions Execution Status Change"


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@event_source(data_class=EventBridgeEvent)
def handler(event: EventBridgeEvent, context: LambdaContext) -> dict:
    if event.detail_type == EXECUTION_STATUS_CHANGE:
        logger.append_keys(**job_keys(event.detail["name"]))  # the execution is named by the job id
        outcome = reconciler().reconcile_id(event.detail["name"])
        logger.info("execution ended", status=event.detail.get("status"), outcome=outcome)
        return {"jobs": {outcome: 1}}
    # Each sweep on its own: one that fails must not keep the others from running.
    tasks = _guarded("tasks", dispatcher().sweep)
    if settings().faas_endpoint_id:
        tasks |= {f"faas_{k}": v for k, v in _guarded("faas tasks", faas_dispatcher().sweep).items()}
    jobs = _guarded("jobs", reconciler().sweep)
    emit(Metric.JOBS_RECONCILED, jobs.get("reconciled", 0))
    _guarded("gauges", _gauges)
    if jobs.get("reconciled") or jobs.get("admitted"):
        logger.warning("swept", tasks=tasks, jobs=jobs)
    else:
        logger.debug("swept", tasks=tasks, jobs=jobs)
    return {"tasks": tasks, "jobs": jobs}


def _gauges() -> dict[str, int]:
    """Once a minute: the waiting rooms by pool and priority, GPUs by health per pool, and today's FaaS spend
    against its cap."""
    now = time.time()
    for pool in (Pool.LOCAL, Pool.CLOUD):
        metrics.room_gauges(pool, fleet().waiting_room.summary(pool, now))
    metrics.gpu_census(fleet_operations().census())
    if settings().faas_endpoint_id:
        emit(Metric.FAAS_SPEND, budget().view().committed_micro / MICRO)
        emit(Metric.FAAS_BUDGET, routing_rules().faas.daily_budget_usd)
    return {}


def _guarded(what: str, sweep: Callable[[], dict[str, int]]) -> dict[str, int]:
    try:
        return sweep()
    except Exception:
        logger.exception("sweeping failed", what=what)
        return {"error": 1}
