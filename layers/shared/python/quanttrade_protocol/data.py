"""Data messages: what each stream's messages carry.

The fields of each upstream event type (quanttrade_ws.upstream validates the
events with models built on these), and the payload a data message delivers:
those fields, any extra ones the upstream service sent, and the event id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, StringConstraints, model_serializer

from quanttrade_protocol.enums import MessageType, Severity
from quanttrade_protocol.frames import Symbol

ShortText = Annotated[str, StringConstraints(min_length=1, max_length=256)]
LongText = Annotated[str, StringConstraints(max_length=4096)]
Price = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class DataFields(BaseModel):
    # Extra fields are kept: an upstream service may send more than the protocol names, and
    # subscribers get it as sent. Validators are built on first use, not at import.
    model_config = ConfigDict(extra="allow", frozen=True, defer_build=True)


class MarketDataFields(DataFields):
    symbol: Symbol
    price: Price
    volume: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    timestamp: datetime
    bid: Price | None = None
    ask: Price | None = None


class PredictionFields(DataFields):
    symbol: Symbol
    direction: Literal["up", "down", "flat", "bullish", "bearish", "neutral"]
    confidence: Fraction
    horizon: ShortText
    predicted_price: Price
    model: ShortText
    timestamp: datetime


class AlertFields(DataFields):
    alert_type: ShortText
    message: LongText
    severity: Severity
    symbol: Symbol | None = None


class PerformanceFields(DataFields):
    metrics: Annotated[dict[str, Any], Field(max_length=256)]
    strategy: ShortText | None = None


class MarketRegimeFields(DataFields):
    symbol: Symbol | None = None
    market: Symbol | None = None
    regime: ShortText
    confidence: Fraction


class SystemStatusFields(DataFields):
    service: ShortText
    status: Literal["healthy", "degraded", "down", "maintenance"]
    message: LongText = ""


EventId = Annotated[
    str, Field(description="The upstream EventBridge event id; a redelivered event keeps it and its seq")
]


class DataPayload(DataFields):
    """A data message's payload: an event's fields, any extra ones its upstream service sent, and its id."""

    # No return annotation: the payload's JSON schema (docs/asyncapi.yaml) stays its fields'.
    @model_serializer(mode="wrap")
    def _event_id_last(self, serialize: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        # The id the server adds goes after everything the upstream service sent, extra fields
        # included, as it always has on the wire (pydantic would put extra fields last).
        fields = serialize(self)
        if isinstance(fields, dict) and "event_id" in fields:
            fields["event_id"] = fields.pop("event_id")
        return fields


class MarketDataPayload(MarketDataFields, DataPayload):
    event_id: EventId


class PredictionPayload(PredictionFields, DataPayload):
    event_id: EventId


class AlertPayload(AlertFields, DataPayload):
    event_id: EventId


class PerformancePayload(PerformanceFields, DataPayload):
    event_id: EventId


class MarketRegimePayload(MarketRegimeFields, DataPayload):
    event_id: EventId


class SystemStatusPayload(SystemStatusFields, DataPayload):
    event_id: EventId


DATA_PAYLOADS: dict[MessageType, type[DataPayload]] = {
    MessageType.MARKET_DATA: MarketDataPayload,
    MessageType.PREDICTION: PredictionPayload,
    MessageType.ALERT: AlertPayload,
    MessageType.PERFORMANCE: PerformancePayload,
    MessageType.MARKET_REGIME: MarketRegimePayload,
    MessageType.SYSTEM_STATUS: SystemStatusPayload,
}


def data_payload(message_type: MessageType, fields: DataFields, event_id: str) -> DataPayload:
    """The payload of the data message an upstream event becomes.

    `fields` were validated by this message type's fields model on the way in (the
    upstream detail models are built on them), so they are not validated again.
    """
    return DATA_PAYLOADS[message_type].model_construct(**dict(fields), event_id=event_id)
