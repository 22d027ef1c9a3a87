"""What the emulator costs: moto's time to answer the fan-out's audience Query."""

from __future__ import annotations

import statistics
import time
from typing import Any


def subscriber_query_ms(endpoint: str, table: str, stream_key: str, runs: int = 5) -> dict[str, Any]:
    """How long moto takes to answer the fan-out's audience Query (the same request, from this process).

    On AWS a Query of a few thousand small items is tens of milliseconds; here it
    is moto's Python serialisation, and this figure shows how much of the
    publish-to-receive latency is the emulator rather than the service.
    """
    from bench.stack_server import stack_client

    client = stack_client("dynamodb", endpoint)
    samples, items = [], 0
    for _ in range(runs):
        kwargs: dict[str, Any] = {
            "TableName": table,
            "KeyConditionExpression": "stream_key = :k",
            "ExpressionAttributeValues": {":k": {"S": stream_key}},
            "ProjectionExpression": "connection_id, user_id, #i, filters",
            "ExpressionAttributeNames": {"#i": "interval"},
            "ConsistentRead": True,
        }
        started, items = time.perf_counter(), 0
        while True:
            page = client.query(**kwargs)
            items += len(page.get("Items", []))
            if not page.get("LastEvaluatedKey"):
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        samples.append((time.perf_counter() - started) * 1000)
    return {"median_ms": round(statistics.median(samples), 1), "items": items}
