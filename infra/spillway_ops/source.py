"""Where the operator's view reads: one stack's resources, through AWS APIs only (read-only calls).

Offline that is the embedded stack's moto; on AWS, a deployed stack found by name with the operator's
own credentials (`spillway ops --stack NAME --region ...`). Nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import boto3

from spillway.budget import BudgetLedger
from spillway.fleet import Fleet
from spillway.jobs import JobStore
from spillway.waiting_room import WaitingRoom
from spillway_embedded.launcher import StackInfo


@dataclass
class Source:
    resources: dict[str, str]  # logical id -> physical id, as CloudFormation lists them
    region: str
    endpoint_url: str | None = None  # moto's, offline; None: AWS
    credentials: dict[str, str] = field(default_factory=dict)
    _clients: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def deployed(cls, stack_name: str, region: str) -> Source:
        """A stack deployed with `sam deploy`, read with the operator's credentials."""
        cloudformation = boto3.client("cloudformation", region_name=region)
        resources = {r["LogicalResourceId"]: r["PhysicalResourceId"]
                     for page in cloudformation.get_paginator("list_stack_resources").paginate(StackName=stack_name)
                     for r in page["StackResourceSummaries"]}
        return cls(resources, region)

    @classmethod
    def embedded(cls, stack_file: Path) -> Source:
        """The stack `spillway dev` runs, from the stack.json it writes."""
        info = StackInfo.read(stack_file)
        return cls(info.resources, info.region, info.aws_endpoint, OFFLINE_CREDENTIALS)

    def client(self, service: str) -> Any:
        if service not in self._clients:  # clients are thread-safe, and slow to make
            self._clients[service] = self._session.client(service, endpoint_url=self.endpoint_url)
        return self._clients[service]

    def table(self, logical_id: str) -> Any:
        return self._session.resource("dynamodb", endpoint_url=self.endpoint_url).Table(self.resources[logical_id])

    @cached_property
    def _session(self) -> boto3.Session:
        return boto3.Session(region_name=self.region, **self.credentials)

    @cached_property
    def jobs(self) -> JobStore:
        return JobStore(self.table("JobsTable"))

    @cached_property
    def fleet(self) -> Fleet:
        return Fleet(self.table("FleetTable"), self.table("TasksTable"), self.resources["JobsTable"],
                     WaitingRoom(self.table("WaitingRoomTable")), self.client("dynamodb"))

    @cached_property
    def budget(self) -> BudgetLedger:
        return BudgetLedger(self.table("BudgetTable"), self.client("dynamodb"))

    @property
    def state_machine_arn(self) -> str:
        return self.resources["DispatchStateMachine"]

    def execution_arn(self, job_id: str) -> str:
        """Each job's execution is named by its job id."""
        return self.state_machine_arn.replace(":stateMachine:", ":execution:") + f":{job_id}"


OFFLINE_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
