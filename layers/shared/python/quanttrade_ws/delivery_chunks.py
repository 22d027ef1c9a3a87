"""Delivery chunks: a large audience's share of one message, on the FIFO delivery queue.

An audience above `Settings.chunk_size` is split by a stable hash of the
connection id into `CHUNK_SHARDS` shards, one message group each, so a
connection is always in the same group of a stream and its messages keep their
order however the audience grows or shrinks.
"""

from __future__ import annotations

import json
import zlib
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from quanttrade_ws.queues import OutgoingMessage

CHUNK_SHARDS = 64


class MalformedChunk(ValueError):
    """A delivery queue body that is not a delivery chunk."""


@dataclass(frozen=True)
class DeliveryChunk:
    message: str  # the rendered server message, sent as is
    connections: list[str]
    stream: str | None
    event_time: datetime | None
    latest_only: frozenset[str]  # the connections that asked for the newest message of the stream only

    @classmethod
    def parse(cls, body: str) -> DeliveryChunk:
        try:
            chunk = json.loads(body)
            message = chunk["data"]
            stream = chunk.get("stream")
            if not isinstance(message, str) or (stream is not None and not isinstance(stream, str)):
                raise TypeError("data and stream must be strings")
            return cls(
                message=message,
                connections=[str(c) for c in chunk["connections"]],
                stream=stream,
                event_time=datetime.fromisoformat(chunk["event_time"]) if chunk.get("event_time") else None,
                latest_only=frozenset(str(c) for c in chunk.get("latest_only", ())),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise MalformedChunk(str(error)) from None


def chunk_messages(
    stream: str, seq: int, message: str, audience: dict[str, bool], event_time: datetime, size: int
) -> list[OutgoingMessage]:
    """The delivery chunks of one message: at most `size` connections each, grouped by shard.

    `audience` maps each connection to whether its subscription is latest-only.
    """
    shards: dict[int, list[str]] = defaultdict(list)
    for connection_id in audience:
        shards[zlib.crc32(connection_id.encode()) % CHUNK_SHARDS].append(connection_id)
    chunks = []
    for shard, members in sorted(shards.items()):
        for start in range(0, len(members), size):
            connections = members[start : start + size]
            body: dict[str, Any] = {
                "data": message,
                "connections": connections,
                "stream": stream,
                "seq": seq,
                "event_time": event_time.isoformat(),
            }
            latest_only = [connection_id for connection_id in connections if audience[connection_id]]
            if latest_only:
                body["latest_only"] = latest_only
            chunks.append(OutgoingMessage(body=json.dumps(body), group_id=f"{stream}#{shard}"))
    return chunks
