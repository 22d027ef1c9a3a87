"""A typed, read-only view of a synthesized CloudFormation template and its cloud assembly.

Values that CloudFormation resolves at deploy time (Ref, Fn::GetAtt, Fn::Join ...)
are kept as they are in the template; `local.cloud.deploy.Deployment.resolve`
turns them into local physical values. Where a view needs to know *which*
resource a value points at (a rule target's queue, a route's function), it
follows the Ref or Fn::GetAtt to a logical id.

The shapes read here are the ones CDK writes; see the synthesized
`QuantTradeStack.template.json` under `.build/assembly/`.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from local.cloud.pipe_paths import InputTemplate, PipeParameter, PipePathError

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

ASSET_PATH_METADATA = "aws:asset:path"


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


# ---------------------------------------------------------------------- DynamoDB


@dataclass(frozen=True)
class KeyElement:
    attribute: str
    key_type: str  # HASH | RANGE


@dataclass(frozen=True)
class SecondaryIndex:
    name: str
    key_schema: tuple[KeyElement, ...]
    projection_type: str  # ALL | KEYS_ONLY | INCLUDE
    non_key_attributes: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    logical_id: str
    table_name: Any  # the TableName property, or None: CloudFormation names it
    key_schema: tuple[KeyElement, ...]
    attribute_types: dict[str, str]  # attribute -> S | N | B
    global_indexes: tuple[SecondaryIndex, ...]
    local_indexes: tuple[SecondaryIndex, ...]
    ttl_attribute: str | None
    billing_mode: str
    stream_view_type: str | None
    properties: dict[str, Any]

    @property
    def partition_key(self) -> str:
        return next(k.attribute for k in self.key_schema if k.key_type == "HASH")

    @property
    def sort_key(self) -> str | None:
        return next((k.attribute for k in self.key_schema if k.key_type == "RANGE"), None)


def _key_schema(raw: list[dict[str, str]]) -> tuple[KeyElement, ...]:
    return tuple(KeyElement(k["AttributeName"], k["KeyType"]) for k in raw)


def _index(raw: dict[str, Any]) -> SecondaryIndex:
    projection = raw.get("Projection", {})
    return SecondaryIndex(
        name=raw["IndexName"],
        key_schema=_key_schema(raw["KeySchema"]),
        projection_type=projection.get("ProjectionType", "KEYS_ONLY"),
        non_key_attributes=tuple(projection.get("NonKeyAttributes", ())),
    )


def _table(resource: Resource) -> Table:
    p = resource.properties
    ttl = p.get("TimeToLiveSpecification") or {}
    stream = p.get("StreamSpecification") or {}
    return Table(
        logical_id=resource.logical_id,
        table_name=p.get("TableName"),
        key_schema=_key_schema(p["KeySchema"]),
        attribute_types={a["AttributeName"]: a["AttributeType"] for a in p.get("AttributeDefinitions", [])},
        global_indexes=tuple(_index(i) for i in p.get("GlobalSecondaryIndexes", [])),
        local_indexes=tuple(_index(i) for i in p.get("LocalSecondaryIndexes", [])),
        ttl_attribute=ttl.get("AttributeName") if ttl.get("Enabled") in (True, "true") else None,
        billing_mode=p.get("BillingMode", "PROVISIONED"),
        stream_view_type=stream.get("StreamViewType"),
        properties=p,
    )


# ---------------------------------------------------------------------- SQS


@dataclass(frozen=True)
class Queue:
    logical_id: str
    queue_name: Any  # the QueueName property, or None
    fifo: bool
    content_based_deduplication: bool
    visibility_timeout: int | None  # seconds; None: SQS's default (30)
    message_retention: int | None  # seconds; None: SQS's default (4 days)
    dead_letter_queue: str | None  # logical id of the redrive target
    max_receive_count: int | None
    properties: dict[str, Any]


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _queue(resource: Resource) -> Queue:
    p = resource.properties
    redrive = p.get("RedrivePolicy")
    if isinstance(redrive, str):
        redrive = json.loads(redrive)
    dlq = None
    if redrive:
        targets = referenced_ids(redrive.get("deadLetterTargetArn"))
        dlq = targets[0] if targets else None
    return Queue(
        logical_id=resource.logical_id,
        queue_name=p.get("QueueName"),
        fifo=_truthy(p.get("FifoQueue")),
        content_based_deduplication=_truthy(p.get("ContentBasedDeduplication")),
        visibility_timeout=_optional_int(p.get("VisibilityTimeout")),
        message_retention=_optional_int(p.get("MessageRetentionPeriod")),
        dead_letter_queue=dlq,
        max_receive_count=_optional_int(redrive.get("maxReceiveCount")) if redrive else None,
        properties=p,
    )


# ---------------------------------------------------------------------- EventBridge


@dataclass(frozen=True)
class EventBus:
    logical_id: str
    name: str


@dataclass(frozen=True)
class RuleTarget:
    id: str
    arn: Any  # unresolved
    target_logical_id: str | None  # the resource the Arn points at (a queue, a function), if in this template
    message_group_id: str | None
    input: str | None
    input_path: str | None
    input_transformer: dict[str, Any] | None
    dead_letter_arn: Any
    dead_letter_logical_id: str | None
    retry_policy: dict[str, Any] | None
    raw: dict[str, Any]


@dataclass(frozen=True)
class Rule:
    logical_id: str
    name: Any  # the Name property, or None
    bus_logical_id: str | None  # the bus in this template it sits on; None with bus_name None: the default bus
    bus_name: Any  # EventBusName when it is not a Ref to a bus in this template
    event_pattern: dict[str, Any] | None
    schedule_expression: str | None
    state: str
    description: str | None
    targets: tuple[RuleTarget, ...]


def _first_ref(value: Any) -> str | None:
    ids = referenced_ids(value)
    return ids[0] if ids else None


def _rule_target(raw: dict[str, Any]) -> RuleTarget:
    dead_letter = (raw.get("DeadLetterConfig") or {}).get("Arn")
    return RuleTarget(
        id=raw["Id"],
        arn=raw["Arn"],
        target_logical_id=_first_ref(raw["Arn"]),
        message_group_id=(raw.get("SqsParameters") or {}).get("MessageGroupId"),
        input=raw.get("Input"),
        input_path=raw.get("InputPath"),
        input_transformer=raw.get("InputTransformer"),
        dead_letter_arn=dead_letter,
        dead_letter_logical_id=_first_ref(dead_letter) if dead_letter is not None else None,
        retry_policy=raw.get("RetryPolicy"),
        raw=raw,
    )


# ---------------------------------------------------------------------- Secrets Manager

# Secrets Manager's punctuation set for generated passwords.
PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


@dataclass(frozen=True)
class GenerateSecretString:
    """`GenerateSecretString` with Secrets Manager's defaults."""

    password_length: int = 32
    exclude_characters: str = ""
    exclude_lowercase: bool = False
    exclude_uppercase: bool = False
    exclude_numbers: bool = False
    exclude_punctuation: bool = False
    include_space: bool = False
    require_each_included_type: bool = True
    secret_string_template: str | None = None
    generate_string_key: str | None = None

    @classmethod
    def from_properties(cls, raw: dict[str, Any]) -> GenerateSecretString:
        return cls(
            password_length=int(raw.get("PasswordLength", 32)),
            exclude_characters=raw.get("ExcludeCharacters", ""),
            exclude_lowercase=_truthy(raw.get("ExcludeLowercase", False)),
            exclude_uppercase=_truthy(raw.get("ExcludeUppercase", False)),
            exclude_numbers=_truthy(raw.get("ExcludeNumbers", False)),
            exclude_punctuation=_truthy(raw.get("ExcludePunctuation", False)),
            include_space=_truthy(raw.get("IncludeSpace", False)),
            require_each_included_type=_truthy(raw.get("RequireEachIncludedType", True)),
            secret_string_template=raw.get("SecretStringTemplate"),
            generate_string_key=raw.get("GenerateStringKey"),
        )

    def character_classes(self) -> list[str]:
        classes = []
        for excluded, chars in (
            (self.exclude_lowercase, string.ascii_lowercase),
            (self.exclude_uppercase, string.ascii_uppercase),
            (self.exclude_numbers, string.digits),
            (self.exclude_punctuation, PUNCTUATION),
        ):
            if not excluded:
                classes.append("".join(c for c in chars if c not in self.exclude_characters))
        if self.include_space and " " not in self.exclude_characters:
            classes.append(" ")
        return [c for c in classes if c]

    def generate(self) -> str:
        """A fresh value as Secrets Manager would generate it for this spec (the JSON template filled, if any)."""
        classes = self.character_classes()
        if not classes:
            raise TemplateError("GenerateSecretString excludes every character")
        if self.require_each_included_type and len(classes) > self.password_length:
            raise TemplateError(
                f"PasswordLength {self.password_length} is too short to include each of {len(classes)} character types"
            )
        alphabet = "".join(classes)
        rng = secrets.SystemRandom()
        while True:
            password = "".join(rng.choice(alphabet) for _ in range(self.password_length))
            if not self.require_each_included_type or all(any(c in cls for c in password) for cls in classes):
                break
        if self.generate_string_key is None:
            return password
        if self.secret_string_template is None:
            raise TemplateError("GenerateStringKey needs SecretStringTemplate")
        document = json.loads(self.secret_string_template)
        document[self.generate_string_key] = password
        return json.dumps(document)

    def admits(self, value: str) -> bool:
        """Whether `value` could have come from this spec (length and alphabet); for checks and overrides."""
        if self.generate_string_key is not None:
            value = str(json.loads(value).get(self.generate_string_key, ""))
        alphabet = set("".join(self.character_classes()))
        return len(value) == self.password_length and set(value) <= alphabet


