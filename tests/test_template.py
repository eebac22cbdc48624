"""The template is the single source of truth: it must lint clean and wire what the code expects."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import tomllib
from collections import Counter
from typing import Any

import pytest
import yaml
from cfnlint.api import lint_all

from spillway.settings import Settings
from spillway_embedded.provision import provision
from spillway_embedded.template import translate

from conftest import ROOT, TEMPLATE, Cloud


def test_template_passes_cfn_lint_with_the_sam_transform() -> None:
    problems = [str(m) for m in lint_all(TEMPLATE.read_text()) if m.rule.severity in ("error", "warning")]
    assert problems == []


def test_state_machine_definitions_are_json_with_only_declared_substitutions() -> None:
    template = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    for name, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::StateMachine":
            continue
        text = (ROOT / resource["Properties"]["DefinitionUri"]).read_text()
        json.loads(text)
        used = set(re.findall(r"\$\{(\w+)\}", text))
        assert used == set(resource["Properties"]["DefinitionSubstitutions"]), name


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation short-form tags (!Ref, !GetAtt ...) as plain values: enough to inspect."""


_CfnLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def test_the_template_translates_to_plain_cloudformation(translated: dict[str, Any]) -> None:
    assert "Transform" not in translated
    types = Counter(resource["Type"] for resource in translated["Resources"].values())
    assert types["AWS::Lambda::Function"] == 9
    assert types["AWS::StepFunctions::StateMachine"] == 1
    assert types["AWS::Lambda::EventSourceMapping"] == 8  # three intake queues, three pools, the timers, webhooks
    assert not [t for t in types if t.startswith("AWS::Serverless::")]


def test_every_function_imports_and_gets_the_whole_settings_from_the_template(cloud: Cloud) -> None:
    for function in cloud.stack.functions.values():
        module, _, name = function.handler.rpartition(".")
        assert callable(getattr(importlib.import_module(module), name)), function.handler
        Settings.from_env(function.environment)  # raises on a missing or malformed variable


def test_routes_and_queues_are_wired_as_the_code_expects(cloud: Cloud) -> None:
    routes = {(r.method, r.path, r.function) for r in cloud.stack.routes}
    assert routes == {
        ("POST", "/v1/uploads", "ApiFunction"), ("POST", "/v1/jobs", "ApiFunction"),
        ("GET", "/v1/jobs", "ApiFunction"), ("GET", "/v1/jobs/{job_id}", "ApiFunction"),
        ("POST", "/v1/jobs/{job_id}/cancel", "ApiFunction"),
        ("GET", "/v1/openapi.json", "ApiFunction"),
        ("GET", "/v1/fleet", "ApiFunction"), ("POST", "/v1/fleet/{gpu_id}/{action}", "ApiFunction"),
        ("PUT", "/v1/fleet/{gpu_id}", "ApiFunction"), ("POST", "/v1/fleet/{gpu_id}/rotate", "ApiFunction"),
        ("POST", "/v1/agent/heartbeat", "AgentCallbackFunction"),
        ("POST", "/v1/agent/tasks/{task_id}/heartbeat", "AgentCallbackFunction"),
        ("POST", "/v1/agent/tasks/{task_id}/result", "AgentCallbackFunction"),
        ("POST", "/v1/faas/webhook/{task_id}", "FaasWebhookFunction"),
    }
    # Clients and operators are IAM principals (tenants); agents and the FaaS provider present their own secrets.
    assert {r.path for r in cloud.stack.routes if not r.iam} == {
        "/v1/agent/heartbeat", "/v1/agent/tasks/{task_id}/heartbeat", "/v1/agent/tasks/{task_id}/result",
        "/v1/faas/webhook/{task_id}"}
    by_queue = {s.queue_url: s for s in cloud.stack.queue_sources}
    for priority, url in cloud.settings.intake_queue_urls.items():
        assert by_queue[url].function == "AdmitFunction", priority
    for pool in ("LocalQueue", "CloudQueue", "FaasQueue"):
        assert by_queue[cloud.physical[pool]].function == "PoolPollerFunction"
    assert by_queue[cloud.settings.timers_queue_url].function == "TimerFunction"
    assert by_queue[cloud.settings.webhook_queue_url].function == "WebhookSenderFunction"
    assert [(s.function, s.expression) for s in cloud.stack.schedules] == [("SweeperFunction", "rate(1 minute)")]
    assert "moto" in cloud.stack.offline["SweeperFunctionExecutionEnded"], "says what covers for it offline"
    assert all(s.report_batch_item_failures for s in cloud.stack.queue_sources), "partial batch failures"


def test_api_gateway_throttles_every_route_before_any_function(translated: dict) -> None:
    (stage,) = [r for r in translated["Resources"].values() if r["Type"] == "AWS::ApiGatewayV2::Stage"]
    throttling = stage["Properties"]["DefaultRouteSettings"]
    assert throttling == {"ThrottlingRateLimit": {"Ref": "ApiThrottlingRate"},
                          "ThrottlingBurstLimit": {"Ref": "ApiThrottlingBurst"}}


def test_an_unknown_resource_type_fails_loudly() -> None:
    with pytest.raises(NotImplementedError, match="AWS::EC2::Instance"):
        provision({"Resources": {"Box": {"Type": "AWS::EC2::Instance", "Properties": {}}}}, endpoint_url=None)


def test_an_unknown_parameter_override_is_refused() -> None:
    with pytest.raises(ValueError, match="HeartbeatSecs"):
        translate(TEMPLATE, {"HeartbeatSecs": "5"})


def test_lambda_code_needs_only_what_sam_build_installs() -> None:
    """The handlers import with nothing but functions/requirements.txt (and boto3, which Lambda has)."""
    blocked = {"numpy", "cv2", "moto", "werkzeug", "samtranslator", "yaml", "spillway_embedded"}
    code = f"""
import sys
class NotInLambda:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is not in the Lambda package")
sys.meta_path.insert(0, NotInLambda())
import spillway.handlers.admit, spillway.handlers.api, spillway.handlers.callback, spillway.handlers.poller
import spillway.handlers.timers, spillway.handlers.sweeper
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    required = {line.split("[")[0].split(">")[0].strip() for line in
                (ROOT / "functions" / "requirements.txt").read_text().splitlines() if line and line[0] != "#"}
    declared = {dep.split("[")[0].split(">")[0].strip() for dep in
                tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert required == declared - {"boto3"}, "functions/requirements.txt and pyproject.toml disagree"


def test_a_functions_reserved_concurrency_bounds_its_containers_offline() -> None:
    def function(**properties: Any) -> dict[str, Any]:
        return {"Type": "AWS::Lambda::Function", "Properties": {"Handler": "runtime_handlers.handler", **properties}}

    stack = provision({"Resources": {"Reserved": function(ReservedConcurrentExecutions=2), "Unreserved": function()}},
                      endpoint_url=None)
    assert stack.functions["Reserved"].reserved_concurrency == 2
    assert stack.functions["Unreserved"].reserved_concurrency is None
