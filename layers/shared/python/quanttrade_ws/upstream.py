"""Upstream events: what the market data, prediction, alerting, performance,
regime and system services put on the stack's event bus, validated at the edge.

Each detail model knows its stream (`market_data:AAPL`, `alerts`, ...), the
server message type it becomes, and the data room that also receives it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, ClassVar

from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from pydantic import ConfigDict, Field, ValidationError, model_validator

from quanttrade_protocol.data import (
    AlertFields,
    DataFields,
    MarketDataFields,
    MarketRegimeFields,
    PerformanceFields,
    PredictionFields,
    ShortText,
    SystemStatusFields,
)
from quanttrade_ws.protocol import MessageType, Severity, StreamType

SEVERITY_ORDER = {severity.value: rank for rank, severity in enumerate(Severity)}
# What the server adds to a data message's payload (quanttrade_protocol.data.DataPayload).
RESERVED_DETAIL_NAMES = frozenset({"event_id"})


class _Detail(DataFields):
    """An upstream event's detail: its fields are the protocol's (quanttrade_protocol.data); this adds where
    it goes and which subscriptions want it."""

    stream_type: ClassVar[StreamType]
    message_type: ClassVar[MessageType]

    @model_validator(mode="before")
    @classmethod
    def _no_reserved_names(cls, data: Any) -> Any:
        # Extra fields reach subscribers as sent, beside the ones the server adds: one of those
        # names in the detail could not be both.
        if isinstance(data, dict):
            taken = sorted(RESERVED_DETAIL_NAMES & data.keys())
            if taken:
                raise ValueError(f"{', '.join(taken)} is set by the server on every data message, not by the event")
        return data

    @property
    def symbol_key(self) -> str | None:
        # Only a declared symbol (validated as one) scopes the stream. A type without one may still send a
        # `symbol`, of any JSON type: that is data, kept as sent (a system status names no symbol stream).
        return getattr(self, "symbol", None) if "symbol" in type(self).model_fields else None

    @property
    def stream(self) -> str:
        symbol = self.symbol_key
        return f"{self.stream_type.value}:{symbol.upper()}" if symbol else self.stream_type.value

    @property
    def data_room(self) -> str | None:
        """The data room (`market_data_AAPL`, `predictions_TSLA`, `alerts`) whose members also receive this event."""
        return None

    def passes(self, filters: dict[str, str]) -> bool:
        """Whether a subscription with these filters wants this event. Unknown filters pass."""
        return True


class MarketData(_Detail, MarketDataFields):
    stream_type = StreamType.MARKET_DATA
    message_type = MessageType.MARKET_DATA

    @property
    def data_room(self) -> str:
        return f"market_data_{self.symbol.upper()}"

    def passes(self, filters: dict[str, str]) -> bool:
        return _at_least(filters.get("min_volume"), self.volume)


class Prediction(_Detail, PredictionFields):
    stream_type = StreamType.PREDICTIONS
    message_type = MessageType.PREDICTION

    @property
    def data_room(self) -> str:
        return f"predictions_{self.symbol.upper()}"

    def passes(self, filters: dict[str, str]) -> bool:
        wanted = filters.get("direction")
        return _at_least(filters.get("min_confidence"), self.confidence) and (
            wanted is None or wanted == self.direction
        )


class Alert(_Detail, AlertFields):
    stream_type = StreamType.ALERTS
    message_type = MessageType.ALERT

    @property
    def data_room(self) -> str:
        return "alerts"

    def passes(self, filters: dict[str, str]) -> bool:
        minimum = filters.get("min_severity")
        if minimum is not None and SEVERITY_ORDER.get(self.severity, 0) < SEVERITY_ORDER.get(minimum, 0):
            return False
        wanted = filters.get("alert_type")
        return wanted is None or wanted == self.alert_type


class Performance(_Detail, PerformanceFields):
    stream_type = StreamType.PERFORMANCE
    message_type = MessageType.PERFORMANCE

    @property
    def symbol_key(self) -> str | None:
        return self.strategy

    def passes(self, filters: dict[str, str]) -> bool:
        wanted = filters.get("metric")
        return wanted is None or wanted in self.metrics


class MarketRegime(_Detail, MarketRegimeFields):
    stream_type = StreamType.MARKET_REGIME
    message_type = MessageType.MARKET_REGIME

    @property
    def symbol_key(self) -> str | None:
        return self.symbol or self.market

    def passes(self, filters: dict[str, str]) -> bool:
        return _at_least(filters.get("min_confidence"), self.confidence)


class SystemStatus(_Detail, SystemStatusFields):
    stream_type = StreamType.SYSTEM_STATUS
    message_type = MessageType.SYSTEM_STATUS

    def passes(self, filters: dict[str, str]) -> bool:
        wanted_service, wanted_status = filters.get("service"), filters.get("status")
        return (wanted_service is None or wanted_service == self.service) and (
            wanted_status is None or wanted_status == self.status
        )


def _at_least(threshold: str | None, value: float) -> bool:
    if threshold is None:
        return True
    try:
        limit = float(threshold)
    except ValueError:
        return True  # validated on subscribe; an old row never blocks delivery
    return math.isnan(limit) or value >= limit


DETAILS_BY_TYPE: dict[str, type[_Detail]] = {
    "MarketData": MarketData,
    "Prediction": Prediction,
    "Alert": Alert,
    "Performance": Performance,
    "MarketRegime": MarketRegime,
    "SystemStatus": SystemStatus,
}


class UpstreamEvent(EventBridgeModel):
    """An EventBridge event as it arrives in the SQS body: Powertools' envelope (version, account,
    region, resources, replay-name, ...) with this service's bounds on its texts and a typed detail."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)

    id: ShortText
    source: ShortText
    detail_type: ShortText = Field(alias="detail-type")
    time: datetime
    detail: _Detail

    @property
    def event_time(self) -> datetime:
        """When the upstream service says the event happened: detail.timestamp when it is a time, else EventBridge's.

        Market data and predictions declare a timestamp; the other types may still send one, kept as sent
        (ISO 8601 text, a number, anything): text that reads as a time counts, the rest falls back.
        """
        stamp = getattr(self.detail, "timestamp", None)
        if isinstance(stamp, str):
            try:
                stamp = datetime.fromisoformat(stamp)
            except ValueError:
                stamp = None
        if not isinstance(stamp, datetime):
            stamp = self.time
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


class InvalidEvent(ValueError):
    """An upstream event that cannot be delivered: wrong shape, unknown type or bad values."""


# Real details are two or three levels deep; the serialiser gives up near 255, and an event
# that validates but cannot be rendered would fail (and block its FIFO group) on every receive.
MAX_DETAIL_DEPTH = 32


def _nests_deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def parse_upstream_event(raw: dict[str, Any]) -> UpstreamEvent:
    if not isinstance(raw, dict):
        raise InvalidEvent("event must be a JSON object")
    detail_type = raw.get("detail-type")
    model = DETAILS_BY_TYPE.get(detail_type) if isinstance(detail_type, str) else None
    if model is None:
        raise InvalidEvent(f"unknown detail-type {str(detail_type)[:64]!r}")
    if _nests_deeper_than(raw.get("detail"), MAX_DETAIL_DEPTH):
        raise InvalidEvent(f"{detail_type}: detail nests deeper than {MAX_DETAIL_DEPTH} levels")
    try:
        detail = model.model_validate(raw.get("detail"))
        return UpstreamEvent.model_validate({**raw, "detail": detail})
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else e["msg"]
            for e in error.errors(include_url=False)[:3]
        )
        raise InvalidEvent(f"{detail_type}: {problems}") from None
