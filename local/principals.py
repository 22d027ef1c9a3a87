"""Who may call the local stack's AWS surfaces: each function's role, and the local administrator.

One `Principals` registry is shared by the AWS front door (`local.aws_front_door`,
in front of moto) and the gateway's Management API and admin routes: both look
up the access key a request was signed with, verify the signature with its
secret (`local.sigv4`), and authorise the request with the principal's policies
(`local.iam`).

A function principal is what Lambda gives a function on AWS: temporary
credentials of an assumed role, so its ARN is
`arn:aws:sts::<account>:assumed-role/<role>/<function>` and its requests carry a
session token. The local administrator (the stack's own tooling: provisioning,
the SQS pumps, the simulator, the CLI, tests) is allowed everything, signs with
the long-standing development keys, and never sees injected faults.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from local.iam import Context, Decision, PolicySet
from local.sigv4 import Credentials

ADMIN_CREDENTIALS = Credentials("testing", "testing")  # what moto_server.CREDENTIALS and the tests sign with


@dataclass(frozen=True)
class Principal:
    name: str  # the function's name (the role session name on AWS), or "local-administrator"
    credentials: Credentials
    arn: str
    policies: PolicySet | None  # None: the local administrator, allowed everything
    role_name: str | None = None

    @property
    def principal_arn(self) -> str:
        """`aws:PrincipalArn` as IAM conditions see it: the role's ARN for an assumed role, else the caller's."""
        if self.role_name is not None:
            account = self.arn.split(":")[4]
            return f"arn:aws:iam::{account}:role/{self.role_name}"
        return self.arn

    def condition_keys(self) -> dict[str, str]:
        """The global condition keys every request of this principal carries."""
        return {"aws:PrincipalArn": self.principal_arn, "aws:PrincipalAccount": self.arn.split(":")[4]}

    def environment(self) -> dict[str, str]:
        """The credential variables Lambda sets for a function, for this principal's keys."""
        variables = {
            "AWS_ACCESS_KEY_ID": self.credentials.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.credentials.secret_key,
        }
        if self.credentials.session_token is not None:
            variables["AWS_SESSION_TOKEN"] = self.credentials.session_token
        return variables

    @property
    def is_admin(self) -> bool:
        return self.policies is None

    def decide(self, action: str, resource: str, context: Context | None = None) -> Decision:
        if self.policies is None:
            return Decision.ALLOW
        return self.policies.evaluate(action, resource, context)

    def denial_message(self, action: str, resource: str, decision: Decision) -> str:
        """AWS's AccessDenied text for this principal, action and resource."""
        reason = (
            "with an explicit deny in an identity-based policy"
            if decision is Decision.EXPLICIT_DENY
            else f"because no identity-based policy allows the {action} action"
        )
        return f"User: {self.arn} is not authorized to perform: {action} on resource: {resource} {reason}"


class Principals:
    """Access key id -> Principal. Registration and lookups may come from any thread."""

    def __init__(self, account: str, *, admin: Credentials = ADMIN_CREDENTIALS) -> None:
        self.account = account
        self._lock = threading.Lock()
        self.admin = Principal("local-administrator", admin, f"arn:aws:iam::{account}:user/local-administrator", None)
        self._by_key: dict[str, Principal] = {admin.access_key_id: self.admin}

    def register_function(
        self,
        function_name: str,
        role_name: str,
        policies: Iterable[Mapping[str, Any]],
        credentials: Credentials | None = None,
    ) -> Principal:
        """A function's principal: its role's identity policy documents (ARNs resolved), fresh temporary keys.

        Raises `local.iam.PolicyError` for a document that is not valid IAM.
        """
        principal = Principal(
            function_name,
            credentials or _temporary_credentials(),
            f"arn:aws:sts::{self.account}:assumed-role/{role_name}/{function_name}",
            PolicySet.parse(policies),
            role_name,
        )
        self._add(principal)
        return principal

    def register_user(
        self, user_name: str, credentials: Credentials, policies: Iterable[Mapping[str, Any]]
    ) -> Principal:
        """An IAM user with long-term keys (an operator's profile): `arn:aws:iam::<account>:user/<name>`."""
        principal = Principal(
            user_name, credentials, f"arn:aws:iam::{self.account}:user/{user_name}", PolicySet.parse(policies)
        )
        self._add(principal)
        return principal

    def _add(self, principal: Principal) -> None:
        with self._lock:
            if principal.credentials.access_key_id in self._by_key:
                raise ValueError(f"access key {principal.credentials.access_key_id!r} is already registered")
            self._by_key[principal.credentials.access_key_id] = principal

    def get(self, access_key_id: str) -> Principal | None:
        return self._by_key.get(access_key_id)

    def credentials(self, access_key_id: str) -> Credentials | None:
        """The `local.sigv4.CredentialsLookup` for this registry."""
        principal = self._by_key.get(access_key_id)
        return principal.credentials if principal is not None else None

    def functions(self) -> list[Principal]:
        return [principal for principal in self._by_key.values() if not principal.is_admin]


def _temporary_credentials() -> Credentials:
    # Shaped like STS's: ASIA-prefixed 20-character key id, 40-character secret, an opaque session token.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    key_id = "ASIA" + "".join(secrets.choice(alphabet) for _ in range(16))
    return Credentials(key_id, secrets.token_urlsafe(30)[:40], secrets.token_urlsafe(96))
