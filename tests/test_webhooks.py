"""Completion webhooks: where a webhook_url may point, what the sender signs and sends, when it retries."""

from __future__ import annotations

import base64
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from spillway import aws, signing, webhooks
from spillway.jobs import JobStore
from spillway.models import JobStatus
from spillway.webhooks import DeliveryFailed, NotYet, WebhookSender

from conftest import Cloud
from helpers import LambdaContext, http_event, job_id_for, running_job

SECRET = base64.b64encode(b"s" * 32).decode()
NOW = 1_790_000_000.0


@pytest.mark.parametrize("url, why", [
    ("http://hooks.example.com/x", "must be https"),
    ("https://10.1.2.3/x", "public address"),
    ("https://169.254.169.254/latest/meta-data", "public address"),
    ("https://[fd00::1]/x", "public address"),
    ("ftp://hooks.example.com/x", "URL scheme"),
])
def test_a_webhook_url_must_be_public_https(url: str, why: str) -> None:
    assert why in (webhooks.refusal(url, allow_loopback=True) or "")


def test_loopback_is_for_the_embedded_stack_only() -> None:
    assert webhooks.refusal("http://127.0.0.1:8000/hook", allow_loopback=True) is None
    assert "loopback" in (webhooks.refusal("http://127.0.0.1:9001/2018-06-01/runtime", allow_loopback=False) or "")
    assert "loopback" in (webhooks.refusal("https://localhost/hook", allow_loopback=False) or "")
    assert webhooks.refusal("https://hooks.example.com/spillway", allow_loopback=False) is None


def test_submit_refuses_a_bad_webhook_url_with_a_reason(cloud: Cloud) -> None:
    from spillway.handlers import api

    body = {"service": "upscale_2x", "input_key": "uploads/" + "a" * 32 + ".png",
            "webhook_url": "http://hooks.example.com/x"}
    response = api.handler(http_event("POST", "/v1/jobs", body), LambdaContext("ApiFunction"))
    assert response["statusCode"] == 422 and "https" in json.loads(response["body"])["message"]


class Receiver:
    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.answers.pop(0) if self.answers else 204)


PUBLIC = "93.184.215.14"


class Dns:
    """An injected resolver: each name's addresses, which a test may re-point (DNS rebinding)."""

    def __init__(self, names: dict[str, list[str]] | None = None) -> None:
        self.names = names or {}
        self.asked: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        if host not in self.names:
            raise OSError(f"[Errno -2] Name or service not known: {host}")
        return self.names[host]


def sender(cloud: Cloud, receiver: Receiver, dns: Dns | None = None, allow_loopback: bool = False,
           http: httpx.Client | None = None) -> tuple[WebhookSender, JobStore]:
    jobs = JobStore(aws.table(cloud.settings.jobs_table))
    http = http or httpx.Client(transport=httpx.MockTransport(receiver))
    return WebhookSender(jobs, http, lambda: [signing.secret_bytes(SECRET)], allow_loopback=allow_loopback,
                         clock=lambda: NOW, resolve=dns or Dns({"hooks.example.com": [PUBLIC]})), jobs


def ended_job(cloud: Cloud, jobs: JobStore, status: JobStatus | None, url: str = "https://hooks.example.com/s",
              n: int = 7) -> str:
    job_id = job_id_for(n)
    running_job(cloud.settings, job_id)
    aws.table(cloud.settings.jobs_table).update_item(
        Key={"job_id": job_id}, UpdateExpression="SET webhook_url = :u, attempts[0].started_at = :t",
        ExpressionAttributeValues={":u": url, ":t": "2026-11-26T11:59:00+00:00"})
    if status is not None:
        jobs.close(job_id, status, "2026-11-26T12:00:00.000+00:00", error="Spillway.ModelError: it broke")
    return job_id


