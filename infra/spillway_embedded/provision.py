"""Create a translated template's resources in moto, in dependency order.

Every resource type in the template must be handled here: either created in moto, or wired by
the local runtime (functions, event sources, routes, schedules), or satisfied by construction
offline (IAM, permissions, stages). An unknown type fails loudly, so nobody adds a resource
that the embedded stack silently ignores.
"""

from __future__ import annotations

import json
import secrets
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import Any

import boto3

from spillway_embedded.intrinsics import Resolver, references

ACCOUNT_ID = "123456789012"


@dataclass(frozen=True)
class Function:
    logical_id: str
    name: str
    arn: str
    handler: str
    timeout: int
    memory_mb: int
    environment: dict[str, str]
    reserved_concurrency: int | None = None  # ReservedConcurrentExecutions: at most this many at once


@dataclass(frozen=True)
class Route:
    method: str  # GET, POST ... or ANY
    path: str  # /v1/jobs/{job_id}
    function: str  # logical id
    iam: bool = False  # IAM auth (AWS_IAM): the caller must be authenticated, and the event names it


@dataclass(frozen=True)
class QueueSource:
    function: str
    queue_arn: str
    queue_url: str
    batch_size: int
    report_batch_item_failures: bool
    batching_window_s: int
    enabled: bool


@dataclass(frozen=True)
class Schedule:
    function: str
    expression: str
    input: str | None


@dataclass
class Stack:
    name: str
    region: str
    account_id: str = ACCOUNT_ID
    physical_ids: dict[str, str] = field(default_factory=dict)
    attributes: dict[tuple[str, str], Any] = field(default_factory=dict)
    functions: dict[str, Function] = field(default_factory=dict)
    routes: list[Route] = field(default_factory=list)
    queue_sources: list[QueueSource] = field(default_factory=list)
    schedules: list[Schedule] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    offline: dict[str, str] = field(default_factory=dict)  # logical id -> why nothing was created

    def physical_id(self, logical_id: str) -> str:
        return self.physical_ids[logical_id]

    def environment(self) -> dict[str, str]:
        """The union of every function's environment; the runtime runs them in one process."""
        merged: dict[str, str] = {}
        for function in self.functions.values():
            for name, value in function.environment.items():
                if merged.setdefault(name, value) != value:
                    raise ValueError(f"functions disagree on {name}: {merged[name]!r} vs {value!r}; "
                                     "the embedded runtime runs them in one process")
        return merged


