"""DynamoDB tables: key schema, attribute types, indexes, TTL, billing and stream settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from local.cloud.resources.resource import Resource


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


def read_table(resource: Resource) -> Table:
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
