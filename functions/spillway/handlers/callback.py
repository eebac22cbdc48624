"""Agent routes: fleet heartbeats, task heartbeats and results, turned into SendTask* callbacks.

Agents live outside AWS (an office, a rented box), so they present the agent key, a bearer
secret kept in Secrets Manager, instead of signing with IAM.
"""

import hmac
from typing import Annotated

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.middlewares import NextMiddleware
from aws_lambda_powertools.event_handler.openapi.params import Body, Path
from aws_lambda_powertools.utilities.typing import LambdaContext

from spillway.handlers.http import answer_errors_with_reasons, error_response, unreadable_body
from spillway.handlers.wiring import agent_key, dispatcher, reports
from spillway.models import AgentHeartbeat, CallbackAck, TaskHeartbeat, TaskId, TaskResult

logger = Logger()
tracer = Tracer()
app = APIGatewayHttpResolver(enable_validation=True)
answer_errors_with_reasons(app)


def require_agent_key(app: APIGatewayHttpResolver, next_middleware: NextMiddleware) -> Response:
    presented = app.current_event.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not presented or not hmac.compare_digest(presented.encode(), agent_key().encode()):
        return error_response(401, "missing or wrong agent key")
    return next_middleware(app)


app.use(middlewares=[require_agent_key])


@app.post("/v1/agent/heartbeat", summary="An agent reports its GPU (registers on the first beat)")
def agent_heartbeat(beat: Annotated[AgentHeartbeat, Body()]) -> CallbackAck:
    if dispatcher().on_heartbeat(beat):
        dispatcher().pump(beat.pool)  # a GPU that can take work again pulls from its room at once
    return CallbackAck(current=True)


@app.post("/v1/agent/tasks/<task_id>/heartbeat", summary="The task is still running")
def task_heartbeat(task_id: Annotated[TaskId, Path()], beat: Annotated[TaskHeartbeat, Body()]) -> CallbackAck:
    logger.append_keys(task_id=task_id, gpu_id=beat.gpu_id)
    return reports().heartbeat(task_id, beat)


@app.post("/v1/agent/tasks/<task_id>/result", summary="The task ended: succeeded, or failed with a reason")
def task_result(task_id: Annotated[TaskId, Path()], result: Annotated[TaskResult, Body()]) -> CallbackAck:
    logger.append_keys(task_id=task_id, gpu_id=result.gpu_id)
    return reports().result(task_id, result)


@logger.inject_lambda_context(correlation_id_path="requestContext.requestId", clear_state=True)
@tracer.capture_lambda_handler
def handler(event: dict, context: LambdaContext) -> dict:
    return unreadable_body(event) or app.resolve(event, context)