class Provisioner:
    def __init__(self, cfn: dict[str, Any], endpoint_url: str | None, region: str, stack_name: str):
        self._cfn = cfn
        self._region = region
        self._endpoint = endpoint_url
        self._clients: dict[str, Any] = {}
        self.stack = Stack(name=stack_name, region=region)
        parameters = {name: spec.get("Default") for name, spec in cfn.get("Parameters", {}).items()}
        pseudo = {
            "AWS::Region": region, "AWS::AccountId": ACCOUNT_ID, "AWS::StackName": stack_name,
            "AWS::StackId": f"arn:aws:cloudformation:{region}:{ACCOUNT_ID}:stack/{stack_name}/{uuid.uuid4()}",
            "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com",
        }
        self.resolver = Resolver(parameters, pseudo, cfn.get("Conditions", {}), self._ref, self._get_att)

    # ---- boto3 against moto

    def client(self, service: str) -> Any:
        """One client per service for the whole walk: building one costs ~0.1 s, and a template has dozens of
        resources (the tests provision it hundreds of times)."""
        if service not in self._clients:
            self._clients[service] = boto3.client(service, endpoint_url=self._endpoint, region_name=self._region)
        return self._clients[service]

    # ---- resolution callbacks

    def _ref(self, logical_id: str) -> Any:
        if logical_id not in self.stack.physical_ids:
            raise KeyError(f"Ref to {logical_id}, which is not created (yet)")
        return self.stack.physical_ids[logical_id]

    def _get_att(self, logical_id: str, attribute: str) -> Any:
        try:
            return self.stack.attributes[(logical_id, attribute)]
        except KeyError:
            raise KeyError(f"Fn::GetAtt {logical_id}.{attribute} is not known offline") from None

    # ---- the walk

    def run(self) -> Stack:
        resources = self._cfn.get("Resources", {})
        graph = {
            logical: (references(spec) | set(_as_list(spec.get("DependsOn")))) & set(resources)
            for logical, spec in resources.items()
        }
        try:
            order = list(TopologicalSorter(graph).static_order())
        except CycleError as cycle:
            raise ValueError(f"the template's resources depend on each other in a cycle: {cycle.args[1]}") from None
        for logical in order:
            spec = resources[logical]
            if "Condition" in spec and not self.resolver.condition(spec["Condition"]):
                continue
            creator = _CREATORS.get(spec["Type"])
            if creator is None:
                raise NotImplementedError(
                    f"{logical}: resource type {spec['Type']} is not handled by the embedded stack; "
                    "add it to spillway_embedded/provision.py"
                )
            properties = self.resolver.resolve(spec.get("Properties", {}))
            creator(self, logical, properties)
        self.stack.outputs = {
            name: self.resolver.resolve(output["Value"])
            for name, output in self._cfn.get("Outputs", {}).items()
            if "Condition" not in output or self.resolver.condition(output["Condition"])
        }
        return self.stack

    def created(self, logical: str, physical: str, **attributes: Any) -> None:
        self.stack.physical_ids[logical] = physical
        for name, value in attributes.items():
            self.stack.attributes[(logical, name)] = value

    def arn(self, service: str, resource: str) -> str:
        return f"arn:aws:{service}:{self._region}:{ACCOUNT_ID}:{resource}"

    def name_for(self, logical: str, explicit: str | None, limit: int = 80) -> str:
        return explicit or f"{self.stack.name}-{logical}"[:limit]


def _as_list(value: Any) -> list[Any]:
    return [] if value is None else value if isinstance(value, list) else [value]


# ---------------------------------------------------------------- created in moto


def _queue(p: Provisioner, logical: str, props: dict[str, Any]) -> None:
    name = p.name_for(logical, props.get("QueueName"))
    attributes = {
        key: str(props[key]).lower() if isinstance(props[key], bool) else str(props[key])
        for key in ("VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds", "ReceiveMessageWaitTimeSeconds",
                    "MaximumMessageSize", "FifoQueue", "ContentBasedDeduplication")
        if key in props
    }
    if "RedrivePolicy" in props:
        attributes["RedrivePolicy"] = json.dumps(props["RedrivePolicy"])
    url = p.client("sqs").create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    p.created(logical, url, Arn=p.arn("sqs", name), QueueName=name, QueueUrl=url)


def _table(p: Provisioner, logical: str, props: dict[str, Any]) -> None:
    name = p.name_for(logical, props.get("TableName"), 255)
    on_demand = props.get("BillingMode") == "PAY_PER_REQUEST"
    request: dict[str, Any] = {
        "TableName": name, "KeySchema": props["KeySchema"], "AttributeDefinitions": props["AttributeDefinitions"],
        "BillingMode": props.get("BillingMode", "PROVISIONED"),
    }
    if not on_demand:
        request["ProvisionedThroughput"] = props["ProvisionedThroughput"]
    for key in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
        if key in props:
            request[key] = [
                {k: v for k, v in index.items() if not (on_demand and k == "ProvisionedThroughput")}
                for index in props[key]
            ]
    if "StreamSpecification" in props:
        request["StreamSpecification"] = {"StreamEnabled": True, **props["StreamSpecification"]}
    ddb = p.client("dynamodb")
    description = ddb.create_table(**request)["TableDescription"]
    ttl = props.get("TimeToLiveSpecification")
    if ttl and ttl.get("Enabled"):
        ddb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
    p.created(logical, name, Arn=description["TableArn"], StreamArn=description.get("LatestStreamArn"))


