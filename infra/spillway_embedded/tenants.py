"""Who may call the embedded stack's API, and as whom: the stand-in for API Gateway's IAM auth.

On AWS a client signs each request (SigV4) and API Gateway puts the signing principal's ARN in the
request context. Offline, a client sends `Authorization: Bearer <token>`; the runtime's API front maps
the token through this file to a principal ARN and sets the same request context, so the handlers run
the production code path (`spillway.tenancy.tenant_of`). No token or an unknown one: 403, before any
handler, as API Gateway answers an unsigned request. The file (`spillway dev --tenants FILE`), TOML:

    [[tenants]]
    name = "acme"
    token = "a-long-random-string"                         # at least 16 characters
    principal = "arn:aws:iam::123456789012:user/acme"      # optional; this is the default for "acme"

`spillway dev` always adds a tenant named `default` (a fresh token each start, unless the file names
one) and writes every tenant's token to its stack.json, where the demo, the tests and the CLI find it.
"""

from __future__ import annotations

import secrets
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from spillway.client import DEFAULT_TENANT

TenantName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class TenantEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: TenantName
    token: str = Field(min_length=16, repr=False)
    principal: str | None = Field(default=None, pattern=r"^arn:aws[a-z-]*:(iam|sts)::\d{12}:.+$")


class TenantsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenants: list[TenantEntry] = Field(default_factory=list)


class Tenants:
    """The tenants of one stack: token -> principal, and each tenant's token by name."""

    def __init__(self, entries: list[TenantEntry], account_id: str):
        self.tokens = {e.name: e.token for e in entries}
        self._principals = {e.token: e.principal or f"arn:aws:iam::{account_id}:user/{e.name}" for e in entries}
        if len(self.tokens) != len(entries) or len(self._principals) != len(entries):
            raise ValueError("tenants: each name and each token may appear once")
        self._account_id = account_id

    def authorizer(self, authorization: str | None) -> dict[str, Any] | None:
        """The `requestContext.authorizer` API Gateway's IAM auth gives a request; None: refuse it (403)."""
        scheme, _, token = (authorization or "").partition(" ")
        principal = self._principals.get(token.strip()) if scheme.lower() == "bearer" else None
        if principal is None:
            return None
        return {"iam": {"accessKey": "offline", "accountId": self._account_id, "callerId": principal.rsplit("/", 1)[-1],
                        "cognitoIdentity": None, "principalOrgId": None, "userArn": principal,
                        "userId": principal.rsplit("/", 1)[-1]}}


def load_tenants(path: Path | None, account_id: str) -> Tenants:
    """The file's tenants (none: no file), and the `default` tenant unless the file names it."""
    entries: list[TenantEntry] = []
    if path is not None:
        try:
            entries = TenantsFile.model_validate(tomllib.loads(path.read_text())).tenants
        except (OSError, ValueError) as unusable:  # a ValidationError is a ValueError
            raise ValueError(f"{path}: {unusable}") from None
    if all(e.name != DEFAULT_TENANT for e in entries):
        entries.insert(0, TenantEntry(name=DEFAULT_TENANT, token=secrets.token_urlsafe(24)))
    return Tenants(entries, account_id)
