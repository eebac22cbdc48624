"""Pool queues -> the pool's waiting room, which is pumped at once (the "poller"); the faas queue -> the
FaaS provider (see `spillway.faas.dispatcher`).

The state machine sends each attempt to its pool's queue with a task token; this puts it in the
waiting room (DynamoDB, ordered by priority with aging) and starts whatever the free GPUs can take.
A message never waits on the queue for a GPU: the room holds it, so the queue is drained at once.
"""

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.typing import LambdaContext

from spillway.handlers.wiring import dispatcher, faas_dispatcher
from spillway.metrics import Metric, emit
from spillway.models import Pool, PoolTask

logger = Logger()
tracer = Tracer()
processor = BatchProcessor(event_type=EventType.SQS)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def handler(event: dict, context: LambdaContext) -> dict:
    # Each record is parsed on its own (a malformed one fails alone); the batch then enters the rooms
    # together and each room is pumped once, so the batch starts in the rooms' order.
    arrivals: list[PoolTask] = []
    response = process_partial_response(
        event=event, record_handler=lambda record: arrivals.append(PoolTask.model_validate_json(record.body)),
        processor=processor, context=context,
    )
    faas = [a for a in arrivals if a.pool is Pool.FAAS]
    if faas:
        outcomes = faas_dispatcher().enqueue_batch(faas)
        logger.info("sent to faas", tasks=len(faas), outcomes=outcomes)
    arrivals = [a for a in arrivals if a.pool is not Pool.FAAS]
    if arrivals:
        outcomes = dispatcher().enqueue_batch(arrivals)
        started = sum(o == "pushed" for o in outcomes.values())
        logger.info("enqueued", tasks=len(arrivals), started=started)
        emit(Metric.TASKS_ENQUEUED, len(arrivals))
        emit(Metric.TASKS_STARTED, started)
    return response
