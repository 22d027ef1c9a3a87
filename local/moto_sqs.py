"""moto's SQS made to cost what SQS costs, in the moto server the local stack runs (`local.moto_server`).

moto 5.2 builds a queue's whole attribute map to read one flag
(`ContentBasedDeduplication`) three or four times per `SendMessage`, and that
map includes the approximate message counts, each a pass over every message in
the queue. A send therefore costs time in proportion to the queue's backlog:
once the fan-out fell behind (a busy machine, a burst), every EventBridge
delivery to the events queue got slower, the backlog grew faster, and the
stack did not recover. Here the counts are left out of the map while a message
is being sent, alone or in a batch (no send reads them), or while attributes other than the counts
are asked for (EventBridge asks for `ContentBasedDeduplication` before every
delivery to a FIFO queue); `GetQueueAttributes` for the counts still counts.

moto also remembers the receipt handle of every message ever deleted, so that
deleting one again succeeds, as SQS lets it: a few hundred bytes per message,
forever, each one pinning a block of the allocator's memory. Here a queue
remembers the most recent `REMEMBERED_DELETIONS` instead; a receipt handle is
only good for its message's visibility timeout anyway.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

REMEMBERED_DELETIONS = 10_000

COUNT_PROPERTIES = (
    "approximate_number_of_messages",
    "approximate_number_of_messages_delayed",
    "approximate_number_of_messages_not_visible",
)


class RecentReceipts:
    """The receipt handles of the most recently deleted messages (the set moto keeps, bounded)."""

    def __init__(self, limit: int = REMEMBERED_DELETIONS) -> None:
        self._handles: OrderedDict[str, None] = OrderedDict()
        self._limit = limit

    def __contains__(self, handle: object) -> bool:
        return handle in self._handles

    def __len__(self) -> int:
        return len(self._handles)

    def update(self, handles: Iterable[str]) -> None:
        for handle in handles:
            self._handles[handle] = None
            self._handles.move_to_end(handle)
        while len(self._handles) > self._limit:
            self._handles.popitem(last=False)


def patch() -> None:
    from moto.sqs.models import Queue, SQSBackend

    if getattr(Queue, "_quanttrade_patched", False):
        return
    uncounted = threading.local()  # set while this thread runs a call that reads no message count

    def uncounted_when_not_asked(counted: property) -> property:
        def count(queue: Any) -> int:
            return 0 if getattr(uncounted, "active", False) else counted.fget(queue)  # type: ignore[misc]

        return property(count)

    for name in COUNT_PROPERTIES:
        setattr(Queue, name, uncounted_when_not_asked(getattr(Queue, name)))

    def without_counts(call: Any) -> Any:
        @functools.wraps(call)
        def run(*args: Any, **kwargs: Any) -> Any:
            uncounted.active = True
            try:
                return call(*args, **kwargs)
            finally:
                uncounted.active = False

        return run

    send_message = without_counts(SQSBackend.send_message)
    # SendMessageBatch validates each entry against the queue's attribute map before sending it.
    send_message_batch = without_counts(SQSBackend.send_message_batch)
    get_queue_attributes = SQSBackend.get_queue_attributes
    get_queue_attributes_uncounted = without_counts(get_queue_attributes)

    def attributes_counting_only_when_asked(self: Any, queue_name: str, attribute_names: list[str]) -> Any:
        # EventBridge asks for ContentBasedDeduplication before each delivery to a FIFO queue.
        if "All" in attribute_names or any(name.startswith("ApproximateNumber") for name in attribute_names):
            return get_queue_attributes(self, queue_name, attribute_names)
        return get_queue_attributes_uncounted(self, queue_name, attribute_names)

    SQSBackend.send_message = send_message  # type: ignore[method-assign]
    SQSBackend.send_message_batch = send_message_batch  # type: ignore[method-assign]
    SQSBackend.get_queue_attributes = attributes_counting_only_when_asked  # type: ignore[method-assign]

    queue_init = Queue.__init__

    def init_with_bounded_deletions(self: Any, *args: Any, **kwargs: Any) -> None:
        queue_init(self, *args, **kwargs)
        self.deleted_messages = RecentReceipts()

    Queue.__init__ = init_with_bounded_deletions  # type: ignore[method-assign]
    _read_attributes_by_field()
    Queue._quanttrade_patched = True  # type: ignore[attr-defined]


def _read_attributes_by_field() -> None:
    """moto builds a queue's whole attribute map to read one attribute: three or four times per send, and
    once for every message a receive hands out (its retention period). Each map turns every attribute's
    name into its field's name, character by character (~30% of moto's CPU with the simulator at 10x).
    The field name depends on the attribute's name alone, so it is worked out once per name; a receive
    reads the retention period from its field."""
    from moto.sqs import models

    models.camelcase_to_underscores = functools.lru_cache(maxsize=256)(models.camelcase_to_underscores)

    def retained(self: Any, queue_name: str, message: Any) -> bool:
        retain_until = self.get_queue(queue_name).message_retention_period + message.sent_timestamp / 1000
        return bool(retain_until > models.unix_time())

    models.SQSBackend.is_message_valid_based_on_retention_period = retained  # type: ignore[method-assign]
