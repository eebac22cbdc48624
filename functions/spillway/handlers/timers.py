"""The timers queue -> a waiting task past its wait bound leaves the room; a silent task fails; a FaaS
job whose webhook never came is asked how it stands.

See `spillway.timers`: each message is a delayed "look at this task again".
"""

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from spillway.handlers.wiring import dispatcher, faas_dispatcher
from spillway.models import Timer, TimerKind

logger = Logger()
tracer = Tracer()
processor = BatchProcessor(event_type=EventType.SQS)


@tracer.capture_method
def record_handler(record: SQSRecord) -> None:
    timer = Timer.model_validate_json(record.body)
    if timer.kind is TimerKind.FAAS_STATUS:
        faas_dispatcher().on_timer(timer)
    else:
        dispatcher().on_timer(timer)  # an attempt it ends is counted where it ends (AttemptsEnded)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def handler(event: dict, context: LambdaContext) -> dict:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
