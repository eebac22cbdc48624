"""Who is calling: the tenant, from the request context API Gateway's IAM authorizer fills in.

Production code learns the caller's identity here and nowhere else. On AWS the HTTP API's IAM auth
(SigV4) puts the signing principal in `requestContext.authorizer.iam.userArn`; offline, the embedded
runtime's API front plays that part (a bearer token mapped through its tenants file, see
`spillway_embedded.tenants`). A request without it never reaches a handler on AWS: here it is a 403.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pydantic import BaseModel, computed_field

from spillway.errors import Forbidden

# An assumed role's sessions are one caller: arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION -> the role.
_ASSUMED_ROLE = re.compile(r"^arn:(?P<partition>[^:]+):sts::(?P<account>\d+):assumed-role/(?P<role>[^/]+)/.+$")


class Tenant(BaseModel, frozen=True):
    principal: str  # the IAM principal's ARN (an assumed role's role, not its session)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def tenant_id(self) -> str:
        """Stable, short and safe in S3 keys and DynamoDB keys: what jobs and uploads are filed under."""
        return "tn-" + hashlib.sha256(self.principal.encode()).hexdigest()[:24]

    @property
    def upload_prefix(self) -> str:
        """Where its uploads go: a job may only name an input under its own prefix."""
        return f"uploads/{self.tenant_id}/"

    @classmethod
    def of_principal(cls, arn: str) -> Tenant:
        assumed = _ASSUMED_ROLE.match(arn)
        if assumed:
            arn = f"arn:{assumed['partition']}:iam::{assumed['account']}:role/{assumed['role']}"
        return cls(principal=arn)


def tenant_of(event: dict[str, Any]) -> Tenant:
    """The caller of an HTTP API (payload 2.0) request with IAM auth."""
    iam = ((event.get("requestContext") or {}).get("authorizer") or {}).get("iam") or {}
    arn = iam.get("userArn")
    if not arn:
        raise Forbidden("no caller identity: sign the request (SigV4) with IAM credentials")
    return Tenant.of_principal(arn)
