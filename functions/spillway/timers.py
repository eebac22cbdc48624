"""Timers as delayed SQS messages: "look at this task again at `due_at`".

SQS delays a message by up to 15 minutes; a timer due later is delivered early and set again for
the rest (`TimerQueue.due`). That gives the waiting room and the liveness clock second-precise
timers on AWS and offline alike, where a schedule would tick once a minute at best.
"""

from __future__ import annotations

import math
from typing import Any

from spillway.models import Timer

MAX_DELAY_SECONDS = 900  # SQS's limit


class TimerQueue:
    def __init__(self, sqs: Any, queue_url: str):
        self._sqs = sqs
        self._queue_url = queue_url

    def set(self, timer: Timer, now: float) -> None:
        delay = min(MAX_DELAY_SECONDS, max(0, math.ceil(timer.due_at - now)))
        self._sqs.send_message(QueueUrl=self._queue_url, MessageBody=timer.model_dump_json(), DelaySeconds=delay)

    @staticmethod
    def due(timer: Timer, now: float) -> bool:
        """Due now (a delivery may come a little early: SQS counts whole seconds)."""
        return timer.due_at <= now + 0.5