@dataclass(frozen=True)
class Secret:
    logical_id: str
    name: Any  # the Name property, or None
    description: str | None
    generate: GenerateSecretString | None
    secret_string: Any  # a literal SecretString, when given instead of GenerateSecretString


# ---------------------------------------------------------------------- Lambda and IAM


@dataclass(frozen=True)
class Function:
    logical_id: str
    function_name: Any  # the FunctionName property, or None
    handler: str
    runtime: str
    timeout: int  # seconds
    memory_size: int  # MB
    reserved_concurrency: int | None
    architectures: tuple[str, ...]
    environment: dict[str, Any]  # unresolved: see Deployment.function_environment
    role_logical_id: str
    code_dir: Path
    layer_logical_ids: tuple[str, ...]
    # In the template's order: Lambda extracts the layers into /opt one after the other, so a later
    # layer's file replaces an earlier one's at the same path.
    layer_dirs: tuple[Path, ...]


@dataclass(frozen=True)
class RolePolicies:
    role_logical_id: str
    documents: tuple[Any, ...]  # unresolved policy documents: inline policies, then attached AWS::IAM::Policy
    managed_policy_arns: tuple[Any, ...]


@dataclass(frozen=True)
class EventSourceMapping:
    logical_id: str
    function_logical_id: str
    queue_logical_id: str
    batch_size: int | None
    maximum_batching_window: int | None  # seconds
    function_response_types: tuple[str, ...]
    maximum_concurrency: int | None
    enabled: bool

    @property
    def reports_batch_item_failures(self) -> bool:
        return "ReportBatchItemFailures" in self.function_response_types


