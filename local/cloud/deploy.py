"""Create a template's tables, queues, bus, rules and secrets in moto, and resolve the template against them.

`provision()` is the local `cdk deploy`: it walks the provisionable resources
in dependency order (a dead-letter queue before the queue that redrives to it,
the bus and the queues before the rules that target them) and returns a
`Deployment`, the local stack's record of each logical id's physical id (what
Ref returns) and attributes (what Fn::GetAtt returns).

Physical names follow CloudFormation: the template's name where it gives one
(TableName, QueueName, Name), otherwise `<stack>-<LogicalId>-<SUFFIX>`, with
`.fifo` for FIFO queues. The suffix is where CloudFormation puts randomness;
here it is a digest of the stack, the logical id and the resource's creation
request instead. So provisioning again into the same moto (a restarted stack)
finds the same resources and keeps their data, while a changed declaration
(another key schema, a queue turned FIFO) gets a fresh resource, as a
CloudFormation replacement would, instead of silently reusing a stale one.

Resources that run elsewhere locally (functions, roles, log groups, the APIs)
are not created; they get CloudFormation-shaped physical ids and ARNs so that
environments and policies that mention them resolve. The APIs' ids can be
bound to the local gateway, see `Deployment.bind_api`.
"""

from __future__ import annotations

import hashlib
import json
import re
from base64 import b32encode
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from local.cloud.assembly import CloudAssembly
from local.cloud.intrinsics import Resolver, UnresolvableError
from local.cloud.resources import resource as cfn
from local.cloud.resources.resource import TemplateError
from local.cloud.template import Template

DEFAULT_ACCOUNT = "123456789012"  # moto's default account
PARTITION = "aws"
URL_SUFFIX = "amazonaws.com"

# Longest physical name each service accepts (CloudFormation shortens the stack and logical id parts to fit).
NAME_LIMITS = {cfn.TABLE: 255, cfn.QUEUE: 80, cfn.EVENT_BUS: 256, cfn.RULE: 64, cfn.SECRET: 512, cfn.FUNCTION: 64}
DEFAULT_NAME_LIMIT = 128

PROVISIONED = (cfn.TABLE, cfn.QUEUE, cfn.EVENT_BUS, cfn.RULE, cfn.SECRET)

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


def _suffix(*parts: Any) -> str:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return b32encode(digest).decode()[:12]


