"""Standard Webhooks signatures (https://www.standardwebhooks.com), the one signing scheme of Spillway.

A message carries three headers: `webhook-id` (stable per message: a receiver dedupes on it),
`webhook-timestamp` (epoch seconds) and `webhook-signature` (`v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">`, several separated by spaces while a secret rotates). A secret is
bytes, written `whsec_<base64>`; receivers verify with any Standard Webhooks library.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping

SECRET_PREFIX = "whsec_"
TOLERANCE_SECONDS = 5 * 60  # a message older or newer than this is refused: a replay, or a skewed clock
ID, TIMESTAMP, SIGNATURE = "webhook-id", "webhook-timestamp", "webhook-signature"


class BadSignature(Exception):
    """The message is not signed by a secret we hold, or not now."""


def secret_bytes(secret: str) -> bytes:
    """A secret as written (`whsec_<base64>`, or its base64 alone) -> its bytes."""
    text = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a signing secret is base64, optionally prefixed whsec_") from exc
    if len(key) < 16:
        raise ValueError("a signing secret holds at least 16 bytes")
    return key


def signature(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign(secrets: Iterable[bytes], msg_id: str, body: bytes, now: float) -> dict[str, str]:
    """The three headers for a message; one signature per secret (the new one and the old while rotating)."""
    timestamp = int(now)
    return {ID: msg_id, TIMESTAMP: str(timestamp),
            SIGNATURE: " ".join(signature(s, msg_id, timestamp, body) for s in secrets)}


def verify(secrets: Iterable[bytes], headers: Mapping[str, str], body: bytes, now: float,
           tolerance: float = TOLERANCE_SECONDS) -> str:
    """Check a message's headers against its body; returns its id, or raises BadSignature saying why."""
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, signed = lowered.get(ID), lowered.get(TIMESTAMP, ""), lowered.get(SIGNATURE)
    if not (msg_id and stamp and signed):
        raise BadSignature(f"missing {ID}, {TIMESTAMP} or {SIGNATURE}")
    if not stamp.isdigit():
        raise BadSignature(f"{TIMESTAMP} is not epoch seconds")
    timestamp = int(stamp)
    if abs(now - timestamp) > tolerance:
        raise BadSignature(f"{TIMESTAMP} is {now - timestamp:.0f} s away from now (the window is {tolerance:.0f} s)")
    presented = [s.removeprefix("v1,") for s in signed.split() if s.startswith("v1,")]
    for secret in secrets:
        expected = signature(secret, msg_id, timestamp, body).removeprefix("v1,")
        if any(hmac.compare_digest(expected, p) for p in presented):
            return msg_id
    raise BadSignature("no signature matches")
