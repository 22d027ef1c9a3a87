"""The resources of one synthesized stack template, and the typed views of the kinds the local stack runs.

The views themselves (a table, a queue, a rule, a function, an API...) are
defined per service in `local.cloud.resources`; this is where they are read
from the template's document and where the lookups they share live (a resource
by logical id, the one resource of a type a value points at, an asset's directory
in the assembly).

The shapes read here are the ones CDK writes; see the synthesized
`QuantTradeStack.template.json` under `.build/assembly/`.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

from local.cloud.resources.api_gateway import Api, read_api
from local.cloud.resources.dynamodb import Table, read_table
from local.cloud.resources.eventbridge import EventBus, Rule, read_rule
from local.cloud.resources.iam import RolePolicies, read_role_policies
from local.cloud.resources.lambda_functions import (
    EventSourceMapping,
    Function,
    read_event_source_mapping,
    read_function,
)
from local.cloud.resources.pipes import Pipe, read_pipe
from local.cloud.resources.resource import (
    API,
    EVENT_BUS,
    EVENT_SOURCE_MAPPING,
    FUNCTION,
    PIPE,
    QUEUE,
    RULE,
    SECRET,
    TABLE,
    Resource,
    TemplateError,
    referenced_ids,
)
from local.cloud.resources.secrets_manager import Secret, read_secret
from local.cloud.resources.sqs import Queue, read_queue

ASSET_PATH_METADATA = "aws:asset:path"


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

    def one_of_type(self, value: Any, resource_type: str, what: str) -> str:
        """The logical id of the one `resource_type` that `value` points at; `what` names the value in errors."""
        ids = [
            i
            for i in dict.fromkeys(referenced_ids(value))
            if self.resources.get(i, None) and self.resources[i].type == resource_type
        ]
        if len(ids) != 1:
            raise TemplateError(f"{what} should point at exactly one {resource_type}, found {ids}: {value!r}")
        return ids[0]

    def asset_dir(self, resource: Resource) -> Path:
        """The directory in the assembly holding a function's code or a layer's content."""
        relative = resource.metadata.get(ASSET_PATH_METADATA)
        if not relative:
            raise TemplateError(
                f"{resource.logical_id} has no {ASSET_PATH_METADATA} metadata: synthesize with the context "
                "aws:cdk:enable-asset-metadata=true (local.cloud.synth.synthesize does)"
            )
        path = Path(relative)
        path = path if path.is_absolute() else self.assembly_dir / path
        if not path.is_dir():
            raise TemplateError(f"{resource.logical_id}'s asset directory {path} is missing from the assembly")
        return path

    # -------------------------------------------------------------- views

    @cached_property
    def tables(self) -> dict[str, Table]:
        return {r.logical_id: read_table(r) for r in self.of_type(TABLE)}

    @cached_property
    def queues(self) -> dict[str, Queue]:
        return {r.logical_id: read_queue(r) for r in self.of_type(QUEUE)}

    @cached_property
    def event_buses(self) -> dict[str, EventBus]:
        return {r.logical_id: EventBus(r.logical_id, r.properties["Name"]) for r in self.of_type(EVENT_BUS)}

    @cached_property
    def rules(self) -> dict[str, Rule]:
        return {r.logical_id: read_rule(r, self.event_buses) for r in self.of_type(RULE)}

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
        return {r.logical_id: read_secret(r) for r in self.of_type(SECRET)}

    @cached_property
    def functions(self) -> dict[str, Function]:
        return {r.logical_id: read_function(self, r) for r in self.of_type(FUNCTION)}

    def role_policies(self, role_logical_id: str) -> RolePolicies:
        return read_role_policies(self, role_logical_id)

    @cached_property
    def event_source_mappings(self) -> dict[str, EventSourceMapping]:
        return {r.logical_id: read_event_source_mapping(self, r) for r in self.of_type(EVENT_SOURCE_MAPPING)}

    @cached_property
    def pipes(self) -> dict[str, Pipe]:
        """Every pipe, checked: SQS to SQS, with only the parameters the local stack evaluates."""
        return {r.logical_id: read_pipe(self, r) for r in self.of_type(PIPE)}

    @cached_property
    def apis(self) -> dict[str, Api]:
        return {r.logical_id: read_api(self, r) for r in self.of_type(API)}

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
