"""What a job costs on AWS, counted on the embedded stack and priced with aws_prices.toml.

The counts come from real executions, never from a model of them:
- AWS calls by API, and DynamoDB request units estimated by item size (see `moto_server.dynamodb_units`), from
  moto's counter (`GET /_spillway/calls`, `/_spillway/capacity`): the handlers', the agents' presigned S3
  calls and the Step Functions interpreter's integrations alike;
- Lambda invocations and their seconds, API Gateway requests and the event source mappings' deliveries from the
  embedded runtime (`Runtime.usage`), the memory sizes from the template;
- state transitions from the execution's history (each state entered is one).

Offline, SQS long polls that come back empty run at the embedded runtime's pace (one poller per queue), not
Lambda's: they are left out of a job's count (`sqs.ReceiveMessage`); a receive that brought messages is
counted from the runtime's deliveries instead. Lambda seconds are this machine's, not Graviton's.
"""

from __future__ import annotations

import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from spillway_embedded.client import upload
from spillway_embedded.launcher import StackInfo

PRICES_FILE = Path(__file__).with_name("aws_prices.toml")
TIMEOUT = httpx.Timeout(10.0, connect=2.0)
EMPTY_POLLS = "sqs.ReceiveMessage"  # see the module's docstring
# `spillway dev` arguments for a stack whose job windows hold only the job's calls: no fleet heartbeats (an hour
# apart; the GPUs stay fresh for two); the job's timers fire soon (the shortest liveness window).
QUIET_STACK = ["--meter-capacity", "--agent-heartbeat-seconds", "3600", "--parameter", "AgentStaleSeconds=7200",
               "--parameter", "HeartbeatSeconds=5"]
# The happy path's job: EU (never FaaS), high priority (its wait bound, 5 s, keeps the window short).
EU_JOB = {"service": "remove_furniture", "priority": "high", "segment": {"region": "eu"}}
MONTH_SECONDS = 30 * 24 * 3600
ESM_POLLERS, LONG_POLL_SECONDS = 5, 20  # Lambda's SQS event source mapping: 5 pollers at least, 20 s long polls
S3_WRITES = frozenset({"s3.PUT", "s3.POST", "s3.COPY", "s3.ListObjects", "s3.ListObjectsV2"})


def load_prices(path: Path = PRICES_FILE) -> dict[str, dict[str, float]]:
    return tomllib.loads(path.read_text())


@dataclass
class Usage:
    """AWS usage over a stretch of time: a job, a path's average, or an idle minute."""

    calls: Counter[str] = field(default_factory=Counter)  # billed AWS calls by API (empty polls left out)
    capacity: Counter[str] = field(default_factory=Counter)  # DynamoDB request units by API
    invocations: Counter[str] = field(default_factory=Counter)  # by function
    gb_seconds: Counter[str] = field(default_factory=Counter)  # by function
    api_requests: int = 0
    sqs_deliveries: int = 0
    transitions: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.calls + other.calls, self.capacity + other.capacity, self.invocations + other.invocations,
                     self.gb_seconds + other.gb_seconds, self.api_requests + other.api_requests,
                     self.sqs_deliveries + other.sqs_deliveries, self.transitions + other.transitions)

    def scaled(self, factor: float) -> Usage:
        def times(counter: Counter[str]) -> Counter[str]:
            return Counter({key: value * factor for key, value in counter.items()})

        return Usage(times(self.calls), times(self.capacity), times(self.invocations), times(self.gb_seconds),
                     self.api_requests * factor, self.sqs_deliveries * factor, self.transitions * factor)

    def service_counts(self) -> dict[str, float]:
        """What each service bills by: the figures the price table multiplies."""
        dynamodb_writes = sum(units for api, units in self.capacity.items() if _is_write(api))
        return {
            "state transitions": self.transitions,
            "lambda invocations": sum(self.invocations.values()),
            "lambda GB-s": sum(self.gb_seconds.values()),
            "SQS requests": self._calls_of("sqs") + self.sqs_deliveries,
            "DynamoDB write units": dynamodb_writes,
            "DynamoDB read units": sum(self.capacity.values()) - dynamodb_writes,
            "API Gateway requests": self.api_requests,
            "S3 write requests": sum(n for api, n in self.calls.items() if api in S3_WRITES),
            "S3 read requests": self._calls_of("s3") - sum(n for api, n in self.calls.items() if api in S3_WRITES),
            "Secrets Manager calls": self._calls_of("secretsmanager"),
        }

    def _calls_of(self, service: str) -> float:
        return sum(n for api, n in self.calls.items() if api.startswith(f"{service}."))