def physical_name(stack: str, logical_id: str, resource_type: str, seed: Any = None, *, fifo: bool = False) -> str:
    """`<stack>-<LogicalId>-<SUFFIX>` (`.fifo` appended for FIFO queues), shortened to the service's limit."""
    suffix = _suffix(stack, logical_id, seed)
    tail = ".fifo" if fifo else ""
    room = NAME_LIMITS.get(resource_type, DEFAULT_NAME_LIMIT) - len(suffix) - len(tail) - 2
    stack_part = stack[: max(room // 2, room - len(logical_id))]
    logical_part = logical_id[: room - len(stack_part)]
    return f"{stack_part}-{logical_part}-{suffix}{tail}"


@dataclass
class Deployment:
    """Each logical id's local physical id and attributes, and resolution of template values against them."""

    template: Template
    region: str
    account: str = DEFAULT_ACCOUNT
    physical_ids: dict[str, str] = field(default_factory=dict)  # Ref of the provisioned resources
    attributes: dict[str, dict[str, str]] = field(default_factory=dict)  # Fn::GetAtt of the provisioned resources
    api_ids: dict[str, str] = field(default_factory=dict)  # API logical id -> API id
    local_endpoints: dict[str, str] = field(default_factory=dict)  # API logical id -> local base URL

    def __post_init__(self) -> None:
        self._resolver = Resolver(
            ref=self.ref,
            get_att=self.get_att,
            pseudo={
                "AWS::Region": self.region,
                "AWS::AccountId": self.account,
                "AWS::Partition": PARTITION,
                "AWS::URLSuffix": URL_SUFFIX,
                "AWS::StackName": self.template.stack_name,
                "AWS::StackId": (
                    f"arn:{PARTITION}:cloudformation:{self.region}:{self.account}:stack/"
                    f"{self.template.stack_name}/{_suffix(self.template.stack_name).lower()}"
                ),
                "AWS::NoValue": "",
            },
            parameters=self.template.document.get("Parameters", {}),
        )

    # -------------------------------------------------------------- the local API Gateway

    def bind_api(self, api_logical_id: str, *, local_base_url: str, api_id: str | None = None) -> None:
        """Point an API's AWS endpoint at the local gateway, e.g. `http://127.0.0.1:8081`.

        Afterwards `function_environment` (and `localize`) turn
        `https://<apiId>.execute-api.<region>.amazonaws.com/<stage>` into `<local_base_url>/<stage>`,
        and the `wss://` form into the `ws://` one. `api_id`, if given, is what Ref of the API
        returns (the gateway's own id, say); otherwise a CloudFormation-shaped id is used.
        """
        self.template.resource(api_logical_id, cfn.API)
        if api_id is not None:
            self.api_ids[api_logical_id] = api_id
        self.local_endpoints[api_logical_id] = local_base_url.rstrip("/")

    def execute_api_host(self, api_logical_id: str) -> str:
        return f"{self.ref(api_logical_id)}.execute-api.{self.region}.{URL_SUFFIX}"

    def localize(self, text: str) -> str:
        """`text` with every bound API's AWS endpoint replaced by its local one."""
        for api_logical_id, base in self.local_endpoints.items():
            host = re.escape(self.execute_api_host(api_logical_id))
            socket_base = re.sub(r"^http", "ws", base)
            text = re.sub(rf"https://{host}(?![\w.-])", base, text)
            text = re.sub(rf"wss://{host}(?![\w.-])", socket_base, text)
        return text

    # -------------------------------------------------------------- resolution

    def resolve(self, value: Any) -> Any:
        """A template value with every intrinsic function replaced by its local value."""
        return self._resolver.resolve(value)

    def ref(self, logical_id: str) -> str:
        if logical_id in self.physical_ids:
            return self.physical_ids[logical_id]
        resource = self.template.resource(logical_id)
        if resource.type in PROVISIONED:
            raise UnresolvableError(f"{logical_id} ({resource.type}) is referenced before it is provisioned")
        return self._synthetic(resource)["Ref"]

    def get_att(self, logical_id: str, attribute: str) -> str:
        resource = self.template.resource(logical_id)
        known = self.attributes.get(logical_id)
        if known is None:
            if resource.type in PROVISIONED:
                raise UnresolvableError(f"{logical_id} ({resource.type}) is referenced before it is provisioned")
            known = self._synthetic(resource)
        try:
            return known[attribute]
        except KeyError:
            raise UnresolvableError(
                f"Fn::GetAtt {logical_id}.{attribute} ({resource.type}) has no local value"
            ) from None

    def _arn(self, service: str, resource: str, *, region: bool = True, account: bool = True) -> str:
        return f"arn:{PARTITION}:{service}:{self.region if region else ''}:{self.account if account else ''}:{resource}"

    def _synthetic(self, resource: cfn.Resource) -> dict[str, str]:
        """CloudFormation-shaped values for a resource that is not created locally."""
        stack, lid, props, kind = self.template.stack_name, resource.logical_id, resource.properties, resource.type
        short_id = _suffix(stack, lid).lower()[:10]
        if kind == cfn.FUNCTION:
            name = props.get("FunctionName") or physical_name(stack, lid, kind)
            return {"Ref": name, "Arn": self._arn("lambda", f"function:{name}")}
        if kind == cfn.ROLE:
            name = props.get("RoleName") or physical_name(stack, lid, kind)[:64]
            return {"Ref": name, "Arn": self._arn("iam", f"role/{name}", region=False), "RoleId": "AROA" + short_id}
        if kind == "AWS::Logs::LogGroup":
            name = props.get("LogGroupName") or physical_name(stack, lid, kind)
            return {"Ref": name, "Arn": self._arn("logs", f"log-group:{name}:*")}
        if kind == cfn.LAYER:
            name = props.get("LayerName") or lid
            return {"Ref": self._arn("lambda", f"layer:{name}:1")}
        if kind == cfn.API:
            api_id = self.api_ids.get(lid) or short_id
            scheme = "wss" if props.get("ProtocolType") == "WEBSOCKET" else "https"
            return {
                "Ref": api_id,
                "ApiId": api_id,
                "ApiEndpoint": f"{scheme}://{api_id}.execute-api.{self.region}.{URL_SUFFIX}",
            }
        if kind == cfn.STAGE:
            return {"Ref": str(self.resolve(props["StageName"]))}
        if kind == "AWS::CloudWatch::Alarm":
            name = props.get("AlarmName") or physical_name(stack, lid, kind)
            return {"Ref": name, "Arn": self._arn("cloudwatch", f"alarm:{name}")}
        if kind == "AWS::SNS::Topic":
            name = props.get("TopicName") or physical_name(stack, lid, kind)
            arn = self._arn("sns", name)
            return {"Ref": arn, "TopicArn": arn, "TopicName": name}
        if kind == cfn.PIPE:
            name = props.get("Name") or physical_name(stack, lid, kind)
            return {"Ref": name, "Arn": self._arn("pipes", f"pipe/{name}")}
        if kind == "AWS::KMS::Key":
            key_id = str(_uuid_like(stack, lid))
            return {"Ref": key_id, "KeyId": key_id, "Arn": self._arn("kms", f"key/{key_id}")}
        # Routes, integrations, authorizers, policies, permissions...: Ref is an opaque id.
        return {"Ref": short_id}

    # -------------------------------------------------------------- what the local functions need

    def function_environment(self, function_logical_id: str) -> dict[str, str]:
        """The function's template environment, resolved, with bound APIs' endpoints made local."""
        try:
            function = self.template.functions[function_logical_id]
        except KeyError:
            raise TemplateError(f"no function {function_logical_id!r} in the template") from None
        environment = {}
        for name, value in function.environment.items():
            resolved = self.resolve(value)
            if isinstance(resolved, (dict, list)):
                raise UnresolvableError(f"{function_logical_id} variable {name} resolves to {resolved!r}, not text")
            text = ("true" if resolved else "false") if isinstance(resolved, bool) else str(resolved)
            environment[name] = self.localize(text)
        return environment

    def role_policies(self, function_logical_id: str) -> list[dict[str, Any]]:
        """The resolved policy documents of the function's role (inline policies, then attached AWS::IAM::Policy)."""
        return self.role_documents(self.template.functions[function_logical_id].role_logical_id)

    def role_documents(self, role_logical_id: str) -> list[dict[str, Any]]:
        """The resolved policy documents of a role of the template (a function's, a pipe's)."""
        policies = self.template.role_policies(role_logical_id)
        if policies.managed_policy_arns:
            managed = self.resolve(list(policies.managed_policy_arns))
            raise UnresolvableError(
                f"role {role_logical_id} has managed policies {managed}, whose documents the template lacks"
            )
        return [self.resolve(document) for document in policies.documents]

    def outputs(self) -> dict[str, str]:
        """The stack outputs, resolved and localized."""
        return {
            name: self.localize(str(self.resolve(output["Value"])))
            for name, output in self.template.document.get("Outputs", {}).items()
        }


def _uuid_like(*parts: str) -> str:
    digest = hashlib.sha256("/".join(parts).encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


# ---------------------------------------------------------------------- provisioning


def _attribute_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _unknown(resource: cfn.Resource, known: frozenset[str]) -> None:
    unknown = sorted(set(resource.properties) - known)
    if unknown:
        raise ProvisioningError(
            f"{resource.type} {resource.logical_id}: properties {unknown} are not provisioned locally"
        )


def _provision_table(deployment: Deployment, clients: Clients, resource: cfn.Resource, existing: set[str]) -> None:
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


def _provision_queue(deployment: Deployment, clients: Clients, resource: cfn.Resource) -> None:
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


def _provision_bus(deployment: Deployment, clients: Clients, resource: cfn.Resource) -> None:
    name = deployment.resolve(resource.properties["Name"])
    try:
        arn = clients.events.describe_event_bus(Name=name)["Arn"]
    except clients.events.exceptions.ResourceNotFoundException:
        arn = clients.events.create_event_bus(Name=name)["EventBusArn"]
    deployment.physical_ids[resource.logical_id] = name
    deployment.attributes[resource.logical_id] = {"Arn": arn, "Name": name}


def _provision_rule(deployment: Deployment, clients: Clients, resource: cfn.Resource) -> None:
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


def _provision_secret(deployment: Deployment, clients: Clients, resource: cfn.Resource, override: str | None) -> None:
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


def creation_order(template: Template) -> list[cfn.Resource]:
    """The provisionable resources, each after every provisionable resource it references or depends on."""
    pending = {lid: r for lid, r in template.resources.items() if r.type in PROVISIONED}
    needs = {
        lid: {d for d in (*cfn.referenced_ids(r.properties), *r.depends_on) if d in pending and d != lid}
        for lid, r in pending.items()
    }
    order: list[cfn.Resource] = []
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
            if resource.type == cfn.TABLE:
                _provision_table(deployment, clients, resource, tables)
            elif resource.type == cfn.QUEUE:
                _provision_queue(deployment, clients, resource)
            elif resource.type == cfn.EVENT_BUS:
                _provision_bus(deployment, clients, resource)
            elif resource.type == cfn.RULE:
                _provision_rule(deployment, clients, resource)
            else:
                _provision_secret(deployment, clients, resource, secret_values.get(resource.logical_id))
        except (ProvisioningError, TemplateError):
            raise
        except Exception as error:  # botocore's ClientError and friends: say which resource failed
            raise ProvisioningError(f"{resource.type} {resource.logical_id}: {error}") from error
    return deployment
