"""IAM: the policy documents a role of the template carries or has attached."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from local.cloud.resources.resource import POLICY, ROLE, referenced_ids

if TYPE_CHECKING:
    from local.cloud.template import Template


@dataclass(frozen=True)
class RolePolicies:
    role_logical_id: str
    documents: tuple[Any, ...]  # unresolved policy documents: inline policies, then attached AWS::IAM::Policy
    managed_policy_arns: tuple[Any, ...]


def read_role_policies(template: Template, role_logical_id: str) -> RolePolicies:
    role = template.resource(role_logical_id, ROLE)
    documents = [inline["PolicyDocument"] for inline in role.properties.get("Policies", [])]
    for policy in template.of_type(POLICY):
        attached = [i for ref in policy.properties.get("Roles", []) for i in referenced_ids(ref)]
        if role_logical_id in attached:
            documents.append(policy.properties["PolicyDocument"])
    return RolePolicies(role_logical_id, tuple(documents), tuple(role.properties.get("ManagedPolicyArns", ())))