# ---------------------------------------------------------------------- EventBridge Pipes

# What a pipe may declare for the local stack to run it; anything else fails the deploy by name.
PIPE_PROPERTIES = frozenset(
    {"Name", "Description", "RoleArn", "Source", "Target", "SourceParameters", "TargetParameters"}
    | {"DesiredState", "Tags"}
)
PIPE_SOURCE_SQS = frozenset({"BatchSize", "MaximumBatchingWindowInSeconds"})
PIPE_TARGET = frozenset({"InputTemplate", "SqsQueueParameters"})
PIPE_TARGET_SQS = frozenset({"MessageGroupId", "MessageDeduplicationId"})
SQS_TARGET_MAX_BATCH = 10  # SendMessageBatch's maximum, so a pipe to SQS batches at most 10


@dataclass(frozen=True)
class Pipe:
    """An EventBridge Pipe from an SQS queue of the template to another, with its target parameters parsed."""

    logical_id: str
    name: Any  # the Name property, or None
    role_logical_id: str
    source_logical_id: str
    target_logical_id: str
    batch_size: int
    maximum_batching_window: int  # seconds
    running: bool  # DesiredState RUNNING (the default)
    input_template: InputTemplate | None
    message_group_id: PipeParameter | None
    message_deduplication_id: PipeParameter | None

    def target_message(self, event: dict[str, Any]) -> dict[str, str]:
        """SendMessageBatch's entry fields for one source event (see `pipe_paths.sqs_source_event`).

        Raises `UnresolvedPath` when a parameter's path finds no usable value: the record fails.
        """
        if self.input_template is not None:
            body = self.input_template.render(event)
        else:
            # No template: the target gets the pipe's event, the record with its body as SQS gave it.
            raw = event["body"] if isinstance(event["body"], str) else json.dumps(event["body"])
            body = json.dumps({**event, "body": raw})
        message = {"MessageBody": body}
        if self.message_group_id is not None:
            message["MessageGroupId"] = self.message_group_id.render(event)
        if self.message_deduplication_id is not None:
            message["MessageDeduplicationId"] = self.message_deduplication_id.render(event)
        return message


