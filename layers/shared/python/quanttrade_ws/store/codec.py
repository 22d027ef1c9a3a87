"""DynamoDB's attribute values, both ways: the store's one codec.

Writing wraps a value in its type (`{"S": ...}`, `{"N": ...}`); reading takes an
attribute out of an item with a default for one that is missing, so a row written
before an attribute existed still reads.
"""

from __future__ import annotations

from typing import Any


def s(value: str) -> dict[str, str]:
    return {"S": value}


def n(value: float | int) -> dict[str, str]:
    return {"N": str(value)}


def get_str(item: dict[str, Any], name: str, default: str = "") -> str:
    value = item.get(name)
    return value["S"] if value and "S" in value else default


def get_int(item: dict[str, Any], name: str, default: int = 0) -> int:
    value = item.get(name)
    return int(float(value["N"])) if value and "N" in value else default


def get_float(item: dict[str, Any], name: str) -> float | None:
    value = item.get(name)
    return float(value["N"]) if value and "N" in value else None


def get_flag(item: dict[str, Any], name: str) -> bool:
    value = item.get(name)
    return bool(value and value.get("BOOL"))


def get_string_map(item: dict[str, Any], name: str) -> dict[str, str]:
    value = item.get(name)
    if not value or "M" not in value:
        return {}
    return {key: entry.get("S", "") for key, entry in value["M"].items()}


def named_values(values: dict[str, Any], *expressions: str) -> dict[str, Any]:
    """Of `values`, those the expressions name: DynamoDB refuses an ExpressionAttributeValues entry no
    expression uses."""
    return {name: value for name, value in values.items() if any(name in expression for expression in expressions)}