def _bucket(p: Provisioner, logical: str, props: dict[str, Any]) -> None:
    name = props.get("BucketName") or f"{p.stack.name}-{logical}-{uuid.uuid4().hex[:8]}".lower()[:63]
    s3 = p.client("s3")
    s3.create_bucket(Bucket=name)
    if "VersioningConfiguration" in props:
        status = props["VersioningConfiguration"]["Status"]
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": status})
    if "CorsConfiguration" in props:
        renamed = {"Id": "ID", "ExposedHeaders": "ExposeHeaders", "MaxAge": "MaxAgeSeconds"}  # CFN -> S3 API
        rules = [{renamed.get(k, k): v for k, v in rule.items()} for rule in props["CorsConfiguration"]["CorsRules"]]
        s3.put_bucket_cors(Bucket=name, CORSConfiguration={"CORSRules": rules})
    if "LifecycleConfiguration" in props:
        rules = [
            {"ID": rule.get("Id", f"rule-{i}"), "Status": rule["Status"],
             "Filter": {"Prefix": rule.get("Prefix", "")},
             **({"Expiration": {"Days": rule["ExpirationInDays"]}} if "ExpirationInDays" in rule else {}),
             **({"NoncurrentVersionExpiration": {"NoncurrentDays": rule["NoncurrentVersionExpirationInDays"]}}
                if "NoncurrentVersionExpirationInDays" in rule else {})}
            for i, rule in enumerate(props["LifecycleConfiguration"]["Rules"])
        ]
        s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration={"Rules": rules})
    if "BucketEncryption" in props:
        rules = [
            {("ApplyServerSideEncryptionByDefault" if k == "ServerSideEncryptionByDefault" else k): v
             for k, v in rule.items()}
            for rule in props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        ]
        s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": rules})
    if "PublicAccessBlockConfiguration" in props:
        s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"])
    p.created(logical, name, Arn=f"arn:aws:s3:::{name}", DomainName=f"{name}.s3.amazonaws.com",
              RegionalDomainName=f"{name}.s3.{p.stack.region}.amazonaws.com")


def _state_machine(p: Provisioner, logical: str, props: dict[str, Any]) -> None:
    name = p.name_for(logical, props.get("StateMachineName"))
    definition = props.get("DefinitionString") or json.dumps(props["Definition"])
    for key, value in (props.get("DefinitionSubstitutions") or {}).items():
        definition = definition.replace("${" + key + "}", str(value))
    arn = p.client("stepfunctions").create_state_machine(
        name=name, definition=definition, roleArn=props["RoleArn"], type=props.get("StateMachineType", "STANDARD"),
    )["stateMachineArn"]
    p.created(logical, arn, Arn=arn, Name=name)


def _secret(p: Provisioner, logical: str, props: dict[str, Any]) -> None:
    name = p.name_for(logical, props.get("Name"))
    value = props.get("SecretString") or _generate_secret(props.get("GenerateSecretString", {}))
    arn = p.client("secretsmanager").create_secret(Name=name, SecretString=value)["ARN"]
    p.created(logical, arn, Id=arn)


def _generate_secret(spec: dict[str, Any]) -> str:
    alphabet = string.ascii_letters + string.digits
    if not spec.get("ExcludePunctuation"):
        alphabet += "!#$%&()*+,-.:;<=>?[]^_{|}~"
    alphabet = "".join(c for c in alphabet if c not in spec.get("ExcludeCharacters", ""))
    return "".join(secrets.choice(alphabet) for _ in range(int(spec.get("PasswordLength", 32))))


def _parameter(p: Provisioner, logical: str, props: dict[str, Any]) -> None:
    name = props.get("Name") or f"/{p.stack.name}/{logical}"
    p.client("ssm").put_parameter(Name=name, Value=str(props["Value"]), Type=props.get("Type", "String"))
    p.created(logical, name, Type=props.get("Type", "String"), Value=props["Value"])


def _topic(p: Provisioner, logical: str, props: dict[str, Any]) -> None:
    name = p.name_for(logical, props.get("TopicName"))
    arn = p.client("sns").create_topic(Name=name)["TopicArn"]
    p.created(logical, arn, TopicArn=arn, TopicName=name)


