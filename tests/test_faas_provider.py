"""The stand-in FaaS provider: RunPod serverless's async API over real HTTP, the agents' model, per-second billing.

Each test starts a provider in a thread (its HTTP server is real) with a 0.2 s cold start, and a
small HTTP store standing for S3's presigned URLs and for the webhook receiver. One test runs the
provider as the stack does, as its own process. Waits poll with a deadline; nothing sleeps hoping.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from werkzeug.test import Client

from spillway.rooms import render_room
from spillway_embedded.chaos import ChaosControl
from spillway_embedded.faas_provider import FaasProvider, FaasProviderProcess, ProviderConfig

KEY = "faas-key-for-tests-0123456789"
ENDPOINT = "spillway-test"
PRICE = 0.00076
TIMEOUT = httpx.Timeout(5.0, connect=2.0)
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


# ---------------------------------------------------------------- a store for presigned URLs, and webhooks


class Store:
    """GET/PUT /objects/<name> stand for presigned S3 URLs; POST /hooks/<name> for a webhook receiver,
    which answers the statuses queued in `hook_answers[name]` first, then 200."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.hooks: dict[str, list[dict[str, Any]]] = {}
        self.hook_answers: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        store = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                with store.lock:
                    found = store.objects.get(self.path.removeprefix("/objects/"))
                self._answer(200, found[0]) if found else self._answer(404, b"no such object")

            def do_PUT(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.startswith("/objects/forbidden"):
                    self._answer(403, b"signature does not match")
                    return
                with store.lock:
                    store.objects[self.path.removeprefix("/objects/")] = (body, self.headers.get("Content-Type", ""))
                self._answer(200, b"")

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                name = self.path.removeprefix("/hooks/")
                with store.lock:
                    store.hooks.setdefault(name, []).append(body)
                    answers = store.hook_answers.get(name)
                    status = answers.pop(0) if answers else 200
                self._answer(status, b"{}")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def put(self, name: str, data: bytes) -> str:
        with self.lock:
            self.objects[name] = (data, "image/png")
        return f"{self.url}/objects/{name}"

    def stored(self, name: str) -> tuple[bytes, str] | None:
        with self.lock:
            return self.objects.get(name)

    def hook_bodies(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.hooks.get(name, []))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def store() -> Iterator[Store]:
    store = Store()
    yield store
    store.stop()


# ---------------------------------------------------------------- a client of the provider, as the control plane is


class Endpoint:
    def __init__(self, base_url: str, key: str = KEY, endpoint_id: str = ENDPOINT):
        self.http = httpx.Client(base_url=base_url, timeout=TIMEOUT, headers={"Authorization": f"Bearer {key}"})
        self.prefix = f"/v2/{endpoint_id}"

    def post_run(self, body: Any) -> httpx.Response:
        return self.http.post(f"{self.prefix}/run", json=body)

    def run(self, task: dict[str, Any], webhook: str | None = None, **policy: int) -> str:
        body: dict[str, Any] = {"input": task}
        if webhook:
            body["webhook"] = webhook
        if policy:
            body["policy"] = policy
        answer = self.post_run(body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "IN_QUEUE"
        return answer.json()["id"]

    def status(self, job_id: str) -> dict[str, Any]:
        return self.http.get(f"{self.prefix}/status/{job_id}").raise_for_status().json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.http.post(f"{self.prefix}/cancel/{job_id}").raise_for_status().json()

    def health(self) -> dict[str, Any]:
        return self.http.get(f"{self.prefix}/health").raise_for_status().json()

    def billing(self) -> dict[str, Any]:
        return self.http.get(f"{self.prefix}/billing").raise_for_status().json()

    def chaos(self, mode: str, slow_seconds: float = 0.0) -> httpx.Response:
        return self.http.post("/chaos", json={"mode": mode, "slow_seconds": slow_seconds})

    def until(self, job_id: str, statuses: set[str], timeout: float = 15.0) -> dict[str, Any]:
        return until(lambda: (s := self.status(job_id))["status"] in statuses and s, timeout, f"{job_id} in {statuses}")

    def line(self, job_id: str) -> dict[str, Any]:
        return next(line for line in self.billing()["jobs"] if line["id"] == job_id)


def until(check: Callable[[], Any], timeout: float = 15.0, what: str = "the condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached in {timeout}s")


@pytest.fixture
def provider() -> Iterator[Callable[..., Endpoint]]:
    """Start a provider (0.2 s cold start, fast webhook retries) with any config overrides."""
    started: list[FaasProvider] = []

    def start(**overrides: Any) -> Endpoint:
        config = ProviderConfig(**{
            "endpoint_id": ENDPOINT, "api_key": KEY, "concurrency": 4, "cold_start_seconds": 0.2,
            "idle_seconds": 60.0, "price_per_second_usd": PRICE, "min_execution_timeout_ms": 100,
            "webhook_retry_seconds": 0.05, **overrides,
        })
        instance = FaasProvider(config)
        instance.start()
        started.append(instance)
        return Endpoint(instance.url)

    yield start
    for instance in started:
        instance.stop()


def room_task(store: Store, name: str, image: bytes | None = None, service: str = "remove_furniture") -> dict:
    return {"service": service, "input_url": store.put(f"{name}.in", image or render_room(7, 160, 120)),
            "output_url": f"{store.url}/objects/{name}.out", "task_id": f"t-{name}"}


# ---------------------------------------------------------------- the job's path


def test_a_job_runs_stores_its_result_calls_its_webhook_and_reports_completed(
        provider: Callable[..., Endpoint], store: Store) -> None:
    faas = provider()
    job_id = faas.run(room_task(store, "a"), webhook=f"{store.url}/hooks/a")
    done = faas.until(job_id, FINAL)
    assert done["status"] == "COMPLETED", done
    stored = store.stored("a.out")
    assert stored is not None and stored[1] == "image/png"
    assert done["output"] == {"result_bytes": len(stored[0])}
    result = cv2.imdecode(np.frombuffer(stored[0], np.uint8), cv2.IMREAD_COLOR)
    assert result is not None and result.shape == (120, 160, 3)  # the agents' model really ran
    assert done["delayTime"] >= 200 and done["executionTime"] >= 0 and done["workerId"].startswith(ENDPOINT)
    hooks = until(lambda: store.hook_bodies("a"), what="the webhook")
    assert hooks == [done], "the webhook carries the status body"
    assert faas.health()["jobs"] == {"completed": 1, "failed": 0, "inProgress": 0, "inQueue": 0, "retried": 0}


def test_at_most_concurrency_jobs_hold_workers_and_the_rest_wait_in_arrival_order(
        provider: Callable[..., Endpoint], store: Store) -> None:
    faas = provider(concurrency=3)
    assert faas.chaos("slow", 0.3).status_code == 200
    jobs = [faas.run(room_task(store, f"c{i}")) for i in range(8)]
    most_in_progress = 0

    def all_done() -> bool:
        nonlocal most_in_progress
        health = faas.health()  # one snapshot (the jobs' statuses one by one are not)
        most_in_progress = max(most_in_progress, health["jobs"]["inProgress"])
        assert health["workers"]["running"] + health["workers"]["initializing"] <= 3
        return health["jobs"]["inProgress"] + health["jobs"]["inQueue"] == 0

    until(all_done, timeout=30, what="every job answered")
    assert [faas.status(job_id)["status"] for job_id in jobs] == ["COMPLETED"] * 8
    assert 0 < most_in_progress <= 3
    lines = {line["id"]: line for line in faas.billing()["jobs"]}
    spans = [(lines[j]["startedAt"], lines[j]["endedAt"], lines[j]["workerId"]) for j in jobs]
    assert [start for start, _, _ in spans] == sorted(start for start, _, _ in spans), "taken in arrival order"
    assert len({worker for _, _, worker in spans}) <= 3
    for start, end, worker in spans:  # no worker ever held two jobs, and never more than 3 ran at once
        assert not any(w == worker and s < end and start < e for s, e, w in spans if (s, e, w) != (start, end, worker))
        assert sum(1 for s, e, _ in spans if s <= start < e) <= 3


def test_a_cold_worker_bills_its_start_then_stays_warm_until_idle_too_long(
        provider: Callable[..., Endpoint], store: Store) -> None:
    faas = provider(concurrency=2, idle_seconds=1.0)
    first = faas.until(faas.run(room_task(store, "w1")), FINAL)
    second = faas.until(faas.run(room_task(store, "w2")), FINAL)
    cold, warm = faas.line(first["id"]), faas.line(second["id"])
    assert cold["coldStart"] and cold["coldStartMs"] >= 200 and first["delayTime"] >= 200
    assert not warm["coldStart"] and warm["coldStartMs"] == 0 and second["delayTime"] < 200
    assert warm["workerId"] == cold["workerId"], "the warm worker takes the next job"
    for line in (cold, warm):
        assert line["billedSeconds"] == math.ceil((line["coldStartMs"] + line["executionMs"]) / 1000)
        assert line["costUsd"] == pytest.approx(line["billedSeconds"] * PRICE)
    billing = faas.billing()
    assert billing["billedSeconds"] == cold["billedSeconds"] + warm["billedSeconds"]
    assert billing["costUsd"] == pytest.approx(billing["billedSeconds"] * PRICE)
    assert faas.health()["workers"]["idle"] == 1
    time.sleep(1.2)  # past idle_seconds: the worker is scaled to zero
    again = faas.line(faas.until(faas.run(room_task(store, "w3")), FINAL)["id"])
    assert again["coldStart"] and again["coldStartMs"] >= 200


def test_cancel_ends_a_running_job_and_its_billing_and_drops_a_waiting_one(
        provider: Callable[..., Endpoint], store: Store) -> None:
    faas = provider(concurrency=1, cold_start_seconds=0.0)
    faas.chaos("slow", 30)
    running = faas.run(room_task(store, "x1"), webhook=f"{store.url}/hooks/x1")
    waiting = faas.run(room_task(store, "x2"))
    faas.until(running, {"IN_PROGRESS"})
    assert faas.status(waiting)["status"] == "IN_QUEUE"

    dropped = faas.cancel(waiting)
    assert dropped["status"] == "CANCELLED" and "workerId" not in dropped
    assert faas.status(running)["status"] == "IN_PROGRESS", "cancelling one job leaves the other"
    cancelled = faas.cancel(running)
    assert cancelled["status"] == "CANCELLED" and cancelled["executionTime"] < 30_000
    assert faas.status(running) == cancelled
    assert until(lambda: store.hook_bodies("x1"))[0]["status"] == "CANCELLED"
    billing = faas.billing()
    assert [line["id"] for line in billing["jobs"]] == [running], "a job cancelled while it waited costs nothing"
    assert billing["billedSeconds"] == faas.line(running)["billedSeconds"] == 1  # billed until the cancel, not 30 s
    assert store.stored("x1.out") is None, "a cancelled job never writes its result"
    assert faas.cancel(running)["status"] == "CANCELLED", "cancelling again changes nothing"
    assert faas.http.post(f"{faas.prefix}/cancel/no-such-job").status_code == 404


def test_execution_timeout_times_the_job_out_billed_up_to_the_bound(
        provider: Callable[..., Endpoint], store: Store) -> None:
    faas = provider(cold_start_seconds=0.0)
    faas.chaos("slow", 30)
    job_id = faas.run(room_task(store, "t"), webhook=f"{store.url}/hooks/t", executionTimeout=400)
    done = faas.until(job_id, FINAL)
    assert done["status"] == "TIMED_OUT" and done["executionTime"] == 400
    line = faas.line(job_id)
    assert line["executionMs"] == 400 and line["billedSeconds"] == 1
    assert until(lambda: store.hook_bodies("t"))[0]["status"] == "TIMED_OUT"
    assert store.stored("t.out") is None
    assert faas.health()["jobs"]["failed"] == 1
    too_short = faas.post_run({"input": room_task(store, "t2"), "policy": {"executionTimeout": 100}})
    assert too_short.status_code == 400 and "executionTimeout" in too_short.json()["error"]


def test_failures_are_named_by_kind(provider: Callable[..., Endpoint], store: Store) -> None:
    faas = provider()
    jobs = {
        "BadInput: the input (12 bytes) does not decode": faas.run(room_task(store, "f1", image=b"not an image")),
        "BadInput: the job's input: output_url": faas.run({**room_task(store, "f2"), "output_url": "s3://b/k"}),
        "BadInput: the job's input: service": faas.run(room_task(store, "f3", service="stage_room")),
        "InputUnavailable: could not fetch": faas.run({**room_task(store, "f4"),
                                                       "input_url": f"{store.url}/objects/missing"}),
        "OutputUpload: could not store": faas.run({**room_task(store, "f5"),
                                                   "output_url": f"{store.url}/objects/forbidden"}),
    }
    for prefix, job_id in jobs.items():
        done = faas.until(job_id, FINAL)
        assert done["status"] == "FAILED" and done["error"].startswith(prefix), done
        assert "output" not in done


# ---------------------------------------------------------------- the API's edges


def test_every_v2_route_needs_the_key(provider: Callable[..., Endpoint], store: Store) -> None:
    faas = provider()
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        answer = httpx.get(f"{faas.http.base_url}{faas.prefix}/health", headers=headers, timeout=TIMEOUT)
        assert answer.status_code == 401 and "API key" in answer.json()["error"]
        run = httpx.post(f"{faas.http.base_url}{faas.prefix}/run", json={"input": room_task(store, "k")},
                         headers=headers, timeout=TIMEOUT)
        assert run.status_code == 401
    bare = httpx.get(f"{faas.http.base_url}{faas.prefix}/health", headers={"Authorization": KEY}, timeout=TIMEOUT)
    assert bare.status_code == 200, "RunPod also takes the bare key"
    assert faas.health()["jobs"]["inQueue"] == 0, "nothing was queued without the key"
    assert faas.http.get("/v2/another-endpoint/health").status_code == 404


@pytest.mark.parametrize(("body", "reason"), [
    (b"{not json", "invalid request"),
    ({}, "input: Field required"),
    ({"input": ["a", "list"]}, "input: Input should be an object"),
    ({"input": {}, "webhook": "ftp://example.com/hook"}, "webhook"),
    ({"input": {}, "policy": {"executionTimeout": "soon"}}, "policy.executionTimeout"),
    ({"input": {}, "callback": "https://example.com"}, "callback: Extra inputs are not permitted"),
])
def test_a_bad_body_gets_400_with_the_reason(provider: Callable[..., Endpoint], body: Any, reason: str) -> None:
    faas = provider()
    answer = faas.http.post(f"{faas.prefix}/run", content=body if isinstance(body, bytes) else json.dumps(body))
    assert answer.status_code == 400 and reason in answer.json()["error"], answer.text
    assert faas.http.get(f"{faas.prefix}/status/unknown-id").status_code == 404


def test_chaos_makes_it_fail_refuse_and_slow(provider: Callable[..., Endpoint], store: Store) -> None:
    faas = provider(cold_start_seconds=0.0)
    assert faas.http.get("/chaos").json() == {"mode": "normal", "slow_seconds": 0.0}

    assert faas.chaos("fail").json()["mode"] == "fail"
    failed = faas.until(faas.run(room_task(store, "ch1")), FINAL)
    assert failed["status"] == "FAILED" and failed["error"] == "ModelError: injected"

    faas.chaos("refuse")
    refused = faas.post_run({"input": room_task(store, "ch2")})
    assert refused.status_code == 503 and "refuse" in refused.json()["error"]

    faas.chaos("slow", 0.5)
    slow = faas.until(faas.run(room_task(store, "ch3")), FINAL)
    assert slow["status"] == "COMPLETED" and slow["executionTime"] >= 500

    faas.chaos("normal")
    assert faas.until(faas.run(room_task(store, "ch4")), FINAL)["status"] == "COMPLETED"
    assert faas.http.post("/chaos", json={"mode": "explode"}).status_code == 400


def test_a_failing_webhook_is_retried_and_never_changes_the_job(
        provider: Callable[..., Endpoint], store: Store) -> None:
    faas = provider(cold_start_seconds=0.0)
    store.hook_answers["flaky"] = [500, 200]
    flaky = faas.until(faas.run(room_task(store, "h1"), webhook=f"{store.url}/hooks/flaky"), FINAL)
    bodies = until(lambda: len(store.hook_bodies("flaky")) >= 2 and store.hook_bodies("flaky"))
    assert bodies == [flaky, flaky], "tried again after the 500, and then no more"

    store.hook_answers["down"] = [503, 503, 503, 503]  # to every try
    down = faas.until(faas.run(room_task(store, "h2"), webhook=f"{store.url}/hooks/down"), FINAL)
    until(lambda: len(store.hook_bodies("down")) == 3, what="the first try and 2 retries")
    assert down["status"] == "COMPLETED" and faas.status(down["id"]) == down


def test_the_stacks_chaos_switchboard_forwards_to_the_provider(provider: Callable[..., Endpoint]) -> None:
    faas = provider()
    switchboard = Client(ChaosControl(dict, faas_url=lambda: str(faas.http.base_url).rstrip("/")))
    answer = switchboard.post("/faas", json={"mode": "slow", "slow_seconds": 2})
    assert answer.status_code == 200 and answer.json == {"mode": "slow", "slow_seconds": 2.0}
    assert faas.http.get("/chaos").json()["mode"] == "slow"
    assert switchboard.get("/faas").json["mode"] == "slow"
    assert switchboard.post("/faas", json={"mode": "nope"}).status_code == 400
    assert Client(ChaosControl(dict)).post("/faas", json={"mode": "fail"}).status_code == 404


def test_the_provider_runs_as_its_own_process(tmp_path: Path, store: Store) -> None:
    process = FaasProviderProcess(
        ProviderConfig(endpoint_id=ENDPOINT, api_key=KEY, concurrency=2, cold_start_seconds=0.0), tmp_path)
    process.start()
    try:
        faas = Endpoint(process.wait_ready(timeout=60))
        done = faas.until(faas.run(room_task(store, "p"), webhook=f"{store.url}/hooks/p"), FINAL)
        assert done["status"] == "COMPLETED" and store.stored("p.out") is not None
        assert until(lambda: store.hook_bodies("p")) == [done]
        assert faas.billing()["billedSeconds"] == 1
    finally:
        running = process.process
        process.stop()
    assert running is not None and running.poll() is not None