def test_an_ended_job_is_told_once_signed_and_its_delivery_noted(cloud: Cloud) -> None:
    receiver = Receiver([204])
    send, jobs = sender(cloud, receiver)
    job_id = ended_job(cloud, jobs, JobStatus.FAILED)
    assert send.deliver(job_id) == "delivered"
    (request,) = receiver.requests
    # Sent to the address checked, the name in Host and in TLS's SNI (the certificate is verified for it).
    assert str(request.url) == f"https://{PUBLIC}/s"
    assert request.headers["Host"] == "hooks.example.com"
    assert request.extensions["sni_hostname"] == "hooks.example.com"
    assert signing.verify([signing.secret_bytes(SECRET)], request.headers, request.content, NOW) \
        == f"msg_{job_id}_failed"
    event = json.loads(request.content)
    assert event["type"] == "job.failed" and event["timestamp"] == "2026-11-26T12:00:00.000+00:00"
    assert event["data"] | {"cost_usd": 0} == {"job_id": job_id, "status": "FAILED", "service": "remove_furniture",
                                               "finished_at": "2026-11-26T12:00:00.000+00:00", "cost_usd": 0,
                                               "error": "Spillway.ModelError: it broke"}
    assert jobs.get(job_id).webhook_delivered_at
    assert send.deliver(job_id) == "over" and len(receiver.requests) == 1


def test_a_job_not_ended_yet_or_a_refusing_receiver_is_retried_and_nothing_is_noted(cloud: Cloud) -> None:
    receiver = Receiver([500, 302])
    send, jobs = sender(cloud, receiver)
    job_id = ended_job(cloud, jobs, None)
    with pytest.raises(NotYet):
        send.deliver(job_id)
    assert receiver.requests == []
    jobs.close(job_id, JobStatus.SUCCEEDED, "2026-11-26T12:00:00.000+00:00")
    with pytest.raises(DeliveryFailed, match="500"):
        send.deliver(job_id)
    with pytest.raises(DeliveryFailed, match="302"):  # a redirect is not followed: the event goes where it was sent
        send.deliver(job_id)
    assert jobs.get(job_id).webhook_delivered_at is None
    assert send.deliver(job_id) == "delivered"
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert ids == {f"msg_{job_id}_succeeded"}, "every retry is the same event"


def test_a_webhook_url_the_sender_may_not_call_is_refused_with_its_reason(cloud: Cloud) -> None:
    receiver = Receiver([])
    send, jobs = sender(cloud, receiver)
    job_id = ended_job(cloud, jobs, JobStatus.CANCELLED, url="http://127.0.0.1:9001/runtime")
    assert send.deliver(job_id) == "refused" and receiver.requests == []
    assert "loopback" in (jobs.get(job_id).webhook_error or "")


@pytest.mark.parametrize("address", ["169.254.169.254", "10.0.0.7", "127.0.0.1", "192.168.1.2", "100.64.0.1",
                                     "fd00::1", "::ffff:10.0.0.7"])
def test_a_name_that_resolves_inside_a_network_is_refused_once_with_its_reason(cloud: Cloud, address: str) -> None:
    receiver = Receiver([])
    dns = Dns({"hooks.example.com": [PUBLIC, address]})  # one address inside is enough: any may be the one connected
    send, jobs = sender(cloud, receiver, dns)
    job_id = ended_job(cloud, jobs, JobStatus.SUCCEEDED)
    assert send.deliver(job_id) == "refused" and receiver.requests == []
    assert jobs.get(job_id).webhook_error == f"a webhook_url must reach a public address: hooks.example.com " \
                                             f"resolves to {address}"
    assert jobs.get(job_id).view().webhook_error, "the job's owner sees why"
    assert send.deliver(job_id) == "over" and dns.asked == [("hooks.example.com", 443)], "no retry storm"


def test_a_name_re_pointed_after_a_delivery_cannot_move_it_and_is_refused_next_time(cloud: Cloud) -> None:
    receiver = Receiver([500, 204])
    dns = Dns({"hooks.example.com": [PUBLIC]})
    send, jobs = sender(cloud, receiver, dns)
    job_id = ended_job(cloud, jobs, JobStatus.SUCCEEDED)
    with pytest.raises(DeliveryFailed, match="500"):
        send.deliver(job_id)
    dns.names["hooks.example.com"] = ["169.254.169.254"]  # rebinding, between two tries
    assert send.deliver(job_id) == "refused"
    assert [str(r.url) for r in receiver.requests] == [f"https://{PUBLIC}/s"]


