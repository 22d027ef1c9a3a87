"""Which event each delivered frame carries, and when it reached its client."""

from __future__ import annotations

import json
from dataclasses import dataclass

from bench.aws_model.tally import Tally


@dataclass
class EventRecord:
    event_id: str
    symbol: str
    published_at: float
    audience: int
    delivered: int = 0
    last_delivery: float = 0.0


class Deliveries:
    """Which event each delivered frame carries, and when it arrived."""

    def __init__(self, tally: Tally, keep_latencies: bool) -> None:
        self.events: dict[str, EventRecord] = {}
        self.tally = tally
        self._frames: dict[bytes, tuple[str, ...]] = {}
        self.latencies: list[float] | None = [] if keep_latencies else None

    def event_ids(self, data: bytes) -> tuple[str, ...]:
        ids = self._frames.get(data)
        if ids is None:
            message = json.loads(data)
            messages = message["payload"]["messages"] if message.get("message_type") == "batch" else [message]
            ids = tuple(str(m["payload"]["event_id"]) for m in messages)
            self._frames[data] = ids
        return ids

    def delivered(self, data: bytes, at: float) -> None:
        ids = self._frames.get(data) or self.event_ids(data)
        self.tally.deliveries += len(ids)
        for event_id in ids:
            record = self.events[event_id]
            record.delivered += 1
            record.last_delivery = max(record.last_delivery, at)
            if self.latencies is not None:
                self.latencies.append(at - record.published_at)
