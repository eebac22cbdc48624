"""Shared fixtures: the template's resources, provisioned into moto's in-process `mock_aws`."""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from spillway import aws, metrics
from spillway import settings as settings_module
from spillway.models import JobStatus
from spillway.settings import Settings, settings
from spillway_embedded import moto_patches
from spillway_embedded.provision import Stack

# The embedded stack's moto runs patched (serialized DynamoDB writes, item-level transaction rollback,
# cached state machine programs); the in-process mock_aws tests run on the same moto.
moto_patches.apply()

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "template.yaml"
REGION = "us-east-1"


def _import_time_environment() -> None:
    """What Lambda sets before a handler's module is imported: the template's literal global variables
    (Powertools reads POWERTOOLS_SERVICE_NAME when a module builds its Logger). Without it, the first
    test module to import a handler outside the `cloud` fixture fixed its service as 'service_undefined'
    for the rest of the run."""
    from spillway_embedded.template import load

    variables = load(TEMPLATE)["Globals"]["Function"]["Environment"]["Variables"]
    for name, value in variables.items():
        if isinstance(value, str):
            os.environ.setdefault(name, value)


_import_time_environment()


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never reach a real account from a test, whatever the developer's shell has."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")


@dataclass
class Cloud:
    """The template's resources in mock_aws, and the environment its functions see."""

    settings: Settings
    physical: dict[str, str]
    stack: Stack

    def client(self, service: str) -> Any:
        return boto3.client(service, region_name=REGION)

    def job_item(self, job_id: str) -> dict[str, Any] | None:
        return aws.table(self.settings.jobs_table).get_item(Key={"job_id": job_id}).get("Item")

    def queue_messages(self, logical_id: str) -> list[dict[str, Any]]:
        sqs = self.client("sqs")
        messages = sqs.receive_message(QueueUrl=self.physical[logical_id], MaxNumberOfMessages=10).get("Messages", [])
        return [json.loads(m["Body"]) for m in messages]

    def wait_for_execution(self, job_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """Bounded wait for the job's dispatch execution to finish (moto runs it on a thread)."""
        sfn = self.client("stepfunctions")
        arn = self.settings.dispatch_state_machine_arn.replace(":stateMachine:", ":execution:") + f":{job_id}"
        deadline = time.monotonic() + timeout
        while True:
            execution = sfn.describe_execution(executionArn=arn)
            if execution["status"] != "RUNNING" or time.monotonic() > deadline:
                return execution
            time.sleep(0.05)


def clear_caches() -> None:
    """Forget clients, settings and parameters read for another test's resources (handlers cache them per
    container)."""
    from aws_lambda_powertools.utilities import parameters

    parameters.clear_caches()
    for module in (aws, settings_module, *(importlib.import_module(f"spillway.handlers.{h}") for h in HANDLERS)):
        for value in vars(module).values():
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()


HANDLERS = ("wiring", "admit", "api", "fleet_routes", "callback", "poller", "timers", "sweeper", "route")


@pytest.fixture(scope="session")
def translated() -> dict[str, Any]:
    """template.yaml as CloudFormation, translated once per run (HeartbeatSeconds=5 keeps timeouts short)."""
    from spillway_embedded.template import translate

    return translate(TEMPLATE, {"HeartbeatSeconds": "5", "AllowLoopbackWebhooks": "true"})


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch, translated: dict[str, Any]) -> Iterator[Cloud]:
    from spillway_embedded.provision import provision

    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        stack = provision(copy.deepcopy(translated), endpoint_url=None, region=REGION, stack_name="test")
        for name, value in stack.environment().items():
            monkeypatch.setenv(name, value)
        clear_caches()
        with lambda_api(stack) as endpoint:  # the state machine's `lambda:invoke` Tasks run the real handlers
            monkeypatch.setenv(moto_patches.LAMBDA_ENDPOINT_VARIABLE, endpoint)
            yield Cloud(settings=settings(), physical=dict(stack.physical_ids), stack=stack)
    clear_caches()


