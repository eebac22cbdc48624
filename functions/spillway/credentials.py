"""Who may speak for a GPU and for a task: every credential is derived from the control plane's key.

- The control plane's key (a Secrets Manager secret only the API and the pool pollers read) derives each
  agent's secret (per GPU and generation), each task's id (unguessable, yet the same for a redelivered
  attempt) and each task's secret. The pollers sign every push with the agent's secret (Standard
  Webhooks, `signing.py`), so an agent takes work only from the control plane.
- The fleet record keeps only the SHA-256 of an agent's secrets (one; two while it rotates), the task
  record only the hash of the task's secret: the callback function, which checks what agents present,
  can check a credential but never make one. The secrets are 256-bit HMAC outputs: a plain hash is
  enough, there is nothing to brute-force.
- An agent presents `Authorization: Bearer <gpu_id>.<secret>` (the credential names its GPU: it cannot
  speak for another) and, for a task's heartbeat and result, the task's secret in `Spillway-Task-Secret`,
  which only the signed push to that GPU carried.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pydantic import BaseModel

from spillway.models import Pool
from spillway.signing import SECRET_PREFIX, secret_bytes

TASK_SECRET_HEADER = "Spillway-Task-Secret"
ROTATION_OVERLAP_SECONDS = 24 * 3600  # after `spillway fleet rotate`, the old secret stays valid this long
CHECKED_CREDENTIAL_SECONDS = 60  # a credential checked against its fleet record is trusted this long


class AgentCredential(BaseModel):
    """One of a GPU's secrets, as its fleet record keeps it: the generation it derives from, and its hash."""

    generation: int
    secret_hash: str
    valid_until: float | None = None  # None: the current secret; else an old one, valid during a rotation

    def valid(self, now: float) -> bool:
        return self.valid_until is None or now < self.valid_until


def _derive(key: bytes, purpose: str) -> bytes:
    return hmac.new(key, purpose.encode(), hashlib.sha256).digest()


def agent_secret(key: bytes, gpu_id: str, generation: int) -> str:
    """The GPU's secret of this generation, written as a Standard Webhooks secret (`whsec_<base64>`)."""
    return SECRET_PREFIX + base64.b64encode(_derive(key, f"agent-secret:{gpu_id}:{generation}")).decode()


def task_id_for(key: bytes, job_id: str, attempt: int) -> str:
    """Unguessable without the key (not a hash of the public job id), the same for a redelivered attempt."""
    return "t-" + _derive(key, f"task-id:{job_id}#{attempt}").hex()[:32]


_FAAS_TASK_IDS = uuid.UUID("5b1f0f9e-6d43-4c1e-9d2a-9b7a8f2b1c10")


def faas_task_id(job_id: str, attempt: int) -> str:
    """A FaaS attempt's id, which the Route step also reserves its budget under. It need not be secret: the
    provider's webhook URL carries its own HMAC token and its body is never trusted (see faas/webhook.py)."""
    return "t-" + uuid.uuid5(_FAAS_TASK_IDS, f"{job_id}#{attempt}").hex


def task_secret(key: bytes, task_id: str) -> str:
    return base64.urlsafe_b64encode(_derive(key, f"task-secret:{task_id}")).decode().rstrip("=")


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def credential(gpu_id: str, key: bytes, generation: int) -> AgentCredential:
    return AgentCredential(generation=generation, secret_hash=secret_hash(agent_secret(key, gpu_id, generation)))


def signing_keys(key: bytes, gpu_id: str, generations: Iterable[int]) -> list[bytes]:
    """The keys a push to the GPU is signed with: each of its valid secrets (its agent holds one of them)."""
    return [secret_bytes(agent_secret(key, gpu_id, generation)) for generation in generations]


def bearer(gpu_id: str, secret: str) -> str:
    return f"Bearer {gpu_id}.{secret}"


def matches(presented: str, expected_hash: str) -> bool:
    return hmac.compare_digest(secret_hash(presented), expected_hash)


@dataclass(frozen=True)
class Enrolled:
    """An agent whose credential checked out: the GPU it speaks for, with the pool and URL enrolled for it."""

    gpu_id: str
    pool: Pool
    url: str


Lookup = Callable[[str], tuple[Enrolled, list[AgentCredential]] | None]


class AgentAuth:
    """Checks `Authorization: Bearer <gpu_id>.<secret>` against the GPU's fleet record (`lookup`). A credential
    that checked out is trusted for a minute (or until it expires), sparing most agent calls a read."""

    def __init__(self, lookup: Lookup, clock: Callable[[], float] = time.time):
        self._lookup = lookup
        self._clock = clock
        self._checked: dict[tuple[str, str], tuple[Enrolled, float]] = {}

    def check(self, authorization: str) -> Enrolled | None:
        gpu_id, dot, secret = authorization.removeprefix("Bearer ").strip().partition(".")
        if not (gpu_id and dot and secret):
            return None
        now, hashed = self._clock(), secret_hash(secret)
        cached = self._checked.get((gpu_id, hashed))
        if cached is not None and now < cached[1]:
            return cached[0]
        found = self._lookup(gpu_id)
        if found is None:
            return None
        enrolled, credentials = found
        for c in credentials:
            if c.valid(now) and hmac.compare_digest(hashed, c.secret_hash):
                until = now + CHECKED_CREDENTIAL_SECONDS
                self._checked[(gpu_id, hashed)] = (enrolled, min(until, c.valid_until or until))
                return enrolled
        return None
