"""Client frames: what a client may send, each a JSON object with an `action`.

The server validates every frame with these models (quanttrade_ws.protocol.parse_client_frame);
the AsyncAPI document describes them; a client may build its frames with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    TypeAdapter,
    model_validator,
)

from quanttrade_protocol.enums import Severity, StreamType

SYMBOL_PATTERN = r"^[A-Za-z0-9._^=-]{1,24}$"
# Bounds that keep every number a client sends storable by DynamoDB (38 significant digits,
# magnitudes 1e-130 to 1e125): a value outside them is INVALID_MESSAGE, never a store failure.
MIN_INTERVAL_SECONDS = 0.001
MAX_INTERVAL_SECONDS = 86400
MAX_SEQ = 2**63 - 1
MAX_STREAMS_PER_FRAME = 50  # streams one subscribe or unsubscribe names
MAX_RESUME_STREAMS = 100  # streams one resume names in last_seq
WILDCARD = "*"

Symbol = Annotated[str, StringConstraints(pattern=SYMBOL_PATTERN)]
RequestId = Annotated[str, StringConstraints(max_length=128)]
StreamName = Annotated[str, StringConstraints(max_length=128)]


# ---------------------------------------------------------------- streams


@dataclass(frozen=True, slots=True)
class StreamId:
    """A stream or subscription key in its parts. The one reader and writer of their spelling:

    `market_data:AAPL` (one symbol), `market_data:*` (a subscription to every symbol),
    `alerts` (a type-level stream, as data messages name it) and `alerts:*` (its subscription key).
    """

    stream_type: StreamType
    symbol: str | None = None  # None: the type-level stream; WILDCARD: every symbol

    @classmethod
    def parse(cls, text: str) -> StreamId | None:
        """The parts of a stream name or subscription key, or None for a stream type the protocol lacks."""
        name, _, symbol = text.partition(":")
        try:
            stream_type = StreamType(name)
        except ValueError:
            return None
        return cls(stream_type, symbol or None)

    @classmethod
    def subscription(cls, stream_type: StreamType, symbol: str | None) -> StreamId:
        """The key a subscription to one symbol (None: every symbol) is stored under; symbols in upper case."""
        return cls(stream_type, symbol.upper() if symbol else WILDCARD)

    @property
    def is_wildcard(self) -> bool:
        return self.symbol == WILDCARD

    def __str__(self) -> str:
        return f"{self.stream_type.value}:{self.symbol}" if self.symbol else self.stream_type.value


# ---------------------------------------------------------------- filters, one model per stream type

FilterText = Annotated[str, StringConstraints(max_length=128)]


def _number(value: str) -> str:
    # Kept as the text the client sent: subscriptions store filters as strings, and the
    # fan-out compares them as numbers (upstream._at_least).
    try:
        float(value)
    except ValueError:
        raise ValueError("needs a number") from None
    return value


FilterNumber = Annotated[str, StringConstraints(max_length=128), AfterValidator(_number)]


class _Filters(BaseModel):
    """What narrows a subscription. Values are strings on the wire (numbers too, as text); unknown names are
    refused so typos surface."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    stream_type: ClassVar[StreamType]

    @model_validator(mode="before")
    @classmethod
    def _known_names(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [str(name) for name in data if name not in cls.model_fields]
            if unknown:
                known = ", ".join(sorted(cls.model_fields))
                # The client's own name, cut short and without what no reply can encode (lone surrogates).
                shown = unknown[0][:32].encode(errors="replace").decode()
                raise ValueError(f"Unknown filter '{shown}' for {cls.stream_type.value}; known: {known}")
        return data

    def as_dict(self) -> dict[str, str]:
        """The filters as a subscription stores them and the fan-out reads them: name to text, set ones only."""
        return self.model_dump(mode="json", exclude_none=True)


class MarketDataFilters(_Filters):
    stream_type = StreamType.MARKET_DATA

    min_volume: FilterNumber | None = Field(None, description="Only ticks with at least this volume")


class PredictionsFilters(_Filters):
    stream_type = StreamType.PREDICTIONS

    min_confidence: FilterNumber | None = Field(None, description="Only predictions at least this confident (0-1)")
    direction: FilterText | None = Field(None, description="Only predictions of this direction (`up`, `bullish`, ...)")


class AlertsFilters(_Filters):
    stream_type = StreamType.ALERTS

    min_severity: Severity | None = Field(None, description="Only alerts at least this severe")
    alert_type: FilterText | None = Field(None, description="Only alerts of this type")


class PerformanceFilters(_Filters):
    stream_type = StreamType.PERFORMANCE

    metric: FilterText | None = Field(None, description="Only performance updates that carry this metric")


class MarketRegimeFilters(_Filters):
    stream_type = StreamType.MARKET_REGIME

    min_confidence: FilterNumber | None = Field(None, description="Only regimes called at least this confidently")


class SystemStatusFilters(_Filters):
    stream_type = StreamType.SYSTEM_STATUS

    service: FilterText | None = Field(None, description="Only this service's status")
    status: FilterText | None = Field(None, description="Only this status (`healthy`, `degraded`, ...)")


# ---------------------------------------------------------------- stream specs, discriminated by stream_type


class _StreamSpec(BaseModel):
    """One stream a client wants: a stream type, optionally narrowed to one symbol."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    stream_type: StreamType
    symbol: Symbol | None = None
    interval: Annotated[float, Field(ge=MIN_INTERVAL_SECONDS, le=MAX_INTERVAL_SECONDS)] | None = None
    filters: _Filters
    # Conflation: of the messages of one stream waiting for the same post, only the newest goes out.
    # The client's choice (a price board wants it, a chart does not); skipped seqs are gaps, as with `interval`.
    latest_only: bool = False

    @property
    def stream_id(self) -> StreamId:
        return StreamId.subscription(self.stream_type, self.symbol)

    @property
    def key(self) -> str:
        """The subscription key fan-out Queries: `market_data:AAPL`, or `market_data:*` for every symbol."""
        return str(self.stream_id)


class MarketDataStream(_StreamSpec):
    stream_type: Literal[StreamType.MARKET_DATA]
    filters: MarketDataFilters = Field(default_factory=MarketDataFilters)


class PredictionsStream(_StreamSpec):
    stream_type: Literal[StreamType.PREDICTIONS]
    filters: PredictionsFilters = Field(default_factory=PredictionsFilters)


class AlertsStream(_StreamSpec):
    stream_type: Literal[StreamType.ALERTS]
    filters: AlertsFilters = Field(default_factory=AlertsFilters)


class PerformanceStream(_StreamSpec):
    stream_type: Literal[StreamType.PERFORMANCE]
    filters: PerformanceFilters = Field(default_factory=PerformanceFilters)


class MarketRegimeStream(_StreamSpec):
    stream_type: Literal[StreamType.MARKET_REGIME]
    filters: MarketRegimeFilters = Field(default_factory=MarketRegimeFilters)


class SystemStatusStream(_StreamSpec):
    stream_type: Literal[StreamType.SYSTEM_STATUS]
    filters: SystemStatusFilters = Field(default_factory=SystemStatusFilters)


def _stream_type_tag(value: Any) -> str | None:
    raw = value.get("stream_type") if isinstance(value, dict) else getattr(value, "stream_type", None)
    return str(raw) if isinstance(raw, str) else None


StreamSpec = Annotated[
    Annotated[MarketDataStream, Tag(StreamType.MARKET_DATA.value)]
    | Annotated[PredictionsStream, Tag(StreamType.PREDICTIONS.value)]
    | Annotated[AlertsStream, Tag(StreamType.ALERTS.value)]
    | Annotated[PerformanceStream, Tag(StreamType.PERFORMANCE.value)]
    | Annotated[MarketRegimeStream, Tag(StreamType.MARKET_REGIME.value)]
    | Annotated[SystemStatusStream, Tag(StreamType.SYSTEM_STATUS.value)],
    # Discriminated by stream_type through a function only so the error is plain words:
    # pydantic's own message lists every tag's repr and runs past a kilobyte.
    Discriminator(
        _stream_type_tag,
        custom_error_type="invalid_stream_type",
        custom_error_message=f"stream_type must be one of {', '.join(StreamType)}",
    ),
]
STREAM_SPECS: tuple[type[_StreamSpec], ...] = (
    MarketDataStream,
    PredictionsStream,
    AlertsStream,
    PerformanceStream,
    MarketRegimeStream,
    SystemStatusStream,
)


@cache
def _stream_spec_adapter() -> TypeAdapter[StreamSpec]:
    return TypeAdapter(StreamSpec)


def stream_spec(raw: dict[str, Any]) -> StreamSpec:
    """One stream spec from its JSON object, as a `subscribe` frame carries it (ValidationError if invalid)."""
    return _stream_spec_adapter().validate_python(raw)


# ---------------------------------------------------------------- frames


class _Frame(BaseModel):
    # Validators are built on first use, not at import: of the functions that import the
    # protocol, only the message handler parses frames ($connect imports it and never does).
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    request_id: RequestId | None = None


class Hello(_Frame):
    action: Literal["hello"]


class Subscribe(_Frame):
    action: Literal["subscribe"]
    streams: Annotated[list[StreamSpec], Field(min_length=1, max_length=MAX_STREAMS_PER_FRAME)]


class Unsubscribe(_Frame):
    action: Literal["unsubscribe"]
    streams: Annotated[list[StreamSpec], Field(min_length=1, max_length=MAX_STREAMS_PER_FRAME)]


class JoinRoom(_Frame):
    action: Literal["joinRoom"]
    room: Annotated[str, StringConstraints(max_length=256)]


class LeaveRoom(_Frame):
    action: Literal["leaveRoom"]
    room: Annotated[str, StringConstraints(max_length=256)]


class SendRoomMessage(_Frame):
    action: Literal["sendRoomMessage"]
    room: Annotated[str, StringConstraints(max_length=256)]
    # The configured room message limit is checked by the domain (MESSAGE_TOO_LARGE);
    # this bound only keeps absurd frames out of the parser.
    message: Annotated[str, StringConstraints(max_length=128 * 1024)]


class Ping(_Frame):
    action: Literal["ping"]


class Refresh(_Frame):
    action: Literal["refresh"]
    token: Annotated[str, StringConstraints(min_length=1, max_length=8192)]


class Resume(_Frame):
    action: Literal["resume"]
    session_token: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    last_seq: Annotated[
        dict[Annotated[str, StringConstraints(max_length=128)], Annotated[int, Field(ge=0, le=MAX_SEQ)]],
        Field(max_length=MAX_RESUME_STREAMS),
    ] = {}


ClientFrame = Annotated[
    Hello | Subscribe | Unsubscribe | JoinRoom | LeaveRoom | SendRoomMessage | Ping | Refresh | Resume,
    Field(discriminator="action"),
]
CLIENT_FRAMES: tuple[type[_Frame], ...] = (
    Hello,
    Subscribe,
    Unsubscribe,
    JoinRoom,
    LeaveRoom,
    SendRoomMessage,
    Ping,
    Refresh,
    Resume,
)


def action_of(frame: type[_Frame]) -> str:
    """The `action` a frame model stands for."""
    return str(frame.model_fields["action"].annotation.__args__[0])  # type: ignore[union-attr]


KNOWN_ACTIONS = frozenset(action_of(frame) for frame in CLIENT_FRAMES)