def _is_write(api: str) -> bool:
    return api.rpartition(".")[2] in ("PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem")


def dollars(usage: Usage, prices: dict[str, dict[str, float]]) -> dict[str, float]:
    """$ by service for this usage (no monthly fixed costs: see `fixed_monthly`)."""
    counts = usage.service_counts()
    return {
        "Step Functions": counts["state transitions"] * prices["step_functions"]["per_transition"],
        "Lambda": counts["lambda invocations"] * prices["lambda"]["per_request"]
        + counts["lambda GB-s"] * prices["lambda"]["per_gb_second"],
        "SQS": counts["SQS requests"] * prices["sqs"]["per_request"],
        "DynamoDB": counts["DynamoDB write units"] * prices["dynamodb"]["per_write_unit"]
        + counts["DynamoDB read units"] * prices["dynamodb"]["per_read_unit"],
        "API Gateway": counts["API Gateway requests"] * prices["api_gateway"]["per_request"],
        "S3": counts["S3 write requests"] * prices["s3"]["per_write_request"]
        + counts["S3 read requests"] * prices["s3"]["per_read_request"],
        "Secrets Manager": counts["Secrets Manager calls"] * prices["secrets_manager"]["per_call"],
    }


def fixed_monthly(template: dict[str, Any], prices: dict[str, dict[str, float]]) -> dict[str, float]:
    """What the template's resources cost a month whether jobs run or not: alarms, dashboards, secrets, and the
    event source mappings' long polls."""
    kinds = Counter(resource["Type"] for resource in template["Resources"].values())
    mappings = sum(event["Type"] == "SQS" for resource in template["Resources"].values()
                   for event in resource.get("Properties", {}).get("Events", {}).values())
    return {
        # Estimated, not counted: offline one poller per queue polls; Lambda keeps ESM_POLLERS long polls of
        # LONG_POLL_SECONDS open on each mapping's queue, each an SQS request, whether messages come or not.
        "SQS long polls (estimate)": mappings * ESM_POLLERS * MONTH_SECONDS / LONG_POLL_SECONDS
        * prices["sqs"]["per_request"],
        "CloudWatch alarms": kinds["AWS::CloudWatch::Alarm"] * prices["cloudwatch"]["per_alarm_month"],
        "CloudWatch dashboard": kinds["AWS::CloudWatch::Dashboard"] * prices["cloudwatch"]["per_dashboard_month"],
        "Secrets Manager secrets": kinds["AWS::SecretsManager::Secret"] * prices["secrets_manager"]["per_secret_month"],
    }


# ---------------------------------------------------------------- counting on a running embedded stack


@dataclass(frozen=True)
class Snapshot:
    calls: dict[str, int]
    capacity: dict[str, float]
    runtime: dict[str, Any]


def snapshot(info: StackInfo) -> Snapshot:
    """The runtime's counters and moto's, now (the runtime's first: what it has served, moto has counted)."""
    runtime = httpx.get(f"{info.lambda_url}/_spillway/usage", timeout=TIMEOUT).raise_for_status().json()
    calls = httpx.get(f"{info.aws_endpoint}/_spillway/calls", timeout=TIMEOUT).raise_for_status().json()
    capacity = httpx.get(f"{info.aws_endpoint}/_spillway/capacity", timeout=TIMEOUT).raise_for_status().json()
    return Snapshot({api: int(n) for api, (n, _) in calls.items()}, capacity, runtime)


