"""One SQS batch on its way through the fan-out: what each connection gets, and which records fail.

A record is acknowledged only when each of its messages was delivered, dropped
on purpose or durably queued, and a record that fails takes the later records
of its FIFO message group with it, so a redelivery keeps the group's order
(docs/adr/0001-fan-out-acknowledgement-and-order.md).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from quanttrade_ws.queues import OutgoingMessage


@dataclass
class RecordBatch:
    records: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    blocked_groups: set[str] = field(default_factory=set)
    # Per connection, in order: (conflation key: the stream for a latest-only subscriber, else None; message).
    outbox: dict[str, list[tuple[str | None, str]]] = field(default_factory=lambda: defaultdict(list))
    record_ids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    event_times: dict[str, datetime] = field(default_factory=dict)
    # Chunks that wait for the direct posts (sent after them), by record.
    chunks: list[tuple[dict[str, Any], list[OutgoingMessage]]] = field(default_factory=list)
    posted_streams: set[str] = field(default_factory=set)  # streams with direct posts in this batch
    chunked_streams: set[str] = field(default_factory=set)  # streams with an event sent by chunks in this batch
    deadline: float | None = None  # for the gateway's retries of throttled posts, on the monotonic clock

    def fail(self, record: dict[str, Any]) -> None:
        """Fail a record and every later record of its FIFO group, so a retry keeps the order."""
        self.failures.append(record["messageId"])
        self.blocked_groups.add(group_of(record))

    def fail_from(self, message_ids: set[str]) -> None:
        """After delivery: fail these records and every later record of their groups."""
        blocked: set[str] = set()
        for record in self.records:
            group = group_of(record)
            if record["messageId"] in message_ids or group in blocked:
                blocked.add(group)
                if record["messageId"] not in self.failures:
                    self.failures.append(record["messageId"])

    def response(self) -> dict[str, list[dict[str, str]]]:
        """The partial batch response: the records SQS must deliver again."""
        return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in self.failures]}


def conflate(entries: list[tuple[str | None, str]]) -> list[str]:
    """The messages in order, except that of a latest-only stream only the newest (its last) is kept."""
    last = {key: index for index, (key, _message) in enumerate(entries) if key is not None}
    if not last:
        return [message for _key, message in entries]
    return [message for index, (key, message) in enumerate(entries) if key is None or last[key] == index]


def receive_count(record: dict[str, Any]) -> int:
    try:
        return int(record.get("attributes", {}).get("ApproximateReceiveCount", "1"))
    except (TypeError, ValueError):
        return 1


def group_of(record: dict[str, Any]) -> str:
    return str(record.get("attributes", {}).get("MessageGroupId", ""))