@pytest.fixture
def finished(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, JobStatus]]:
    """Every job end counted (`metrics.job_finished`), as (job id, status), in order."""
    counted: list[tuple[str, JobStatus]] = []
    monkeypatch.setattr(metrics, "job_finished", lambda job, status, now: counted.append((job.job_id, status)))
    return counted


@contextlib.contextmanager
def lambda_api(stack: Stack) -> Iterator[str]:
    """Lambda's Invoke API for the stack's functions, on a loopback port, as the embedded runtime serves it."""
    from spillway_embedded.runtime import Invoker, serve_lambda_api

    server = serve_lambda_api({name: Invoker(f, REGION, stack.account_id) for name, f in stack.functions.items()})
    thread = threading.Thread(target=server.serve_forever, name="lambda-api", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def shared_stack(translated: dict[str, Any]) -> Iterator[Cloud]:
    """The template's resources provisioned once for a whole test module (`cloud` provisions them for
    every test, 1-5 s each): for modules whose tests start from `shared_cloud`."""
    from helpers import module_stack

    yield from module_stack(translated)


@pytest.fixture
def shared_cloud(shared_stack: Cloud) -> Cloud:
    """The module's shared stack, emptied of what an earlier test left."""
    from helpers import emptied

    return emptied(shared_stack)



@pytest.fixture(scope="module")
def api(stack: Any) -> Iterator[Any]:
    """The job API of the module's running embedded stack (its `stack` fixture, a StackInfo), as its default
    tenant."""
    import httpx

    with stack.api_client(httpx.Timeout(10.0, connect=2.0)) as client:
        yield client


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Embedded-stack modules first, the timed ones first of all (a stable sort: files keep their order): see
    pytest_xdist_make_scheduler."""
    items.sort(key=lambda item: (item.get_closest_marker("embedded") is None, item.get_closest_marker("timed") is None))


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """How `make test`'s two workers share the suite. A file runs whole on one worker (its module-scoped fixtures set
    up once). The first worker, the stack worker, runs the files with embedded-stack tests one after another, the
    timed ones first; the other runs the CPU-bound rest beside it (a stack mostly waits on real clocks). Once the
    rest is done, the other worker takes untimed embedded files from the back of the queue, but only once no timed
    file is left or running: two stacks at once on two cores slow each other, which a test that times a real window
    (a stale window, a spill bound, a latency) would feel; the others only take longer. When the embedded files are
    all taken, the stack worker takes from the rest. (xdist's own `loadgroup` cannot do this under pytest 9: the
    group it appends to a node id is lost.)"""
    from xdist.scheduler import LoadScopeScheduling

    here = Path(__file__).parent
    marked = {f"{here.name}/{path.name}": path.read_text() for path in here.glob("test_*.py")}
    embedded = {path for path, text in marked.items() if "mark.embedded" in text}
    timed = {path for path in embedded if "mark.timed" in marked[path]}

    class StackWorker(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return nodeid.split("::")[0]

        def _assign_work_unit(self, node: Any) -> None:
            stack_worker, queued = self.nodes[0], list(self.workqueue)
            if node is stack_worker:  # the first file of the most wanted kind: timed, embedded, the rest
                chosen = min(queued, key=lambda f: (f not in embedded, f not in timed))
            else:
                running = [f for f, done in self.assigned_work[stack_worker].items() if not all(done.values())]
                may_share = not timed & {*queued, *running}
                untimed = [f for f in queued if f in embedded and f not in timed and may_share]
                chosen = next((f for f in queued if f not in embedded), untimed[-1] if untimed else None)
                if chosen is None:
                    return  # idle until the stack worker's timed files are over (see mark_test_complete)
            self.workqueue.move_to_end(chosen, last=False)
            super()._assign_work_unit(node)

        def mark_test_complete(self, node: Any, item_index: int, duration: float = 0) -> None:
            super().mark_test_complete(node, item_index, duration)
            for other in self.nodes:  # an idle worker may take a file now
                if other is not node:
                    self._reschedule(other)

    return StackWorker(config, log)