def _only(raw: dict[str, Any], known: frozenset[str], where: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise TemplateError(f"{where}: {unknown} are not run by the local stack (known: {sorted(known)})")


# ---------------------------------------------------------------------- API Gateway v2


@dataclass(frozen=True)
class ApiRoute:
    logical_id: str
    route_key: str
    authorization_type: str
    authorizer_logical_id: str | None
    integration_logical_id: str
    function_logical_id: str


@dataclass(frozen=True)
class ApiAuthorizer:
    logical_id: str
    name: str
    authorizer_type: str
    function_logical_id: str
    identity_source: tuple[str, ...]


@dataclass(frozen=True)
class Api:
    logical_id: str
    name: str
    protocol: str  # WEBSOCKET | HTTP
    route_selection_expression: str | None
    routes: dict[str, ApiRoute]  # by route key
    authorizers: dict[str, ApiAuthorizer]  # by logical id
    stage_names: tuple[str, ...]

    @property
    def stage_name(self) -> str:
        if len(self.stage_names) != 1:
            raise TemplateError(f"API {self.logical_id} has stages {list(self.stage_names)}, not exactly one")
        return self.stage_names[0]

    def authorizer_of(self, route_key: str) -> ApiAuthorizer | None:
        route = self.routes[route_key]
        return self.authorizers[route.authorizer_logical_id] if route.authorizer_logical_id else None


# ---------------------------------------------------------------------- the template


class Template:
    """The resources of one stack template, and typed views of the kinds the local stack runs."""

    def __init__(self, document: dict[str, Any], *, assembly_dir: Path, stack_name: str) -> None:
        self.document = document
        self.assembly_dir = assembly_dir
        self.stack_name = stack_name
        self.resources: dict[str, Resource] = {
            logical_id: Resource(
                logical_id=logical_id,
                type=raw["Type"],
                properties=raw.get("Properties", {}),
                metadata=raw.get("Metadata", {}),
                depends_on=tuple(
                    [raw["DependsOn"]] if isinstance(raw.get("DependsOn"), str) else raw.get("DependsOn", ())
                ),
            )
            for logical_id, raw in document.get("Resources", {}).items()
        }

    def of_type(self, resource_type: str) -> Iterator[Resource]:
        return (r for r in self.resources.values() if r.type == resource_type)

    def resource(self, logical_id: str, resource_type: str | None = None) -> Resource:
        try:
            found = self.resources[logical_id]
        except KeyError:
            raise TemplateError(f"no resource {logical_id!r} in the {self.stack_name} template") from None
        if resource_type is not None and found.type != resource_type:
            raise TemplateError(f"{logical_id} is a {found.type}, not a {resource_type}")
        return found

    def _one_of_type(self, value: Any, resource_type: str, what: str) -> str:
        ids = [
            i
            for i in dict.fromkeys(referenced_ids(value))
            if self.resources.get(i, None) and self.resources[i].type == resource_type
        ]
        if len(ids) != 1:
            raise TemplateError(f"{what} should point at exactly one {resource_type}, found {ids}: {value!r}")
        return ids[0]

    def _asset_dir(self, resource: Resource) -> Path:
        relative = resource.metadata.get(ASSET_PATH_METADATA)
        if not relative:
            raise TemplateError(
                f"{resource.logical_id} has no {ASSET_PATH_METADATA} metadata: synthesize with the context "
                "aws:cdk:enable-asset-metadata=true (local.cloud.synthesize does)"
            )
        path = Path(relative)
        path = path if path.is_absolute() else self.assembly_dir / path
        if not path.is_dir():
            raise TemplateError(f"{resource.logical_id}'s asset directory {path} is missing from the assembly")
        return path

    # -------------------------------------------------------------- views

    @cached_property
    def tables(self) -> dict[str, Table]:
        return {r.logical_id: _table(r) for r in self.of_type(TABLE)}

    @cached_property
    def queues(self) -> dict[str, Queue]:
        return {r.logical_id: _queue(r) for r in self.of_type(QUEUE)}

    @cached_property
    def event_buses(self) -> dict[str, EventBus]:
        return {r.logical_id: EventBus(r.logical_id, r.properties["Name"]) for r in self.of_type(EVENT_BUS)}

    @cached_property
    def rules(self) -> dict[str, Rule]:
        rules = {}
        for r in self.of_type(RULE):
            p = r.properties
            bus = p.get("EventBusName")
            bus_id = _first_ref(bus) if bus is not None else None
            if bus_id is not None and bus_id not in self.event_buses:
                bus_id = None
            pattern = p.get("EventPattern")
            rules[r.logical_id] = Rule(
                logical_id=r.logical_id,
                name=p.get("Name"),
                bus_logical_id=bus_id,
                bus_name=None if bus_id is not None else bus,
                event_pattern=json.loads(pattern) if isinstance(pattern, str) else pattern,
                schedule_expression=p.get("ScheduleExpression"),
                state=p.get("State", "ENABLED"),
                description=p.get("Description"),
                targets=tuple(_rule_target(t) for t in p.get("Targets", [])),
            )
        return rules

    @property
    def schedules(self) -> dict[str, Rule]:
        """Rules that fire on a schedule rather than on matching events."""
        return {k: rule for k, rule in self.rules.items() if rule.schedule_expression}

    def scheduled_functions(self) -> list[tuple[str, str]]:
        """(schedule expression, function logical id) for every scheduled rule target that is a function here."""
        return [
            (rule.schedule_expression or "", target.target_logical_id)
            for rule in self.schedules.values()
            for target in rule.targets
            if target.target_logical_id in self.functions
        ]

    @cached_property
    def secrets(self) -> dict[str, Secret]:
        out = {}
        for r in self.of_type(SECRET):
            p = r.properties
            generate = p.get("GenerateSecretString")
            out[r.logical_id] = Secret(
                logical_id=r.logical_id,
                name=p.get("Name"),
                description=p.get("Description"),
                generate=GenerateSecretString.from_properties(generate) if generate is not None else None,
                secret_string=p.get("SecretString"),
            )
        return out

    @cached_property
    def functions(self) -> dict[str, Function]:
        out = {}
        for r in self.of_type(FUNCTION):
            p = r.properties
            if "Handler" not in p or "Runtime" not in p:
                raise TemplateError(
                    f"function {r.logical_id} has no Handler/Runtime (container images are not run locally)"
                )
            layer_ids = tuple(
                self._one_of_type(layer, LAYER, f"layer of {r.logical_id}") for layer in p.get("Layers", [])
            )
            out[r.logical_id] = Function(
                logical_id=r.logical_id,
                function_name=p.get("FunctionName"),
                handler=p["Handler"],
                runtime=p["Runtime"],
                timeout=int(p.get("Timeout", 3)),
                memory_size=int(p.get("MemorySize", 128)),
                reserved_concurrency=_optional_int(p.get("ReservedConcurrentExecutions")),
                architectures=tuple(p.get("Architectures", ["x86_64"])),
                environment=dict((p.get("Environment") or {}).get("Variables", {})),
                role_logical_id=self._one_of_type(p["Role"], ROLE, f"role of {r.logical_id}"),
                code_dir=self._asset_dir(r),
                layer_logical_ids=layer_ids,
                layer_dirs=tuple(self._asset_dir(self.resources[i]) for i in layer_ids),
            )
        return out

    def role_policies(self, role_logical_id: str) -> RolePolicies:
        role = self.resource(role_logical_id, ROLE)
        documents = [inline["PolicyDocument"] for inline in role.properties.get("Policies", [])]
        for policy in self.of_type(POLICY):
            attached = [i for ref in policy.properties.get("Roles", []) for i in referenced_ids(ref)]
            if role_logical_id in attached:
                documents.append(policy.properties["PolicyDocument"])
        return RolePolicies(role_logical_id, tuple(documents), tuple(role.properties.get("ManagedPolicyArns", ())))

    @cached_property
    def event_source_mappings(self) -> dict[str, EventSourceMapping]:
        out = {}
        for r in self.of_type(EVENT_SOURCE_MAPPING):
            p = r.properties
            out[r.logical_id] = EventSourceMapping(
                logical_id=r.logical_id,
                function_logical_id=self._one_of_type(p["FunctionName"], FUNCTION, f"function of {r.logical_id}"),
                queue_logical_id=self._one_of_type(p["EventSourceArn"], QUEUE, f"event source of {r.logical_id}"),
                batch_size=_optional_int(p.get("BatchSize")),
                maximum_batching_window=_optional_int(p.get("MaximumBatchingWindowInSeconds")),
                function_response_types=tuple(p.get("FunctionResponseTypes", ())),
                maximum_concurrency=_optional_int((p.get("ScalingConfig") or {}).get("MaximumConcurrency")),
                enabled=_truthy(p.get("Enabled", True)),
            )
        return out

    @cached_property
    def pipes(self) -> dict[str, Pipe]:
        """Every pipe, checked: SQS to SQS, with only the parameters the local stack evaluates."""
        return {r.logical_id: self._pipe(r) for r in self.of_type(PIPE)}

    def _pipe(self, resource: Resource) -> Pipe:
        p, where = resource.properties, f"pipe {resource.logical_id}"
        _only(p, PIPE_PROPERTIES, where)
        source = self._one_of_type(p.get("Source"), QUEUE, f"source of {where} (the local stack pipes SQS to SQS)")
        target = self._one_of_type(p.get("Target"), QUEUE, f"target of {where} (the local stack pipes SQS to SQS)")
        source_parameters = p.get("SourceParameters") or {}
        _only(source_parameters, frozenset({"SqsQueueParameters"}), f"{where} SourceParameters")
        sqs_source = source_parameters.get("SqsQueueParameters") or {}
        _only(sqs_source, PIPE_SOURCE_SQS, f"{where} SourceParameters.SqsQueueParameters")
        target_parameters = p.get("TargetParameters") or {}
        _only(target_parameters, PIPE_TARGET, f"{where} TargetParameters")
        sqs_target = target_parameters.get("SqsQueueParameters") or {}
        _only(sqs_target, PIPE_TARGET_SQS, f"{where} TargetParameters.SqsQueueParameters")
        batch_size = int(sqs_source.get("BatchSize", 10))
        if not 1 <= batch_size <= SQS_TARGET_MAX_BATCH:
            raise TemplateError(f"{where}: BatchSize {batch_size}; a pipe to an SQS queue takes 1 to 10")
        try:
            template = target_parameters.get("InputTemplate")
            pipe = Pipe(
                logical_id=resource.logical_id,
                name=p.get("Name"),
                role_logical_id=self._one_of_type(p.get("RoleArn"), ROLE, f"role of {where}"),
                source_logical_id=source,
                target_logical_id=target,
                batch_size=batch_size,
                maximum_batching_window=int(sqs_source.get("MaximumBatchingWindowInSeconds", 0)),
                running=p.get("DesiredState", "RUNNING") == "RUNNING",
                input_template=InputTemplate.parse(template) if template else None,
                message_group_id=PipeParameter.parse(sqs_target["MessageGroupId"])
                if "MessageGroupId" in sqs_target
                else None,
                message_deduplication_id=PipeParameter.parse(sqs_target["MessageDeduplicationId"])
                if "MessageDeduplicationId" in sqs_target
                else None,
            )
        except PipePathError as error:
            raise TemplateError(f"{where}: {error}") from None
        queue = self.queues[target]
        # What SQS would refuse on every send, refused at deploy instead.
        if queue.fifo and pipe.message_group_id is None:
            raise TemplateError(f"{where}: the target {target} is FIFO and the pipe sets no MessageGroupId")
        if queue.fifo and pipe.message_deduplication_id is None and not queue.content_based_deduplication:
            raise TemplateError(
                f"{where}: the target {target} is FIFO without content-based deduplication and the pipe sets no "
                "MessageDeduplicationId"
            )
        return pipe

    @cached_property
    def apis(self) -> dict[str, Api]:
        out = {}
        for api in self.of_type(API):

            def belongs(r: Resource, api_id: str = api.logical_id) -> bool:
                return api_id in referenced_ids(r.properties.get("ApiId"))

            authorizers = {
                a.logical_id: ApiAuthorizer(
                    logical_id=a.logical_id,
                    name=a.properties.get("Name", a.logical_id),
                    authorizer_type=a.properties["AuthorizerType"],
                    function_logical_id=self._one_of_type(
                        a.properties.get("AuthorizerUri"), FUNCTION, f"authorizer {a.logical_id}"
                    ),
                    identity_source=tuple(a.properties.get("IdentitySource", ())),
                )
                for a in self.of_type(AUTHORIZER)
                if belongs(a)
            }
            routes = {}
            for route in (r for r in self.of_type(ROUTE) if belongs(r)):
                p = route.properties
                integration_id = self._one_of_type(p.get("Target"), INTEGRATION, f"target of route {route.logical_id}")
                integration = self.resources[integration_id]
                routes[p["RouteKey"]] = ApiRoute(
                    logical_id=route.logical_id,
                    route_key=p["RouteKey"],
                    authorization_type=p.get("AuthorizationType", "NONE"),
                    authorizer_logical_id=_first_ref(p["AuthorizerId"]) if "AuthorizerId" in p else None,
                    integration_logical_id=integration_id,
                    function_logical_id=self._one_of_type(
                        integration.properties.get("IntegrationUri"), FUNCTION, f"integration {integration_id}"
                    ),
                )
            out[api.logical_id] = Api(
                logical_id=api.logical_id,
                name=api.properties.get("Name", api.logical_id),
                protocol=api.properties["ProtocolType"],
                route_selection_expression=api.properties.get("RouteSelectionExpression"),
                routes=routes,
                authorizers=authorizers,
                stage_names=tuple(s.properties["StageName"] for s in self.of_type(STAGE) if belongs(s)),
            )
        return out

    def _only_api(self, protocol: str) -> Api:
        found = [a for a in self.apis.values() if a.protocol == protocol]
        if len(found) != 1:
            raise TemplateError(f"expected one {protocol} API in the template, found {[a.logical_id for a in found]}")
        return found[0]

    @property
    def websocket_api(self) -> Api:
        return self._only_api("WEBSOCKET")

    @property
    def http_api(self) -> Api:
        return self._only_api("HTTP")


# ---------------------------------------------------------------------- the cloud assembly

STACK_ARTIFACT = "aws:cloudformation:stack"


@dataclass(frozen=True)
class CloudAssembly:
    """A synthesized cloud assembly directory (what `cdk synth` writes to cdk.out) and its stack templates."""

    directory: Path
    templates: dict[str, Template]  # by stack (artifact) name
    cached: bool = False  # True when synthesize() reused the directory instead of running the app
    context: dict[str, str] = field(default_factory=dict)  # the context synthesize() was given

    @classmethod
    def load(cls, directory: Path, *, cached: bool = False, context: dict[str, str] | None = None) -> CloudAssembly:
        manifest_path = directory / "manifest.json"
        if not manifest_path.is_file():
            raise TemplateError(f"{directory} is not a cloud assembly: no manifest.json")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        templates = {}
        for name, artifact in manifest.get("artifacts", {}).items():
            if artifact.get("type") != STACK_ARTIFACT:
                continue
            template_file = directory / artifact["properties"]["templateFile"]
            document = json.loads(template_file.read_text(encoding="utf-8"))
            templates[name] = Template(document, assembly_dir=directory, stack_name=name)
        if not templates:
            raise TemplateError(f"the cloud assembly in {directory} holds no stack")
        return cls(directory=directory, templates=templates, cached=cached, context=dict(context or {}))

    @property
    def template(self) -> Template:
        """The one stack's template; the app synthesizes one stack."""
        if len(self.templates) != 1:
            raise TemplateError(f"the assembly holds stacks {sorted(self.templates)}; pick one from .templates")
        return next(iter(self.templates.values()))
