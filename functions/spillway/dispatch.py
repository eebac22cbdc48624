"""A pool's dispatcher (the poller): from a queued attempt to a task running on a GPU.

Fail fast and by kind: no free GPU -> the message comes back in a moment; an agent that cannot
be reached (cut tunnel, dead node) -> the attempt fails now, with `Spillway.GpuUnreachable`,
so the state machine moves the job on in about a second instead of waiting out a timeout.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from aws_lambda_powertools import Logger

from spillway.aws import error_code
from spillway.errors import NoCapacity
from spillway.fleet import Fleet, Gpu, LeaseRefused, Task
from spillway.models import AgentTask, ErrorType, PoolTask

logger = Logger(child=True)

_TASK_IDS = uuid.UUID("5b1f0f9e-6d43-4c1e-9d2a-9b7a8f2b1c10")
PUSH_TIMEOUT = httpx.Timeout(connect=1.0, read=5.0, write=5.0, pool=1.0)
INPUT_URL_SECONDS = 60 * 60


def task_id_for(job_id: str, attempt: int) -> str:
    """Stable per attempt, so a redelivered message finds the lease it already made."""
    return "t-" + uuid.uuid5(_TASK_IDS, f"{job_id}#{attempt}").hex


def result_key_for(job_id: str, attempt: int) -> str:
    return f"results/{job_id}/attempt-{attempt}.png"


class Dispatcher:
    def __init__(
        self,
        fleet: Fleet,
        s3: Any,
        sfn: Any,
        http: httpx.Client,
        bucket: str,
        heartbeat_seconds: int,
        attempt_timeout_seconds: int,
        agent_stale_seconds: int,
        agent_key: Callable[[], str],
        clock: Callable[[], float] = time.time,
    ):
        self._fleet = fleet
        self._s3 = s3
        self._sfn = sfn
        self._http = http
        self._bucket = bucket
        self._heartbeat_seconds = heartbeat_seconds
        self._attempt_timeout_seconds = attempt_timeout_seconds
        self._agent_stale_seconds = agent_stale_seconds
        self._agent_key = agent_key  # agents take tasks only from who holds it
        self._clock = clock

    def dispatch(self, queued: PoolTask) -> str:
        """Run one queued attempt on a GPU. Returns what happened; raises NoCapacity to retry later."""
        task = self._fleet.task(task_id_for(queued.job_id, queued.attempt)) or self._lease(queued)
        if task is None:
            return "stale"
        if task.state != "running":
            return "already_done"
        return self._push(task)

    def _lease(self, queued: PoolTask) -> Task | None:
        now = self._clock()
        candidates = self._fleet.candidates(
            queued.pool, queued.service, queued.vram_mb, now, self._agent_stale_seconds
        )
        for gpu in candidates:
            task = self._new_task(queued, gpu, now)
            try:
                self._fleet.lease(gpu, task)
            except LeaseRefused as refused:
                if refused.reason == "gpu_taken":
                    continue  # someone else got the VRAM first: next best fit
                if refused.reason == "task_exists":
                    return self._fleet.task(task.task_id)
                logger.info("attempt moved on before it was leased", job_id=queued.job_id, attempt=queued.attempt)
                return None
            logger.info("leased", job_id=task.job_id, attempt=task.attempt, task_id=task.task_id, gpu_id=gpu.gpu_id)
            return task
        raise NoCapacity(
            f"no {queued.pool.value} GPU free for {queued.service} with {queued.vram_mb} MB "
            f"({len(candidates)} fit but were taken)"
        )

    def _new_task(self, queued: PoolTask, gpu: Gpu, now: float) -> Task:
        return Task(
            task_id=task_id_for(queued.job_id, queued.attempt),
            job_id=queued.job_id,
            attempt=queued.attempt,
            pool=queued.pool,
            gpu_id=gpu.gpu_id,
            gpu_url=gpu.url,
            service=queued.service,
            input_key=queued.input_key,
            result_key=result_key_for(queued.job_id, queued.attempt),
            vram_mb=queued.vram_mb,
            task_token=queued.task_token,
            created_at=now,
            expires_at=int(now) + self._attempt_timeout_seconds + 86_400,
        )

    def _push(self, task: Task) -> str:
        agent_task = AgentTask(
            task_id=task.task_id,
            job_id=task.job_id,
            service=task.service,
            input_url=self._presign("get_object", task.input_key),
            output_url=self._presign("put_object", task.result_key, ContentType="image/png"),
            # Beat three times per heartbeat window, so one lost beat never fails an attempt.
            heartbeat_interval_s=max(1.0, self._heartbeat_seconds / 3),
        )
        try:
            response = self._http.post(
                f"{task.gpu_url}/v1/tasks", content=agent_task.model_dump_json(),
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._agent_key()}"},
                timeout=PUSH_TIMEOUT,
            )
        except httpx.HTTPError as exc:
            return self._fail(task, ErrorType.GPU_UNREACHABLE, f"{task.gpu_id} unreachable: {exc!r}")
        if response.status_code in (200, 202):
            logger.info("pushed", job_id=task.job_id, task_id=task.task_id, gpu_id=task.gpu_id)
            return "pushed"
        if response.status_code == 503:
            # Draining, or its slots are full after all: give the VRAM back and retry elsewhere soon.
            self._fleet.give_back(task)
            raise NoCapacity(f"{task.gpu_id} refused the task: {response.text[:200]}")
        if response.status_code >= 500 or response.status_code in (401, 403):
            # Broken, or holding another agent key (a rotation half done): this GPU cannot take it.
            return self._fail(task, ErrorType.GPU_UNREACHABLE,
                              f"{task.gpu_id} answered {response.status_code}: {response.text[:200]}")
        return self._fail(task, ErrorType.MODEL_ERROR, f"{task.gpu_id} rejected the task: {response.text[:500]}")

    def _fail(self, task: Task, error: ErrorType, cause: str) -> str:
        logger.warning(
            "attempt failed at push", job_id=task.job_id, task_id=task.task_id, error=error.value, cause=cause
        )
        if self._fleet.release(task, "failed", error.value):
            try:
                self._sfn.send_task_failure(taskToken=task.task_token, error=error.state_machine_error, cause=cause)
            except Exception as exc:
                if error_code(exc) not in ("TaskTimedOut", "TaskDoesNotExist", "InvalidToken"):
                    raise
        return error.value

    def _presign(self, operation: str, key: str, **extra: str) -> str:
        return self._s3.generate_presigned_url(
            operation, Params={"Bucket": self._bucket, "Key": key, **extra}, ExpiresIn=INPUT_URL_SECONDS
        )
