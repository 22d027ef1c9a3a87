"""Data messages: what each stream's messages carry.

The fields of each upstream event type (quanttrade_ws.upstream validates the
events with models built on these), and the payload a data message delivers:
those fields, any extra ones the upstream service sent, and the event id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

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


class MarketDataPayload(MarketDataFields):
    event_id: EventId


class PredictionPayload(PredictionFields):
    event_id: EventId


class AlertPayload(AlertFields):
    event_id: EventId


class PerformancePayload(PerformanceFields):
    event_id: EventId


class MarketRegimePayload(MarketRegimeFields):
    event_id: EventId


class SystemStatusPayload(SystemStatusFields):
    event_id: EventId


DATA_PAYLOADS: dict[MessageType, type[DataFields]] = {
    MessageType.MARKET_DATA: MarketDataPayload,
    MessageType.PREDICTION: PredictionPayload,
    MessageType.ALERT: AlertPayload,
    MessageType.PERFORMANCE: PerformancePayload,
    MessageType.MARKET_REGIME: MarketRegimePayload,
    MessageType.SYSTEM_STATUS: SystemStatusPayload,
}
