"""boto3 clients, made once per container.

Endpoints come from boto3's own settings (AWS_ENDPOINT_URL and friends), which is how the
embedded stack points every client at moto without a line of special code here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from functools import cache
from typing import Any

import boto3
from boto3.dynamodb.types import TypeSerializer
from botocore.config import Config

_CONFIG = Config(
    connect_timeout=2,
    read_timeout=10,
    retries={"mode": "standard", "max_attempts": 3},
)
# Presigned URLs are handed to agents and clients: SigV4 is the only signature S3 takes everywhere.
_S3_CONFIG = _CONFIG.merge(Config(signature_version="s3v4"))


@cache
def client(service: str) -> Any:
    return boto3.client(service, config=_S3_CONFIG if service == "s3" else _CONFIG)


@cache
def table(name: str) -> Any:
    return boto3.resource("dynamodb", config=_CONFIG).Table(name)


def error_code(exc: Exception) -> str:
    """The AWS error code of a botocore ClientError ('' for anything else)."""
    response = getattr(exc, "response", None) or {}
    return response.get("Error", {}).get("Code", "")


def version_param(version: str | None) -> dict[str, str]:
    """An S3 call's parameter naming one version of an object (none: its current version)."""
    return {"VersionId": version} if version else {}


def to_item(value: Any) -> Any:
    """JSON-ish -> DynamoDB resource types (numbers must be Decimal)."""
    if isinstance(value, dict):
        return {k: to_item(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_item(v) for v in value]
    if isinstance(value, float):
        return Decimal(str(value))
    return value


def from_item(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: from_item(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_item(v) for v in value]
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def typed(item: dict[str, Any]) -> dict[str, Any]:
    """Plain values -> DynamoDB's typed wire format (the low-level client's, for transactions; floats go
    through Decimal, see `to_item`)."""
    return {k: _SERIALIZER.serialize(to_item(v)) for k, v in item.items()}


def cancellation_codes(exc: Exception) -> list[str]:
    """The per-item cancellation codes of a cancelled transaction ([] for any other error)."""
    if error_code(exc) != "TransactionCanceledException":
        return []
    return [r.get("Code", "None") for r in getattr(exc, "response", {}).get("CancellationReasons", [])]


_SERIALIZER = TypeSerializer()


def paged_items(call: Callable[..., dict[str, Any]], **request: Any) -> Iterator[dict[str, Any]]:
    """Every item a DynamoDB query or scan returns, page after page, read as the caller goes on."""
    while True:
        page = call(**request)
        yield from page["Items"]
        if "LastEvaluatedKey" not in page:
            return
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
