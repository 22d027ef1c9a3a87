"""Sending to SQS: delivery chunks, retries and dead letters. The only module that sends to SQS."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class OutgoingMessage:
    body: str
    group_id: str  # FIFO message group: order is kept within a group


class QueueSender(Protocol):
    def send(self, queue_url: str, messages: list[OutgoingMessage]) -> list[OutgoingMessage]:
        """Send messages in order; returns the ones that could not be sent."""


class SqsSender:
    def __init__(self, client: Any) -> None:
        self._sqs = client

    def send(self, queue_url: str, messages: list[OutgoingMessage]) -> list[OutgoingMessage]:
        unsent: list[OutgoingMessage] = []
        fifo = queue_url.endswith(".fifo")
        for start in range(0, len(messages), 10):
            chunk = messages[start : start + 10]
            entries = []
            for index, message in enumerate(chunk):
                entry: dict[str, Any] = {"Id": str(index), "MessageBody": message.body}
                if fifo:
                    entry["MessageGroupId"] = message.group_id
                    entry["MessageDeduplicationId"] = hashlib.sha256(message.body.encode()).hexdigest()
                entries.append(entry)
            try:
                response = self._sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
            except Exception:
                unsent.extend(chunk)
                continue
            unsent.extend(chunk[int(failure["Id"])] for failure in response.get("Failed", []))
        return unsent
