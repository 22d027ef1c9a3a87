"""EventBridge buses and rules: a rule's bus, its event pattern or schedule, and its targets."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from local.cloud.resources.resource import Resource, first_ref


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


def _rule_target(raw: dict[str, Any]) -> RuleTarget:
    dead_letter = (raw.get("DeadLetterConfig") or {}).get("Arn")
    return RuleTarget(
        id=raw["Id"],
        arn=raw["Arn"],
        target_logical_id=first_ref(raw["Arn"]),
        message_group_id=(raw.get("SqsParameters") or {}).get("MessageGroupId"),
        input=raw.get("Input"),
        input_path=raw.get("InputPath"),
        input_transformer=raw.get("InputTransformer"),
        dead_letter_arn=dead_letter,
        dead_letter_logical_id=first_ref(dead_letter) if dead_letter is not None else None,
        retry_policy=raw.get("RetryPolicy"),
        raw=raw,
    )


def read_rule(resource: Resource, event_buses: dict[str, EventBus]) -> Rule:
    """The rule, with its bus followed to `event_buses` (this template's buses) when it is one of them."""
    p = resource.properties
    bus = p.get("EventBusName")
    bus_id = first_ref(bus) if bus is not None else None
    if bus_id is not None and bus_id not in event_buses:
        bus_id = None
    pattern = p.get("EventPattern")
    return Rule(
        logical_id=resource.logical_id,
        name=p.get("Name"),
        bus_logical_id=bus_id,
        bus_name=None if bus_id is not None else bus,
        event_pattern=json.loads(pattern) if isinstance(pattern, str) else pattern,
        schedule_expression=p.get("ScheduleExpression"),
        state=p.get("State", "ENABLED"),
        description=p.get("Description"),
        targets=tuple(_rule_target(t) for t in p.get("Targets", [])),
    )
