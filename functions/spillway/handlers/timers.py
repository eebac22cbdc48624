"""The timers queue -> a waiting task past its wait bound leaves the room; a silent task fails; a FaaS
job whose webhook never came is asked how it stands.

See `spillway.timers`: each message is a delayed "look at this task again".
"""

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from spillway.handlers.wiring import dispatcher, faas_dispatcher
from spillway.models import ErrorType, Timer, TimerKind

logger = Logger()
tracer = Tracer()
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.SQS)


@tracer.capture_method
def record_handler(record: SQSRecord) -> None:
    timer = Timer.model_validate_json(record.body)
    if timer.kind is TimerKind.FAAS_STATUS:
        faas_dispatcher().on_timer(timer)
        return
    outcome = dispatcher().on_timer(timer)
    if outcome in (ErrorType.WAIT_EXPIRED, ErrorType.GPU_UNREACHABLE):
        metrics.add_metric(name=f"Tasks{outcome}", unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: LambdaContext) -> dict:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
