"""Handlers the runtime tests wire into a stack: they record what they were given and answer as told."""

from __future__ import annotations

import threading
from typing import Any

events: list[dict[str, Any]] = []
answer: Any = None  # what the next invocation returns; an Exception is raised
# Invocations the test needs under way at once say so here, mid-invocation, and wait to be let go.
under_way = threading.Semaphore(0)
let_go = threading.Event()


def handler(event: dict[str, Any], context: Any) -> Any:
    events.append({"event": event, "function_name": context.function_name,
                   "remaining_ms": context.get_remaining_time_in_millis()})
    if isinstance(answer, Exception):
        raise answer
    return answer(event) if callable(answer) else answer
