"""A resource as the template declares it, the resource types the local stack reads, and reference following."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TABLE = "AWS::DynamoDB::Table"
QUEUE = "AWS::SQS::Queue"
EVENT_BUS = "AWS::Events::EventBus"
RULE = "AWS::Events::Rule"
SECRET = "AWS::SecretsManager::Secret"
FUNCTION = "AWS::Lambda::Function"
LAYER = "AWS::Lambda::LayerVersion"
ROLE = "AWS::IAM::Role"
POLICY = "AWS::IAM::Policy"
API = "AWS::ApiGatewayV2::Api"
ROUTE = "AWS::ApiGatewayV2::Route"
INTEGRATION = "AWS::ApiGatewayV2::Integration"
AUTHORIZER = "AWS::ApiGatewayV2::Authorizer"
STAGE = "AWS::ApiGatewayV2::Stage"
EVENT_SOURCE_MAPPING = "AWS::Lambda::EventSourceMapping"
PIPE = "AWS::Pipes::Pipe"


class TemplateError(ValueError):
    """The template (or assembly) lacks something the local stack needs, or holds it in an unexpected shape."""


def referenced_ids(value: Any) -> list[str]:
    """Logical ids (not pseudo parameters) that `value` points at through Ref or Fn::GetAtt, in order of appearance."""
    found: list[str] = []
    if isinstance(value, dict):
        if set(value) == {"Ref"} and isinstance(value["Ref"], str):
            if not value["Ref"].startswith("AWS::"):
                found.append(value["Ref"])
            return found
        if set(value) == {"Fn::GetAtt"}:
            target = value["Fn::GetAtt"]
            found.append(target[0] if isinstance(target, list) else str(target).split(".", 1)[0])
            return found
        for item in value.values():
            found += referenced_ids(item)
    elif isinstance(value, list):
        for item in value:
            found += referenced_ids(item)
    return found


@dataclass(frozen=True)
class Resource:
    logical_id: str
    type: str
    properties: dict[str, Any]
    metadata: dict[str, Any]
    depends_on: tuple[str, ...]


def first_ref(value: Any) -> str | None:
    """The first logical id `value` points at, if any."""
    ids = referenced_ids(value)
    return ids[0] if ids else None


def truthy(value: Any) -> bool:
    """A CloudFormation boolean, which the template may hold as true or "true"."""
    return value is True or (isinstance(value, str) and value.lower() == "true")


def optional_int(value: Any) -> int | None:
    return None if value is None else int(value)
