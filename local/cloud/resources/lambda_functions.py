"""Lambda functions (handler, runtime, limits, environment, role, code and layer assets) and event source mappings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from local.cloud.resources.resource import (
    FUNCTION,
    LAYER,
    QUEUE,
    ROLE,
    Resource,
    TemplateError,
    optional_int,
    truthy,
)

if TYPE_CHECKING:
    from local.cloud.template import Template


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


def read_function(template: Template, resource: Resource) -> Function:
    p = resource.properties
    if "Handler" not in p or "Runtime" not in p:
        raise TemplateError(
            f"function {resource.logical_id} has no Handler/Runtime (container images are not run locally)"
        )
    layer_ids = tuple(
        template.one_of_type(layer, LAYER, f"layer of {resource.logical_id}") for layer in p.get("Layers", [])
    )
    return Function(
        logical_id=resource.logical_id,
        function_name=p.get("FunctionName"),
        handler=p["Handler"],
        runtime=p["Runtime"],
        timeout=int(p.get("Timeout", 3)),
        memory_size=int(p.get("MemorySize", 128)),
        reserved_concurrency=optional_int(p.get("ReservedConcurrentExecutions")),
        architectures=tuple(p.get("Architectures", ["x86_64"])),
        environment=dict((p.get("Environment") or {}).get("Variables", {})),
        role_logical_id=template.one_of_type(p["Role"], ROLE, f"role of {resource.logical_id}"),
        code_dir=template.asset_dir(resource),
        layer_logical_ids=layer_ids,
        layer_dirs=tuple(template.asset_dir(template.resources[i]) for i in layer_ids),
    )


def read_event_source_mapping(template: Template, resource: Resource) -> EventSourceMapping:
    p, lid = resource.properties, resource.logical_id
    return EventSourceMapping(
        logical_id=lid,
        function_logical_id=template.one_of_type(p["FunctionName"], FUNCTION, f"function of {lid}"),
        queue_logical_id=template.one_of_type(p["EventSourceArn"], QUEUE, f"event source of {lid}"),
        batch_size=optional_int(p.get("BatchSize")),
        maximum_batching_window=optional_int(p.get("MaximumBatchingWindowInSeconds")),
        function_response_types=tuple(p.get("FunctionResponseTypes", ())),
        maximum_concurrency=optional_int((p.get("ScalingConfig") or {}).get("MaximumConcurrency")),
        enabled=truthy(p.get("Enabled", True)),
    )