def between(before: Snapshot, after: Snapshot, transitions: int = 0, observer_calls: Counter[str] | None = None
            ) -> Usage:
    """The usage from `before` to `after`, less the calls an observer made itself (waiting for an execution)."""
    calls = Counter(after.calls)
    calls.subtract(before.calls)
    calls.subtract(observer_calls or Counter())
    calls.pop(EMPTY_POLLS, None)
    capacity = Counter(after.capacity)
    capacity.subtract(before.capacity)
    invocations: Counter[str] = Counter()
    gb_seconds: Counter[str] = Counter()
    for name, now in after.runtime["lambda"].items():
        then = before.runtime["lambda"][name]
        invocations[name] = now["invocations"] - then["invocations"]
        gb_seconds[name] = (now["seconds"] - then["seconds"]) * now["memory_mb"] / 1024
    return Usage(+calls, +capacity, +invocations, +gb_seconds,
                 after.runtime["api_requests"] - before.runtime["api_requests"],
                 after.runtime["sqs_deliveries"] - before.runtime["sqs_deliveries"], transitions)


def state_transitions(sfn: Any, execution_arn: str) -> int:
    """Step Functions bills a transition for each state entered (retries included)."""
    events, token = 0, None
    while True:
        page = sfn.get_execution_history(executionArn=execution_arn, maxResults=1000,
                                         **({"nextToken": token} if token else {}))
        events += sum(event["type"].endswith("StateEntered") for event in page["events"])
        token = page.get("nextToken")
        if not token:
            return events


def execution_arn(info: StackInfo, job_id: str) -> str:
    """The dispatch execution is named by the job's id."""
    return f"{info.resources['DispatchStateMachine'].replace(':stateMachine:', ':execution:')}:{job_id}"


def wait_for_execution(sfn: Any, arn: str, timeout: float = 120.0) -> Counter[str]:
    """Wait for the execution to end, through DescribeExecution; the calls it made (to leave out of the job's)."""
    calls: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        calls["states.DescribeExecution"] += 1
        try:
            if sfn.describe_execution(executionArn=arn)["status"] != "RUNNING":
                return calls
        except sfn.exceptions.ExecutionDoesNotExist:
            pass  # not admitted yet
        time.sleep(0.05)
    raise TimeoutError(f"{arn} still running after {timeout:.0f}s")


def wait_for_timers(info: StackInfo, timeout: float = 120.0) -> Counter[str]:
    """Wait until every timer on the timers queue has fired and been handled; the calls it made."""
    sqs = info.boto3_client("sqs")
    names = [f"ApproximateNumberOfMessages{kind}" for kind in ("", "Delayed", "NotVisible")]
    calls: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        calls["sqs.GetQueueAttributes"] += 1
        counts = sqs.get_queue_attributes(QueueUrl=info.resources["TimersQueue"], AttributeNames=names)["Attributes"]
        if not any(int(counts[name]) for name in names):
            return calls
        time.sleep(0.2)
    raise TimeoutError(f"timers still pending after {timeout:.0f}s")


def measure_job(info: StackInfo, body: dict[str, Any], image: bytes, tries: int = 3) -> tuple[Usage, dict[str, Any]]:
    """One job as a client runs it — an upload, the submit, one status read, the result fetched — and its usage,
    with its view (`GET /v1/jobs/{id}`), until the timers it set have fired: a stack whose HeartbeatSeconds and
    priority's wait bound are short keeps the window short. The sweep (every minute) is not a job's: a job whose
    window held one is run again. Run jobs one at a time: the window is the stack's, not the job's."""
    sfn = info.boto3_client("stepfunctions")
    for _ in range(tries):
        before = snapshot(info)
        with info.api_client(TIMEOUT) as api:
            key = upload(api, image)
            job_id = api.post("/v1/jobs", json=body | {"input_key": key}).raise_for_status().json()["job_id"]
            observer = wait_for_execution(sfn, execution_arn(info, job_id))
            view = api.get(f"/v1/jobs/{job_id}").raise_for_status().json()
            if view.get("result_url"):
                httpx.get(view["result_url"], timeout=TIMEOUT).raise_for_status()
        observer += wait_for_timers(info)
        after = snapshot(info)
        if _sweeps(after) == _sweeps(before):
            return between(before, after, state_transitions(sfn, execution_arn(info, job_id)), observer), view
    raise RuntimeError(f"a sweep fell in each of {tries} jobs' windows")


def _sweeps(snap: Snapshot) -> int:
    return snap.runtime["lambda"]["SweeperFunction"]["invocations"]