def test_a_name_that_does_not_resolve_is_tried_again_later(cloud: Cloud) -> None:
    send, jobs = sender(cloud, Receiver([]), Dns())
    job_id = ended_job(cloud, jobs, JobStatus.SUCCEEDED)
    with pytest.raises(DeliveryFailed, match="not known"):
        send.deliver(job_id)
    assert jobs.get(job_id).webhook_error is None


def test_loopback_names_are_allowed_offline_only(cloud: Cloud) -> None:
    receiver = Receiver([204])
    dns = Dns({"localhost": ["127.0.0.1", "::1"], "hooks.example.com": ["127.0.0.1"]})
    offline, jobs = sender(cloud, receiver, dns, allow_loopback=True)
    job_id = ended_job(cloud, jobs, JobStatus.SUCCEEDED, url="http://localhost:8123/hook")
    assert offline.deliver(job_id) == "delivered"
    assert str(receiver.requests[0].url) == "http://127.0.0.1:8123/hook"
    assert receiver.requests[0].headers["Host"] == "localhost:8123"
    on_aws, _ = sender(cloud, receiver, dns, allow_loopback=False)
    job_id = ended_job(cloud, jobs, JobStatus.SUCCEEDED, url="https://hooks.example.com/s")
    assert on_aws.deliver(job_id) == "refused" and len(receiver.requests) == 1


def test_tls_is_verified_for_the_name_on_the_address_checked(cloud: Cloud, tmp_path: Path) -> None:
    """A real TLS receiver whose certificate names only hooks.example.test, reached at 127.0.0.1: the handshake
    passes only if the name goes in the SNI and the certificate check, and the address is the one resolved."""
    context, trust = tls_for("hooks.example.test", tmp_path)
    with https_receiver(context) as port:
        dns = Dns({"hooks.example.test": ["127.0.0.1"], "127.0.0.1": ["127.0.0.1"]})
        send, jobs = sender(cloud, Receiver([]), dns, allow_loopback=True,
                            http=httpx.Client(verify=trust))
        job_id = ended_job(cloud, jobs, JobStatus.SUCCEEDED, url=f"https://hooks.example.test:{port}/s")
        assert send.deliver(job_id) == "delivered"
        assert dns.asked == [("hooks.example.test", port)]
        other = ended_job(cloud, jobs, JobStatus.SUCCEEDED, url=f"https://127.0.0.1:{port}/s", n=8)
        with pytest.raises(DeliveryFailed, match="CERTIFICATE_VERIFY_FAILED"):
            # The same server by its address alone: the certificate does not name it, and the connection the
            # first delivery verified for the name is not reused for it.
            send.deliver(other)


def tls_for(name: str, folder: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for `name`: the server's context and a client context trusting it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    return server, ssl.create_default_context(cafile=str(cert_file))


@contextmanager
def https_receiver(context: ssl.SSLContext) -> Iterator[int]:
    """An HTTPS server on 127.0.0.1 answering 204 to every POST; yields its port."""
    class Hook(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keeps connections open, as most receivers do

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_retries_back_off_from_two_seconds_to_a_quarter_hour() -> None:
    assert [webhooks.retry_delay(n) for n in range(1, 12)] == [2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900]


def test_the_system_resolver_answers_each_address_once_in_its_order() -> None:
    assert webhooks.resolve("127.0.0.1", 443) == ["127.0.0.1"]
    assert "127.0.0.1" in webhooks.resolve("localhost", 443)


def test_the_stacks_sender_takes_no_proxy_from_the_environment(cloud: Cloud) -> None:
    from spillway.handlers.wiring import webhook_sender

    assert webhook_sender()._http.trust_env is False, "a proxy would resolve the name past the address check"
