"""Two functions written as Spillway's handlers are (one service's Logger and Metrics, keys appended
per job), for the runtime test that interleaves them in one process."""

from __future__ import annotations

import io
import threading
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.metrics import MetricUnit

lines = io.StringIO()  # every log line of both functions
logger = Logger(service="shared-state-test", stream=lines)
metrics = Metrics(namespace="Test", service="shared-state-test")
# The first function waits here, mid-invocation, while the second runs a whole invocation.
paused = threading.Event()
resume = threading.Event()


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def first(event: dict[str, Any], context: Any) -> None:
    logger.append_keys(job_id=event["job_id"])
    metrics.add_metric(name="FirstRan", unit=MetricUnit.Count, value=1)
    paused.set()
    resume.wait(10)
    logger.info("first ends")


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def second(event: dict[str, Any], context: Any) -> None:
    logger.append_keys(job_id=event["job_id"], gpu_id="local-3")
    metrics.add_metric(name="SecondRan", unit=MetricUnit.Count, value=1)
    logger.info("second ends")


# Two HTTP functions (Powertools resolvers) whose invocations overlap: the first's route pauses mid-way.
first_app, second_app = APIGatewayHttpResolver(), APIGatewayHttpResolver()
api_paused = threading.Event()
api_resume = threading.Event()


@first_app.get("/first")
def first_route() -> dict[str, Any]:
    api_paused.set()
    api_resume.wait(10)
    return {"path": first_app.current_event.path, "function": first_app.lambda_context.function_name}


@second_app.get("/second")
def second_route() -> dict[str, Any]:
    return {"path": second_app.current_event.path, "function": second_app.lambda_context.function_name}


def first_api(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return first_app.resolve(event, context)


def second_api(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return second_app.resolve(event, context)
