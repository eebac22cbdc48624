"""Agent routes: fleet heartbeats, task heartbeats and results, turned into SendTask* callbacks.

Agents live outside AWS (an office, a rented box), so they present the agent key, a bearer
secret kept in Secrets Manager, instead of signing with IAM.
"""

import hmac
import time
from functools import cache
from typing import Annotated

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.middlewares import NextMiddleware
from aws_lambda_powertools.event_handler.openapi.params import Body, Path
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.typing import LambdaContext

from spillway import aws
from spillway.fleet import Fleet
from spillway.handlers.http import answer_errors_with_reasons, error_response
from spillway.models import AgentHeartbeat, CallbackAck, TaskHeartbeat, TaskId, TaskResult
from spillway.reports import TaskReports
from spillway.settings import settings

AGENT_KEY_CACHE_SECONDS = 300

logger = Logger()
tracer = Tracer()
metrics = Metrics()
app = APIGatewayHttpResolver(enable_validation=True)
answer_errors_with_reasons(app)


@cache
def fleet() -> Fleet:
    s = settings()
    return Fleet(aws.table(s.fleet_table), aws.table(s.tasks_table), s.jobs_table, aws.client("dynamodb"))


@cache
def reports() -> TaskReports:
    return TaskReports(fleet(), aws.client("stepfunctions"))


def require_agent_key(app: APIGatewayHttpResolver, next_middleware: NextMiddleware) -> Response:
    expected = parameters.get_secret(settings().agent_key_secret_arn, max_age=AGENT_KEY_CACHE_SECONDS)
    presented = app.current_event.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not presented or not hmac.compare_digest(presented.encode(), str(expected).encode()):
        return error_response(401, "missing or wrong agent key")
    return next_middleware(app)


app.use(middlewares=[require_agent_key])


@app.post("/v1/agent/heartbeat", summary="An agent reports its GPU (registers on the first beat)")
def agent_heartbeat(beat: Annotated[AgentHeartbeat, Body()]) -> CallbackAck:
    fleet().heartbeat(beat, now=time.time())
    return CallbackAck(current=True)


@app.post("/v1/agent/tasks/<task_id>/heartbeat", summary="The task is still running")
def task_heartbeat(task_id: Annotated[TaskId, Path()], beat: Annotated[TaskHeartbeat, Body()]) -> CallbackAck:
    return reports().heartbeat(task_id, beat)


@app.post("/v1/agent/tasks/<task_id>/result", summary="The task ended: succeeded, or failed with a reason")
def task_result(task_id: Annotated[TaskId, Path()], result: Annotated[TaskResult, Body()]) -> CallbackAck:
    logger.append_keys(task_id=task_id, gpu_id=result.gpu_id)
    ack = reports().result(task_id, result)
    metrics.add_metric(name=f"Tasks{result.outcome.capitalize()}", unit=MetricUnit.Count, value=1)
    return ack


@logger.inject_lambda_context(correlation_id_path="requestContext.requestId")
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: LambdaContext) -> dict:
    return app.resolve(event, context)
