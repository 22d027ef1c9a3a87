"""Counting DynamoDB calls and the items they return: what a code path costs, asserted by tests."""

from __future__ import annotations

from collections import Counter
from typing import Any


class DynamoCalls:
    """Counts DynamoDB calls and the items they return, through botocore's event hooks on the client."""

    def __init__(self, client: Any) -> None:
        self.calls: Counter[str] = Counter()
        self.items_read = 0
        self.queries: Counter[str] = Counter()  # by the key value queried
        client.meta.events.register("before-parameter-build.dynamodb.*", self._before)
        client.meta.events.register("after-call.dynamodb.*", self._after)

    def _before(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls[model.name] += 1
        if model.name == "Query":
            first: dict[str, Any] = next(iter(params.get("ExpressionAttributeValues", {}).values()), {})
            key = first.get("S", "?")
            self.queries[f"{params['TableName']}/{key}"] += 1

    def _after(self, parsed: dict[str, Any], **_: Any) -> None:
        self.items_read += len(parsed.get("Items", [])) + (1 if "Item" in parsed else 0)
        for items in parsed.get("Responses", {}).values():
            self.items_read += len(items) if isinstance(items, list) else 0

    def reset(self) -> None:
        self.calls.clear()
        self.queries.clear()
        self.items_read = 0
