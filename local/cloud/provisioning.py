"""Create a template's tables, queues, bus, rules and secrets in moto: the local `cdk deploy`.

`provision()` walks the provisionable resources in dependency order (a
dead-letter queue before the queue that redrives to it, the bus and the queues
before the rules that target them), creates each with the service's own API
under its physical name (`physical_names`), and returns the `Deployment` that
records them. Provisioning again into the same moto finds the same resources.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from local.cloud.assembly import CloudAssembly
from local.cloud.deployment import DEFAULT_ACCOUNT, PROVISIONED, Deployment
from local.cloud.physical_names import physical_name
from local.cloud.resources.resource import (
    EVENT_BUS,
    QUEUE,
    RULE,
    TABLE,
    Resource,
    TemplateError,
    referenced_ids,
)
from local.cloud.template import Template

# Template properties with no local effect; anything not listed and not mapped fails provisioning,
# so a new property in the stack is noticed here instead of being dropped silently.
TABLE_IGNORED = frozenset(
    {"Tags", "ContributorInsightsSpecification", "KinesisStreamSpecification", "ResourcePolicy", "WarmThroughput"}
    | {"OnDemandThroughput"}
)
TABLE_CREATE = frozenset(
    {"KeySchema", "AttributeDefinitions", "BillingMode", "ProvisionedThroughput", "GlobalSecondaryIndexes"}
    | {"LocalSecondaryIndexes", "TableClass", "DeletionProtectionEnabled", "StreamSpecification", "SSESpecification"}
)
TABLE_AFTER = frozenset({"TableName", "TimeToLiveSpecification", "PointInTimeRecoverySpecification"})
QUEUE_ATTRIBUTES = frozenset(
    {"ContentBasedDeduplication", "DeduplicationScope", "DelaySeconds", "FifoQueue", "FifoThroughputLimit"}
    | {"KmsDataKeyReusePeriodSeconds", "KmsMasterKeyId", "MaximumMessageSize", "MessageRetentionPeriod"}
    | {"ReceiveMessageWaitTimeSeconds", "RedriveAllowPolicy", "RedrivePolicy", "SqsManagedSseEnabled"}
    | {"VisibilityTimeout"}
)
QUEUE_IGNORED = frozenset({"Tags", "QueueName"})


class ProvisioningError(RuntimeError):
    """moto refused a resource, or the template asks for something that cannot be provisioned locally."""


@dataclass(frozen=True)
class Clients:
    """boto3 clients for the services the template's resources live in (moto's endpoint, one region)."""

    dynamodb: Any
    sqs: Any
    events: Any
    secretsmanager: Any

    @classmethod
    def from_factory(cls, make: Callable[[str], Any]) -> Clients:
        """E.g. `Clients.from_factory(moto_server.client)`."""
        return cls(make("dynamodb"), make("sqs"), make("events"), make("secretsmanager"))

    @property
    def region(self) -> str:
        return str(self.dynamodb.meta.region_name)


def _attribute_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _unknown(resource: Resource, known: frozenset[str]) -> None:
    unknown = sorted(set(resource.properties) - known)
    if unknown:
        raise ProvisioningError(
            f"{resource.type} {resource.logical_id}: properties {unknown} are not provisioned locally"
        )


def _provision_table(deployment: Deployment, clients: Clients, resource: Resource, existing: set[str]) -> None:
    _unknown(resource, TABLE_CREATE | TABLE_AFTER | TABLE_IGNORED)
    props = deployment.resolve(resource.properties)
    request: dict[str, Any] = {key: props[key] for key in TABLE_CREATE if key in props}
    if "StreamSpecification" in request:
        request["StreamSpecification"] = {"StreamEnabled": True, **request["StreamSpecification"]}
    if "SSESpecification" in request:
        # The template's KMS key does not exist in moto; encryption at rest is a flag here.
        request["SSESpecification"] = {
            "Enabled": _attribute_text(request["SSESpecification"].get("SSEEnabled")) == "true"
        }
    extra = {key: props[key] for key in ("TimeToLiveSpecification", "PointInTimeRecoverySpecification") if key in props}
    name = props.get("TableName") or physical_name(
        deployment.template.stack_name, resource.logical_id, resource.type, [request, extra]
    )
    if name in existing:
        description = clients.dynamodb.describe_table(TableName=name)["Table"]
        # Only a name the template fixes can meet another declaration here (generated names carry a digest of it).
        if description["KeySchema"] != request["KeySchema"]:
            raise ProvisioningError(
                f"table {name} ({resource.logical_id}) exists with key schema {description['KeySchema']}, "
                f"the template declares {request['KeySchema']}; reset moto or rename the table"
            )
    else:
        description = clients.dynamodb.create_table(TableName=name, **request)["TableDescription"]
        ttl = props.get("TimeToLiveSpecification")
        if ttl and _attribute_text(ttl.get("Enabled")) == "true":
            clients.dynamodb.update_time_to_live(
                TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]}
            )
        recovery = props.get("PointInTimeRecoverySpecification")
        if recovery and _attribute_text(recovery.get("PointInTimeRecoveryEnabled")) == "true":
            clients.dynamodb.update_continuous_backups(
                TableName=name, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
            )
    deployment.physical_ids[resource.logical_id] = name
    deployment.attributes[resource.logical_id] = {"Arn": description["TableArn"]} | (
        {"StreamArn": description["LatestStreamArn"]} if description.get("LatestStreamArn") else {}
    )


def _provision_queue(deployment: Deployment, clients: Clients, resource: Resource) -> None:
    _unknown(resource, QUEUE_ATTRIBUTES | QUEUE_IGNORED)
    props = deployment.resolve(resource.properties)
    attributes = {key: _attribute_text(props[key]) for key in sorted(QUEUE_ATTRIBUTES) if key in props}
    fifo = attributes.get("FifoQueue") == "true"
    name = props.get("QueueName") or physical_name(
        deployment.template.stack_name, resource.logical_id, resource.type, attributes, fifo=fifo
    )
    # CreateQueue with the same name and attributes returns the existing queue.
    url = clients.sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    arn = clients.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    deployment.physical_ids[resource.logical_id] = url
    deployment.attributes[resource.logical_id] = {"Arn": arn, "QueueUrl": url, "QueueName": name}


def _provision_bus(deployment: Deployment, clients: Clients, resource: Resource) -> None:
    name = deployment.resolve(resource.properties["Name"])
    try:
        arn = clients.events.describe_event_bus(Name=name)["Arn"]
    except clients.events.exceptions.ResourceNotFoundException:
        arn = clients.events.create_event_bus(Name=name)["EventBusArn"]
    deployment.physical_ids[resource.logical_id] = name
    deployment.attributes[resource.logical_id] = {"Arn": arn, "Name": name}


def _provision_rule(deployment: Deployment, clients: Clients, resource: Resource) -> None:
    props = deployment.resolve(resource.properties)
    name = props.get("Name") or physical_name(deployment.template.stack_name, resource.logical_id, resource.type)
    request: dict[str, Any] = {"Name": name, "State": props.get("State", "ENABLED")}
    bus = props.get("EventBusName")
    if bus:
        request["EventBusName"] = bus
    for key in ("ScheduleExpression", "Description", "RoleArn"):
        if key in props:
            request[key] = props[key]
    if "EventPattern" in props:
        pattern = props["EventPattern"]
        request["EventPattern"] = pattern if isinstance(pattern, str) else json.dumps(pattern)
    arn = clients.events.put_rule(**request)["RuleArn"]
    on_bus = {"EventBusName": bus} if bus else {}
    targets = props.get("Targets", [])
    current = clients.events.list_targets_by_rule(Rule=name, **on_bus).get("Targets", [])
    stale = [t["Id"] for t in current if t["Id"] not in {target["Id"] for target in targets}]
    if stale:
        clients.events.remove_targets(Rule=name, Ids=stale, **on_bus)
    if targets:
        clients.events.put_targets(Rule=name, Targets=targets, **on_bus)
    # Ref of a rule on a custom bus is `bus|rule`; on the default bus just the rule name.
    deployment.physical_ids[resource.logical_id] = f"{bus}|{name}" if bus and bus != "default" else name
    deployment.attributes[resource.logical_id] = {"Arn": arn}


def _provision_secret(deployment: Deployment, clients: Clients, resource: Resource, override: str | None) -> None:
    secret = deployment.template.secrets[resource.logical_id]
    name = (
        deployment.resolve(secret.name)
        if secret.name
        else physical_name(deployment.template.stack_name, resource.logical_id, resource.type)
    )
    manager = clients.secretsmanager
    try:
        arn = manager.describe_secret(SecretId=name)["ARN"]
        if override is not None and manager.get_secret_value(SecretId=arn)["SecretString"] != override:
            manager.put_secret_value(SecretId=arn, SecretString=override)
    except manager.exceptions.ResourceNotFoundException:
        if override is not None:
            value = override
        elif secret.generate is not None:
            value = secret.generate.generate()
        elif secret.secret_string is not None:
            value = str(deployment.resolve(secret.secret_string))
        else:
            raise ProvisioningError(
                f"secret {resource.logical_id} has neither GenerateSecretString nor SecretString"
            ) from None
        request = {"Name": name, "SecretString": value}
        if secret.description:
            request["Description"] = str(deployment.resolve(secret.description))
        arn = manager.create_secret(**request)["ARN"]
    deployment.physical_ids[resource.logical_id] = arn
    deployment.attributes[resource.logical_id] = {"Id": arn}


def creation_order(template: Template) -> list[Resource]:
    """The provisionable resources, each after every provisionable resource it references or depends on."""
    pending = {lid: r for lid, r in template.resources.items() if r.type in PROVISIONED}
    needs = {
        lid: {d for d in (*referenced_ids(r.properties), *r.depends_on) if d in pending and d != lid}
        for lid, r in pending.items()
    }
    order: list[Resource] = []
    done: set[str] = set()
    while len(done) < len(pending):
        ready = [lid for lid in pending if lid not in done and needs[lid] <= done]
        if not ready:
            raise TemplateError(f"circular references among {sorted(set(pending) - done)}")
        for lid in ready:
            order.append(pending[lid])
            done.add(lid)
    return order


def provision(
    source: CloudAssembly | Template,
    clients: Clients,
    *,
    secret_values: Mapping[str, str] | None = None,
    api_ids: Mapping[str, str] | None = None,
    account: str = DEFAULT_ACCOUNT,
) -> Deployment:
    """Create (or find) every table, queue, bus, rule and secret of the template in moto; idempotent.

    `secret_values` maps a secret's logical id to the value to store instead of a generated
    one (a development key from QT_JWT_SECRET, say); an existing secret is updated to it.
    `api_ids` maps an API's logical id to the id Ref returns (see `Deployment.bind_api`).
    """
    template = source.template if isinstance(source, CloudAssembly) else source
    secret_values = dict(secret_values or {})
    unknown = set(secret_values) - set(template.secrets)
    if unknown:
        raise ProvisioningError(f"secret_values for {sorted(unknown)}, which are not secrets of the template")
    # Pipes run as pumps once the stack serves (local.pipes); one the local stack cannot run fails the deploy now.
    _ = template.pipes
    deployment = Deployment(template=template, region=clients.region, account=account, api_ids=dict(api_ids or {}))
    tables: set[str] = set()
    for page in clients.dynamodb.get_paginator("list_tables").paginate():
        tables.update(page.get("TableNames", []))
    for resource in creation_order(template):
        try:
            if resource.type == TABLE:
                _provision_table(deployment, clients, resource, tables)
            elif resource.type == QUEUE:
                _provision_queue(deployment, clients, resource)
            elif resource.type == EVENT_BUS:
                _provision_bus(deployment, clients, resource)
            elif resource.type == RULE:
                _provision_rule(deployment, clients, resource)
            else:
                _provision_secret(deployment, clients, resource, secret_values.get(resource.logical_id))
        except (ProvisioningError, TemplateError):
            raise
        except Exception as error:  # botocore's ClientError and friends: say which resource failed
            raise ProvisioningError(f"{resource.type} {resource.logical_id}: {error}") from error
    return deployment
