"""SQS queues: FIFO settings, timeouts and the redrive to a dead-letter queue."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from local.cloud.resources.resource import Resource, optional_int, referenced_ids, truthy


@dataclass(frozen=True)
class Queue:
    logical_id: str
    queue_name: Any  # the QueueName property, or None
    fifo: bool
    content_based_deduplication: bool
    visibility_timeout: int | None  # seconds; None: SQS's default (30)
    message_retention: int | None  # seconds; None: SQS's default (4 days)
    dead_letter_queue: str | None  # logical id of the redrive target
    max_receive_count: int | None
    properties: dict[str, Any]


def read_queue(resource: Resource) -> Queue:
    p = resource.properties
    redrive = p.get("RedrivePolicy")
    if isinstance(redrive, str):
        redrive = json.loads(redrive)
    dlq = None
    if redrive:
        targets = referenced_ids(redrive.get("deadLetterTargetArn"))
        dlq = targets[0] if targets else None
    return Queue(
        logical_id=resource.logical_id,
        queue_name=p.get("QueueName"),
        fifo=truthy(p.get("FifoQueue")),
        content_based_deduplication=truthy(p.get("ContentBasedDeduplication")),
        visibility_timeout=optional_int(p.get("VisibilityTimeout")),
        message_retention=optional_int(p.get("MessageRetentionPeriod")),
        dead_letter_queue=dlq,
        max_receive_count=optional_int(redrive.get("maxReceiveCount")) if redrive else None,
        properties=p,
    )
