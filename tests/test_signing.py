"""The Standard Webhooks scheme: what we sign, a standard library verifies; what we verify, it signed."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from spillway import signing

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
NOW = 1_790_000_000.0
BODY = b'{"type": "job.succeeded", "data": {"job_id": "j-1"}}'


def test_a_standard_receiver_verifies_what_we_sign() -> None:
    headers = signing.sign([signing.secret_bytes(SECRET)], "msg_j-1.SUCCEEDED", BODY, NOW)
    receiver = Webhook(SECRET)
    receiver._Webhook__verify_timestamp = lambda stamp: datetime.fromtimestamp(int(stamp), UTC)  # type: ignore[attr-defined]
    assert receiver.verify(BODY, headers) == {"type": "job.succeeded", "data": {"job_id": "j-1"}}


def test_we_verify_what_a_standard_sender_signs() -> None:
    sent = Webhook(SECRET).sign("msg_1", datetime.fromtimestamp(NOW, UTC), BODY.decode())
    headers = {"Webhook-Id": "msg_1", "Webhook-Timestamp": str(int(NOW)), "Webhook-Signature": sent}
    assert signing.verify([signing.secret_bytes(SECRET)], headers, BODY, NOW) == "msg_1"


def test_a_rotation_signs_with_both_secrets_and_either_verifies() -> None:
    old, new = signing.secret_bytes(SECRET), b"n" * 32
    headers = signing.sign([new, old], "msg_1", BODY, NOW)
    assert signing.verify([old], headers, BODY, NOW) == signing.verify([new], headers, BODY, NOW) == "msg_1"


@pytest.mark.parametrize("tamper, why", [
    (lambda h, b: (h | {"webhook-signature": "v1,AAAA"}, b), "no signature matches"),
    (lambda h, b: (h, b + b" "), "no signature matches"),
    (lambda h, b: (h | {"webhook-id": "msg_2"}, b), "no signature matches"),
    (lambda h, b: (h | {"webhook-timestamp": str(int(NOW) - 301)}, b), "away from now"),
    (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-id"}, b), "missing"),
    (lambda h, b: (h | {"webhook-timestamp": "soon"}, b), "epoch seconds"),
])
def test_a_tampered_replayed_or_incomplete_message_is_refused(tamper, why) -> None:
    secret = signing.secret_bytes(SECRET)
    headers, body = tamper(signing.sign([secret], "msg_1", BODY, NOW), BODY)
    with pytest.raises(signing.BadSignature, match=why):
        signing.verify([secret], headers, body, NOW)


def test_a_short_or_malformed_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        signing.secret_bytes("whsec_" + base64.b64encode(b"short").decode())
    with pytest.raises(ValueError, match="base64"):
        signing.secret_bytes("whsec_%%%")
