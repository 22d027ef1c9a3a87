"""What the server sends, as typed values.

Every server message is the same envelope (quanttrade_protocol.messages.ServerMessage);
`Message` is its client-side view, lenient where the server model is strict, so
a newer server's additions do not break this client. A `batch` message is only a
carrier: it is unpacked into the messages it holds before anything else looks at it.
The names (MessageType, StreamType) are the protocol package's own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from quanttrade_protocol.enums import MessageType, StreamType

__all__ = ["MalformedMessage", "Message", "MessageType", "StreamType", "parse_frame"]


@dataclass(frozen=True, slots=True)
class Message:
    """One server message. Data messages carry `stream` and `seq`; replies carry the request's `request_id`.

    `message_type` is a `MessageType` for every type this client knows and the
    plain string for a type a newer server added, so old clients keep working.
    """

    message_type: MessageType | str
    payload: dict[str, Any] = field(default_factory=dict)
    stream: str | None = None
    seq: int | None = None
    room: str | None = None
    source: str | None = None
    timestamp: str | None = None
    request_id: str | None = None
    message_id: str | None = None
    target: str | None = None

    @property
    def is_data(self) -> bool:
        """A message of a sequenced stream: subject to ordering, de-duplication and replay."""
        return self.stream is not None and self.seq is not None

    @property
    def is_error(self) -> bool:
        return self.message_type == MessageType.ERROR

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Message:
        kind = str(raw.get("message_type", ""))
        try:
            message_type: MessageType | str = MessageType(kind)
        except ValueError:
            message_type = kind
        payload = raw.get("payload")
        seq = raw.get("seq")
        return cls(
            message_type=message_type,
            payload=payload if isinstance(payload, dict) else {},
            stream=_text(raw.get("stream")),
            seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
            room=_text(raw.get("room")),
            source=_text(raw.get("source")),
            timestamp=_text(raw.get("timestamp")),
            request_id=_text(raw.get("request_id")),
            message_id=_text(raw.get("message_id")),
            target=_text(raw.get("target")),
        )


class MalformedMessage(ValueError):
    """A frame that is not a server message (not JSON, or not an object)."""


def parse_frame(data: str | bytes) -> list[Message]:
    """The messages in one WebSocket frame: the message itself, or a batch's messages in order."""
    try:
        raw = json.loads(data)
    except ValueError as error:
        raise MalformedMessage(f"frame is not JSON: {error}") from None
    if not isinstance(raw, dict):
        raise MalformedMessage("frame is not a JSON object")
    if raw.get("message_type") == MessageType.BATCH.value:
        inner = (raw.get("payload") or {}).get("messages")
        if not isinstance(inner, list):
            raise MalformedMessage("batch without payload.messages")
        return [Message.from_dict(item) for item in inner if isinstance(item, dict)]
    return [Message.from_dict(raw)]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
