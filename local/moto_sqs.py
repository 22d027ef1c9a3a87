"""moto's SQS made to cost what SQS costs, in the moto server the local stack runs (`local.moto_server`).

moto 5.2 builds a queue's whole attribute map to read one flag
(`ContentBasedDeduplication`) three or four times per `SendMessage`, and that
map includes the approximate message counts, each a pass over every message in
the queue. A send therefore costs time in proportion to the queue's backlog:
once the fan-out fell behind (a busy machine, a burst), every EventBridge
delivery to the events queue got slower, the backlog grew faster, and the
stack did not recover. Here the counts are left out of the map while a message
is being sent (no send reads them); `GetQueueAttributes` still counts.
"""

from __future__ import annotations

import threading
from typing import Any

COUNT_PROPERTIES = (
    "approximate_number_of_messages",
    "approximate_number_of_messages_delayed",
    "approximate_number_of_messages_not_visible",
)


def patch() -> None:
    from moto.sqs.models import Queue, SQSBackend

    if getattr(Queue, "_quanttrade_patched", False):
        return
    sending = threading.local()

    def uncounted_while_sending(counted: property) -> property:
        def count(queue: Any) -> int:
            return 0 if getattr(sending, "active", False) else counted.fget(queue)  # type: ignore[misc]

        return property(count)

    for name in COUNT_PROPERTIES:
        setattr(Queue, name, uncounted_while_sending(getattr(Queue, name)))

    send_message = SQSBackend.send_message

    def send_without_counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        sending.active = True
        try:
            return send_message(self, *args, **kwargs)
        finally:
            sending.active = False

    SQSBackend.send_message = send_without_counting  # type: ignore[method-assign]
    Queue._quanttrade_patched = True  # type: ignore[attr-defined]
