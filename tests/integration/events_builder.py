"""Upstream events and SQS records shaped exactly as EventBridge and Lambda deliver them."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from typing import Any

from quanttrade_ws.topology import SOURCES

SOURCE_BY_DETAIL_TYPE = {source.detail_type: source for source in SOURCES}
_ids = itertools.count(1)


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def eventbridge_event(
    detail_type: str, detail: dict[str, Any], *, event_id: str | None = None, at: float = 1_800_000_000.0
) -> dict[str, Any]:
    """An EventBridge event as the rule hands it to SQS (the SQS body)."""
    return {
        "version": "0",
        "id": event_id or f"evt-{next(_ids):06d}",
        "detail-type": detail_type,
        "source": SOURCE_BY_DETAIL_TYPE[detail_type].source if detail_type in SOURCE_BY_DETAIL_TYPE else "unknown",
        "account": "123456789012",
        "time": iso(at),
        "region": "us-east-1",
        "resources": [],
        "detail": detail,
    }


def market_data(
    symbol: str = "AAPL", price: float = 150.25, volume: float = 1000, *, at: float = 1_800_000_000.0, **kw: Any
) -> dict[str, Any]:
    detail = {"symbol": symbol, "price": price, "volume": volume, "timestamp": iso(at), "bid": price - 0.01}
    return eventbridge_event("MarketData", detail, at=at, **kw)


def prediction(
    symbol: str = "AAPL",
    direction: str = "up",
    confidence: float = 0.8,
    *,
    at: float = 1_800_000_000.0,
    **kw: Any,
) -> dict[str, Any]:
    detail = {
        "symbol": symbol,
        "direction": direction,
        "confidence": confidence,
        "horizon": "1h",
        "predicted_price": 151.0,
        "model": "lstm-v3",
        "timestamp": iso(at),
    }
    return eventbridge_event("Prediction", detail, at=at, **kw)


def alert(severity: str = "high", symbol: str | None = None, alert_type: str = "price", **kw: Any) -> dict[str, Any]:
    detail: dict[str, Any] = {"alert_type": alert_type, "message": "AAPL moved 5%", "severity": severity}
    if symbol:
        detail["symbol"] = symbol
    return eventbridge_event("Alert", detail, **kw)


def performance(metrics: dict[str, Any] | None = None, strategy: str | None = None, **kw: Any) -> dict[str, Any]:
    detail: dict[str, Any] = {"metrics": metrics or {"sharpe": 1.4}}
    if strategy:
        detail["strategy"] = strategy
    return eventbridge_event("Performance", detail, **kw)


def regime(confidence: float = 0.7, market: str = "SPX", regime_name: str = "bull", **kw: Any) -> dict[str, Any]:
    return eventbridge_event("MarketRegime", {"market": market, "regime": regime_name, "confidence": confidence}, **kw)


def system_status(service: str = "pricing", status: str = "degraded", **kw: Any) -> dict[str, Any]:
    return eventbridge_event("SystemStatus", {"service": service, "status": status, "message": "slow"}, **kw)


def sqs_record(event: dict[str, Any] | str, group: str | None = None, receive_count: int = 1) -> dict[str, Any]:
    """One SQS record as Lambda's event source mapping gives it for a FIFO queue."""
    body = event if isinstance(event, str) else json.dumps(event)
    if group is None:
        detail_type = event.get("detail-type") if isinstance(event, dict) else None
        source = SOURCE_BY_DETAIL_TYPE.get(str(detail_type))
        group = source.message_group if source else "unknown"
    message_id = f"msg-{next(_ids):06d}"
    return {
        "messageId": message_id,
        "receiptHandle": f"rh-{message_id}",
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": str(receive_count),
            "SentTimestamp": "1800000000000",
            "SequenceNumber": str(next(_ids)),
            "MessageGroupId": group,
            "SenderId": "AIDAEXAMPLE",
            "MessageDeduplicationId": message_id,
            "ApproximateFirstReceiveTimestamp": "1800000000000",
        },
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:quanttrade-EventsQueue.fifo",
        "awsRegion": "us-east-1",
    }


def records(*events: dict[str, Any]) -> list[dict[str, Any]]:
    return [sqs_record(event) for event in events]


def delivery_record(message: Any, receive_count: int = 1) -> dict[str, Any]:
    """A delivery-queue record built from an OutgoingMessage the fan-out sent."""
    record = sqs_record(message.body, group=message.group_id, receive_count=receive_count)
    record["eventSourceARN"] = "arn:aws:sqs:us-east-1:123456789012:quanttrade-DeliveryQueue.fifo"
    return record


def failures(response: dict[str, list[dict[str, str]]]) -> list[str]:
    return [item["itemIdentifier"] for item in response["batchItemFailures"]]