def _subscription(p: Provisioner, logical: str, props: dict[str, Any]) -> None:
    arn = p.client("sns").subscribe(TopicArn=props["TopicArn"], Protocol=props["Protocol"],
                                    Endpoint=props["Endpoint"])["SubscriptionArn"]
    p.created(logical, arn)


def _alarm(p: Provisioner, logical: str, props: dict[str, Any]) -> None:
    name = p.name_for(logical, props.get("AlarmName"), 255)
    request = {k: v for k, v in props.items() if k != "AlarmName"}
    p.client("cloudwatch").put_metric_alarm(AlarmName=name, **request)
    p.created(logical, name, Arn=p.arn("cloudwatch", f"alarm:{name}"))


def _dashboard(p: Provisioner, logical: str, props: dict[str, Any]) -> None:
    name = p.name_for(logical, props.get("DashboardName"), 255)
    p.client("cloudwatch").put_dashboard(DashboardName=name, DashboardBody=props["DashboardBody"])
    p.created(logical, name)


# ---------------------------------------------------------------- wired by the local runtime


def _function(p: Provisioner, logical: str, props: dict[str, Any]) -> None:
    name = p.name_for(logical, props.get("FunctionName"), 64)
    arn = p.arn("lambda", f"function:{name}")
    environment = {k: str(v) for k, v in props.get("Environment", {}).get("Variables", {}).items()}
    p.stack.functions[logical] = Function(
        logical_id=logical, name=name, arn=arn, handler=props["Handler"], timeout=int(props.get("Timeout", 3)),
        memory_mb=int(props.get("MemorySize", 128)), environment=environment,
        reserved_concurrency=int(props["ReservedConcurrentExecutions"]) if "ReservedConcurrentExecutions" in props
        else None,
    )
    p.created(logical, name, Arn=arn)


def _function_by_arn(p: Provisioner, arn: str) -> str:
    for function in p.stack.functions.values():
        if function.arn == arn or function.name == arn or f"functions/{function.arn}/" in arn:
            return function.logical_id
    raise KeyError(f"no function in the template for {arn}")


def _event_source(p: Provisioner, logical: str, props: dict[str, Any]) -> None:
    source_arn = props["EventSourceArn"]
    if ":sqs:" not in source_arn:
        raise NotImplementedError(f"{logical}: only SQS event sources run offline, not {source_arn}")
    queue_logical = next(lid for (lid, att), v in p.stack.attributes.items() if att == "Arn" and v == source_arn)
    p.stack.queue_sources.append(QueueSource(
        function=_function_by_arn(p, props["FunctionName"]),
        queue_arn=source_arn,
        queue_url=p.stack.physical_ids[queue_logical],
        batch_size=int(props.get("BatchSize", 10)),
        report_batch_item_failures="ReportBatchItemFailures" in props.get("FunctionResponseTypes", []),
        batching_window_s=int(props.get("MaximumBatchingWindowInSeconds", 0)),
        enabled=bool(props.get("Enabled", True)),
    ))
    p.created(logical, str(uuid.uuid4()))


def _http_api(p: Provisioner, logical: str, props: dict[str, Any]) -> None:
    if "Body" not in props:
        raise NotImplementedError(f"{logical}: only HTTP APIs defined by an OpenAPI Body run offline")
    if props["Body"].get("x-amazon-apigateway-cors") is not None:
        p.stack.offline[f"{logical}/cors"] = "CORS headers are not added offline"
    for path, methods in props["Body"].get("paths", {}).items():
        for method, operation in methods.items():
            integration = operation.get("x-amazon-apigateway-integration", {})
            if integration.get("type") != "aws_proxy":
                raise NotImplementedError(f"{logical}: {method.upper()} {path} is not a Lambda proxy integration")
            function = _function_by_arn(p, integration["uri"])
            iam = any("AWS_IAM" in requirement for requirement in operation.get("security", []))
            p.stack.routes.append(Route("ANY" if method == "x-amazon-apigateway-any-method" else method.upper(),
                                        path, function, iam))
    api_id = uuid.uuid4().hex[:10]
    p.created(logical, api_id, ApiId=api_id, ApiEndpoint=f"https://{api_id}.execute-api.{p.stack.region}.amazonaws.com")


