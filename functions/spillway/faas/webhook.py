"""Per-task webhook secrets for FaaS jobs.

The provider calls `{api}/v1/faas/webhook/{task_id}?token=...` when a job ends. The token is an
HMAC-SHA256 of the task id under a key only the control plane holds, so it names one task and
cannot be forged or moved to another; nothing is stored per task.

The token only proves that the caller got the URL from us. **The webhook's body is never trusted**:
the handler reads the job's status from the provider itself (`FaasProvider.status(job_id)`, the job
id it recorded at submit) and acts on that answer alone. A replayed or forged body then changes
nothing, and a webhook is only a hint that it is time to look.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote

_CONTEXT = b"spillway/faas-webhook/v1\x00"  # so a token is never valid as any other HMAC of the same key
MIN_KEY_BYTES = 16


def webhook_token(key: bytes, task_id: str) -> str:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"a webhook key has at least {MIN_KEY_BYTES} bytes")
    digest = hmac.new(key, _CONTEXT + task_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def webhook_url(api_base_url: str, task_id: str, key: bytes) -> str:
    return (f"{api_base_url.rstrip('/')}/v1/faas/webhook/{quote(task_id, safe='')}"
            f"?token={webhook_token(key, task_id)}")


def verify(key: bytes, task_id: str, token: str | None) -> bool:
    """True only for the token of this task under this key; in constant time."""
    if not token or len(key) < MIN_KEY_BYTES:
        return False
    return hmac.compare_digest(webhook_token(key, task_id).encode("ascii"), token.encode("utf-8", "replace"))
