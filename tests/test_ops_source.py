"""The ops view finds a deployed stack's resources by its name, as CloudFormation lists them."""

from __future__ import annotations

import json

import boto3
from moto import mock_aws

from spillway_ops.source import Source


def test_a_deployed_stack_is_read_by_name() -> None:
    template = {"Resources": {"JobsTable": {"Type": "AWS::DynamoDB::Table", "Properties": {
        "BillingMode": "PAY_PER_REQUEST", "KeySchema": [{"AttributeName": "job_id", "KeyType": "HASH"}],
        "AttributeDefinitions": [{"AttributeName": "job_id", "AttributeType": "S"}]}}}}
    with mock_aws():
        boto3.client("cloudformation", region_name="eu-west-1").create_stack(
            StackName="spillway", TemplateBody=json.dumps(template))
        source = Source.deployed("spillway", "eu-west-1")
        assert source.endpoint_url is None and source.region == "eu-west-1"
        table = source.resources["JobsTable"]
        assert table in boto3.client("dynamodb", region_name="eu-west-1").list_tables()["TableNames"]
        assert source.jobs.get("j-" + "0" * 32) is None  # read through the domain's own store
