"""Answering a dispatch execution that waits on a task token: the one place that holds the token's use.

An answer to an attempt that has moved on (timed out, or its execution ended) is no error: AWS says
TaskTimedOut (moto accepts it), TaskDoesNotExist or InvalidToken, and the answer is dropped.
"""

from __future__ import annotations

from typing import Any

from spillway.aws import error_code
from spillway.models import AttemptOutput, ErrorType

MOVED_ON = ("TaskTimedOut", "TaskDoesNotExist", "InvalidToken")


class Callbacks:
    def __init__(self, sfn: Any):
        self._sfn = sfn

    def succeeded(self, token: str, output: AttemptOutput) -> bool:
        """Tell the execution the attempt succeeded; False if it had moved on."""
        return self._send(self._sfn.send_task_success, taskToken=token, output=output.model_dump_json())

    def failed(self, token: str, error: ErrorType, cause: str) -> bool:
        """Tell the execution the attempt failed, by kind; False if it had moved on."""
        return self._send(self._sfn.send_task_failure, taskToken=token, error=error.state_machine_error,
                          cause=cause[:32_000])

    @staticmethod
    def _send(send: Any, **kwargs: Any) -> bool:
        try:
            send(**kwargs)
        except Exception as exc:
            if error_code(exc) in MOVED_ON:
                return False
            raise
        return True