# Event patterns whose events nothing emits offline, and what covers for them there.
_SILENT_SOURCES = {
    "aws.states": "moto's Step Functions emits no execution status change events; the scheduled sweep "
                  "reconciles every open job with its execution instead",
}


def _rule(p: Provisioner, logical: str, props: dict[str, Any]) -> None:
    if "ScheduleExpression" not in props:
        sources = set((props.get("EventPattern") or {}).get("source", []))
        if not sources or not sources <= set(_SILENT_SOURCES):
            raise NotImplementedError(f"{logical}: only scheduled EventBridge rules run offline, and pattern "
                                      f"rules on {sorted(_SILENT_SOURCES)}; not {sorted(sources) or 'this'}")
        p.stack.offline[logical] = "; ".join(_SILENT_SOURCES[source] for source in sorted(sources))
        p.created(logical, p.name_for(logical, props.get("Name"), 64), Arn=p.arn("events", f"rule/{logical}"))
        return
    for target in props.get("Targets", []):
        p.stack.schedules.append(Schedule(_function_by_arn(p, target["Arn"]), props["ScheduleExpression"],
                                          target.get("Input")))
    p.created(logical, p.name_for(logical, props.get("Name"), 64), Arn=p.arn("events", f"rule/{logical}"))


def _schedule(p: Provisioner, logical: str, props: dict[str, Any]) -> None:
    target = props["Target"]
    p.stack.schedules.append(Schedule(_function_by_arn(p, target["Arn"]), props["ScheduleExpression"],
                                      target.get("Input")))
    p.created(logical, p.name_for(logical, props.get("Name"), 64), Arn=p.arn("scheduler", f"schedule/{logical}"))


# ---------------------------------------------------------------- nothing to do offline


def _offline(why: str) -> Callable[[Provisioner, str, dict[str, Any]], None]:
    def record(p: Provisioner, logical: str, props: dict[str, Any]) -> None:
        name = p.name_for(logical, props.get("RoleName"), 64)
        p.stack.offline[logical] = why
        p.created(logical, name, Arn=p.arn("iam", f"role/{name}").replace(f":{p.stack.region}:", "::"))

    return record


_CREATORS: dict[str, Callable[[Provisioner, str, dict[str, Any]], None]] = {
    "AWS::SQS::Queue": _queue,
    "AWS::DynamoDB::Table": _table,
    "AWS::S3::Bucket": _bucket,
    "AWS::StepFunctions::StateMachine": _state_machine,
    "AWS::SecretsManager::Secret": _secret,
    "AWS::SSM::Parameter": _parameter,
    "AWS::SNS::Topic": _topic,
    "AWS::SNS::Subscription": _subscription,
    "AWS::CloudWatch::Alarm": _alarm,
    "AWS::CloudWatch::Dashboard": _dashboard,
    "AWS::Lambda::Function": _function,
    "AWS::Lambda::EventSourceMapping": _event_source,
    "AWS::ApiGatewayV2::Api": _http_api,
    "AWS::Events::Rule": _rule,
    "AWS::Scheduler::Schedule": _schedule,
    "AWS::IAM::Role": _offline("IAM is not enforced offline; the runtime runs every handler with full access"),
    "AWS::IAM::Policy": _offline("IAM is not enforced offline"),
    "AWS::IAM::ManagedPolicy": _offline("IAM is not enforced offline"),
    "AWS::Lambda::Permission": _offline("the local runtime invokes handlers directly"),
    "AWS::ApiGatewayV2::Stage": _offline("the local runtime serves the $default stage"),
}


def provision(
    cfn: dict[str, Any], *, endpoint_url: str | None, region: str = "us-east-1", stack_name: str = "spillway"
) -> Stack:
    """Create every resource of a translated template; `endpoint_url=None` uses boto3's default
    endpoints, which is what moto's in-process `mock_aws` intercepts."""
    return Provisioner(cfn, endpoint_url, region, stack_name).run()
