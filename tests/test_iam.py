"""Least privilege, held both ways: each role of the template may do exactly what its code needs.

`NEEDS` is what each function's code calls, by the objects `handlers/wiring.py` gives it: a grant
the table does not list (a new broad one, a leftover) fails, and so does a need the template does
not grant. A `*` resource or a wildcard action fails on its own. Resources are named by logical id
(`<JobsTable>`, `<ImagesBucket>/uploads/*`), so the table reads like the template.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

Grants = dict[str, set[str]]  # resource -> actions


def _merge(*parts: Grants) -> Grants:
    merged: Grants = {}
    for part in parts:
        for resource, actions in part.items():
            merged.setdefault(resource, set()).update(actions)
    return merged


def _ddb(*actions: str) -> set[str]:
    return {f"dynamodb:{a}" for a in actions}


STATE_MACHINE = "<DispatchStateMachine>"
RULES = "parameter<RoutingRulesParameter>"
UPLOADS, RESULTS = "<ImagesBucket>/uploads/*", "<ImagesBucket>/results/*"

# A task's life, for both dispatchers: its record, its job's attempt notes, its presigned input (the
# job's pinned copy) and result, its timers, its callback (never SendTaskHeartbeat: liveness is our
# own timers).
TASK = {
    "<TasksTable>": _ddb("GetItem", "PutItem", "UpdateItem"),
    "<TasksTable>/index/open-by-pool": _ddb("Query"),
    "<JobsTable>": _ddb("GetItem", "UpdateItem"),
    UPLOADS: {"s3:GetObjectVersion"},  # the upload's version the job pinned
    RESULTS: {"s3:PutObject"},
    "<TimersQueue>": {"sqs:SendMessage"},
    STATE_MACHINE: {"states:SendTaskSuccess", "states:SendTaskFailure"},
    "<WebhookQueue>": {"sqs:SendMessage"},  # endings.py: a task's end may end its job; its webhook is queued
}
# spillway.dispatch: the fleet (scan, heartbeats, leases), the waiting rooms, the control key (signs pushes, derives
# task ids and secrets) and the tunnel's headers for pushes.
POOL = {
    "<FleetTable>": _ddb("GetItem", "Scan", "UpdateItem"),
    "<WaitingRoomTable>": _ddb("GetItem", "Query", "PutItem", "DeleteItem"),
    "<ControlKeySecret>": {"secretsmanager:GetSecretValue"},
    "<AgentTunnelSecret>": {"secretsmanager:GetSecretValue"},
}
# spillway.faas: budget reservations (a transaction of Put and Update), the provider's and webhook keys, the rules.
FAAS = {
    "<BudgetTable>": _ddb("GetItem", "PutItem", "UpdateItem"),
    "<FaasApiKeySecret>": {"secretsmanager:GetSecretValue"},
    "<WebhookKeySecret>": {"secretsmanager:GetSecretValue"},
    RULES: {"ssm:GetParameter"},
}
# routing/router.py, for the Route step and admission: the job and its attempt opened, the fleet snapshot,
# the rooms' depth, the budget, the webhook of a job it ends.
ROUTING = {
    "<JobsTable>": _ddb("GetItem", "UpdateItem"),
    "<FleetTable>": _ddb("Scan"),
    "<WaitingRoomTable>": _ddb("Query"),
    "<BudgetTable>": _ddb("GetItem", "PutItem", "UpdateItem"),
    RULES: {"ssm:GetParameter"},
    "<WebhookQueue>": {"sqs:SendMessage"},  # endings.py: a job the policy ends
}
NEEDS: dict[str, Grants] = {
    "ApiFunction": _merge(TASK, POOL, FAAS, {  # cancel.py: a cancelled job's execution stopped, its task ended
        "execution:<DispatchStateMachine>:*": {"states:StopExecution"},
        # intake.py, jobs.py (create, view, cancel, delete when the intake send fails), Powertools idempotency
        "<JobsTable>": _ddb("GetItem", "PutItem", "DeleteItem", "UpdateItem", "BatchGetItem"),  # limits.py: BatchGet
        "<JobsTable>/index/by-tenant": _ddb("Query"),  # GET /v1/jobs
        "<TenantsTable>": _ddb("GetItem", "UpdateItem"),  # limits.py: the bucket and the slots
        "<IdempotencyTable>": _ddb("GetItem", "PutItem", "UpdateItem", "DeleteItem"),
        "<FleetTable>": _ddb("Scan", "GetItem", "UpdateItem"),  # and fleet_ops.py: operators' health changes
        "<TasksTable>/index/open-by-pool": _ddb("Query"),  # fleet_ops.py: each GPU's tasks
        "<ControlKeySecret>": {"secretsmanager:GetSecretValue"},  # fleet_ops.py: enroll, rotate
        UPLOADS: {"s3:PutObject", "s3:GetObject"},  # the presigned form POST; the upload read and judged
        RESULTS: {"s3:GetObject"},
        **{f"<Intake{p}Queue>": {"sqs:SendMessage"} for p in ("High", "Normal", "Low")},
        RULES: {"ssm:GetParameter"},  # FaaS segments and its GPU's memory: judged at submit
    }),
    "AgentCallbackFunction": _merge(TASK, POOL),
    "AdmitFunction": _merge(ROUTING, {  # the first attempt routed; a job that ends there, its slot given back
        STATE_MACHINE: {"states:StartExecution"},
        "<TenantsTable>": _ddb("UpdateItem"),  # through Reconciler.reconcile_id: no execution will end to do it
        "execution:<DispatchStateMachine>:*": {"states:DescribeExecution"},  # (its check of a job not final)
    }),
    "FaasWebhookFunction": _merge(TASK, FAAS),
    "PoolPollerFunction": _merge(TASK, POOL, FAAS),
    "TimerFunction": _merge(TASK, POOL, FAAS),
    "SweeperFunction": _merge(TASK, POOL, FAAS, ROUTING, {  # reconcile.py: open jobs, their executions, admission again
        "<JobsTable>/index/by-status": _ddb("Query"),
        "<TenantsTable>": _ddb("UpdateItem"),  # an ended job's slot given back
        STATE_MACHINE: {"states:StartExecution"},
        "execution:<DispatchStateMachine>:*": {"states:DescribeExecution"},
    }),
    "RouteFunction": ROUTING,
    "WebhookSenderFunction": {  # webhooks.py: the job's end, its delivery noted; the signing secret; the backoff
        "<JobsTable>": _ddb("GetItem", "UpdateItem"),
        "<WebhookSigningSecret>": {"secretsmanager:GetSecretValue"},
        "<WebhookQueue>": {"sqs:ChangeMessageVisibility"},
    },
    "DispatchStateMachine": {  # dispatch.asl.json: dynamodb:updateItem, sqs:sendMessage.waitForTaskToken, lambda:invoke
        "<JobsTable>": _ddb("UpdateItem"),
        **{f"<{p}Queue>": {"sqs:SendMessage"} for p in ("Local", "Cloud", "Faas")},
        "<RouteFunction>": {"lambda:InvokeFunction"},
    },
}
# The AWS managed policies SAM attaches, not narrowed yet (README, Least privilege): X-Ray's (it takes
# no resource), Lambda's logs, and for a function with an SQS event source receive and delete on `*`.
XRAY = "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess"
LOGS = "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
SQS_EVENTS = "arn:aws:iam::aws:policy/service-role/AWSLambdaSQSQueueExecutionRole"
SQS_TRIGGERED = {"AdmitFunction", "PoolPollerFunction", "TimerFunction", "WebhookSenderFunction"}


def _managed(owner: str) -> set[str]:
    if owner == "DispatchStateMachine":
        return {XRAY}
    return {XRAY, LOGS} | ({SQS_EVENTS} if owner in SQS_TRIGGERED else set())


def _name(expr: Any) -> str:
    """A resource expression -> its readable name: `!GetAtt JobsTable.Arn` -> `<JobsTable>`."""
    if isinstance(expr, str):
        expr = re.sub(r"^arn:\$\{AWS::Partition\}:[a-z0-9-]+:(\$\{AWS::Region\})?:(\$\{AWS::AccountId\})?:", "", expr)
        return re.sub(r"\$\{(\w+)(\.\w+)?\}", r"<\1>", expr)
    (kind, value), = expr.items()
    if kind == "Ref":
        return f"<{value}>"
    if kind == "Fn::GetAtt":
        return f"<{value[0] if isinstance(value, list) else value.split('.')[0]}>"
    if kind == "Fn::Sub" and isinstance(value, list):
        text, variables = value
        for key, sub in variables.items():
            text = text.replace(f"${{{key}}}", _name(sub))
        return _name(text)
    assert kind == "Fn::Sub", expr
    return _name(value)


def _statements(role: dict[str, Any], resources: dict[str, Any]) -> list[dict[str, Any]]:
    """The role's inline statements and those of the template's own managed policies it names."""
    props = role["Properties"]
    statements = [s for policy in props.get("Policies", []) for s in policy["PolicyDocument"]["Statement"]]
    for arn in props.get("ManagedPolicyArns", []):
        if isinstance(arn, dict):
            statements += resources[arn["Ref"]]["Properties"]["PolicyDocument"]["Statement"]
    return statements


def _granted(role: dict[str, Any], resources: dict[str, Any]) -> Grants:
    granted: Grants = {}
    for statement in _statements(role, resources):
        assert statement["Effect"] == "Allow" and "NotAction" not in statement and "NotResource" not in statement
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        targets = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for action in actions:
            assert "*" not in action, f"a wildcard action: {action}"
            for target in targets:
                assert target != "*", f"{action} on every resource"
                granted.setdefault(_name(target), set()).add(action)
    return granted


def _roles(translated: dict[str, Any]) -> dict[str, dict[str, Any]]:
    resources = translated["Resources"]
    return {name.removesuffix("Role"): r for name, r in resources.items() if r["Type"] == "AWS::IAM::Role"}


def test_every_role_is_in_the_needs_table(translated: dict[str, Any]) -> None:
    assert set(_roles(translated)) == set(NEEDS)


@pytest.mark.parametrize("owner", sorted(NEEDS))
def test_each_role_grants_exactly_what_its_code_needs(translated: dict[str, Any], owner: str) -> None:
    needs, role = NEEDS[owner], _roles(translated)[owner]
    aws_managed = {arn for arn in role["Properties"].get("ManagedPolicyArns", []) if isinstance(arn, str)}
    assert aws_managed == _managed(owner)
    granted = _granted(role, translated["Resources"])
    unused = {r: sorted(a - needs.get(r, set())) for r, a in granted.items() if a - needs.get(r, set())}
    missing = {r: sorted(a - granted.get(r, set())) for r, a in needs.items() if a - granted.get(r, set())}
    assert unused == {}, f"{owner} is granted what its code does not use"
    assert missing == {}, f"{owner}'s code needs what the template does not grant"


def test_the_policy_check_fails_on_a_broad_grant(translated: dict[str, Any]) -> None:
    role = {"Properties": {"Policies": [{"PolicyDocument": {"Statement": [
        {"Effect": "Allow", "Action": ["states:SendTaskSuccess"], "Resource": "*"}]}}]}}
    with pytest.raises(AssertionError, match="on every resource"):
        _granted(role, translated["Resources"])


def test_resource_names_read_like_the_template() -> None:
    assert _name({"Fn::GetAtt": ["JobsTable", "Arn"]}) == "<JobsTable>"
    assert _name({"Fn::Sub": "${ImagesBucket.Arn}/uploads/*"}) == UPLOADS
    assert _name({"Fn::Sub": ["arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:${q}",
                              {"q": {"Fn::GetAtt": ["TimersQueue", "QueueName"]}}]}) == "<TimersQueue>"
    parameter = "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${RoutingRulesParameter}"
    assert _name({"Fn::Sub": parameter}) == RULES
