"""DynamoDB work per event: calls and items read, with many connections that do not subscribe.

Fan-out must cost in proportion to an event's audience, never to the number of
connections in the system. This runs the real EventFanOut against moto's DynamoDB
(tables from the topology), once with only the 10 subscribers and once with
10,000 more connections subscribed to other symbols, and counts every DynamoDB
call and every item read per event through botocore's event hooks.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

SUBSCRIBERS = 10
EVENTS = 50


def market_data_record(symbol: str, index: int) -> dict[str, Any]:
    """An events-queue record of one MarketData tick, as the fan-out receives it."""
    now = datetime.now(UTC).isoformat()
    event = {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "MarketData",
        "source": "quanttrade.market-data",
        "account": "123456789012",
        "time": now,
        "region": "us-east-1",
        "resources": [],
        "detail": {"symbol": symbol, "price": 100 + index, "volume": 10, "timestamp": now},
    }
    return {"messageId": str(uuid.uuid4()), "body": json.dumps(event), "attributes": {"MessageGroupId": "market-data"}}


def _measure(bystanders: int) -> dict[str, float]:
    import boto3
    from moto import mock_aws

    from local.fakes import CountingMetrics, InMemoryGateway, InMemorySender
    from quanttrade_ws.auth import Identity
    from quanttrade_ws.config import Settings
    from quanttrade_ws.fanout import EventFanOut
    from quanttrade_ws.models import Connection, Subscription
    from quanttrade_ws.store.dynamo_store import DynamoStore
    from tests.provision import provision

    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        settings, _ = provision(
            client,
            boto3.client("sqs", region_name="us-east-1"),
            boto3.client("events", region_name="us-east-1"),
            Settings(jwt_secret="bench", session_secret="bench-session", subscriber_cache_seconds=0),
        )
        store = DynamoStore(settings, client)
        gateway = InMemoryGateway()
        identity = Identity(user_id="bench", permissions=frozenset({"read:market_data"}), subscription_level="premium")
        for index in range(SUBSCRIBERS):
            connection_id = f"c{index:06d}"
            gateway.connect(connection_id)
            store.open_connection(Connection(connection_id, identity, 0, 0), cap=SUBSCRIBERS)
            store.add_subscription(Subscription("market_data:AAPL", connection_id, "bench"), limit=50)
        _add_bystanders(client, settings, bystanders)

        calls: Counter[str] = Counter()
        items: Counter[str] = Counter()

        def count_call(event_name: str, **_: Any) -> None:
            calls[event_name.rsplit(".", 1)[-1]] += 1

        def count_items(http_response: Any, parsed: dict[str, Any], event_name: str, **_: Any) -> None:
            operation = event_name.rsplit(".", 1)[-1]
            if "Items" in parsed:
                items[operation] += len(parsed["Items"])
            elif "Item" in parsed:
                items[operation] += 1

        client.meta.events.register("before-call.dynamodb.*", count_call)
        client.meta.events.register("after-call.dynamodb.*", count_items)
        fanout = EventFanOut(settings, store, gateway, InMemorySender(), lambda _cid: None, CountingMetrics())
        for index in range(EVENTS):
            fanout.process_events([market_data_record("AAPL", index)])
        delivered = sum(len(gateway.sent[f"c{i:06d}"]) for i in range(SUBSCRIBERS))
        return {
            "calls_per_event": sum(calls.values()) / EVENTS,
            "items_read_per_event": sum(items.values()) / EVENTS,
            "scans": calls["Scan"],
            "delivered_per_event": delivered / EVENTS,
            "calls_by_operation": dict(calls),
        }


def _add_bystanders(client: Any, settings: Any, count: int) -> None:
    """Connections subscribed to other symbols, written in bulk (they only need to exist)."""
    rows = []
    for index in range(count):
        connection_id = f"b{index:06d}"
        rows.append((settings.connections_table, {"pk": {"S": connection_id}, "kind": {"S": "connection"}}))
        rows.append(
            (
                settings.subscriptions_table,
                {"stream_key": {"S": f"market_data:S{index % 500}"}, "connection_id": {"S": connection_id}},
            )
        )
    put_rows(client, rows)


def put_rows(client: Any, rows: list[tuple[str, dict[str, Any]]]) -> None:
    """Write (table, item) rows in BatchWriteItem calls of 25, again with what DynamoDB leaves unprocessed."""
    for start in range(0, len(rows), 25):
        request: dict[str, list[dict[str, Any]]] = {}
        for table, item in rows[start : start + 25]:
            request.setdefault(table, []).append({"PutRequest": {"Item": item}})
        while request:
            request = client.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}


def run() -> dict[str, Any]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    quiet = _measure(bystanders=0)
    crowded = _measure(bystanders=10_000)
    return {
        "dynamodb_calls_per_event_10_subscribers": quiet["calls_per_event"],
        "dynamodb_items_read_per_event_10_subscribers": quiet["items_read_per_event"],
        "dynamodb_calls_per_event_10k_connections": crowded["calls_per_event"],
        "dynamodb_items_read_per_event_10k_connections": crowded["items_read_per_event"],
        "dynamodb_scans_on_hot_path": quiet["scans"] + crowded["scans"],
        "dynamodb_calls_by_operation_10k": crowded["calls_by_operation"],
        "delivered_per_event": crowded["delivered_per_event"],
    }


if __name__ == "__main__":
    figures = run()
    for key, value in figures.items():
        print(f"{key:55} {value}")
