"""moto's SQS made to cost what SQS costs, in the moto server the local stack runs (`local.moto_server`).

moto 5.2 builds a queue's whole attribute map to read one flag
(`ContentBasedDeduplication`) three or four times per `SendMessage`, and that
map includes the approximate message counts, each a pass over every message in
the queue. A send therefore costs time in proportion to the queue's backlog:
once the fan-out fell behind (a busy machine, a burst), every EventBridge
delivery to the events queue got slower, the backlog grew faster, and the
stack did not recover. `SendMessageBatch` (the pipe's) reads the map once more
per entry to validate it. Here the counts are left out of the map while a
message or a batch is being sent (no send reads them), or while attributes
other than the counts are asked for (EventBridge asks for
`ContentBasedDeduplication` before every delivery to a FIFO queue);
`GetQueueAttributes` for the counts still counts.

moto also remembers the receipt handle of every message ever deleted, so that
deleting one again succeeds, as SQS lets it: a few hundred bytes per message,
forever, each one pinning a block of the allocator's memory. Here a queue
remembers the most recent `REMEMBERED_DELETIONS` instead; a receipt handle is
only good for its message's visibility timeout anyway.

Receiving is replaced (`receive_message`), because moto 5.2's ReceiveMessage
gets three things wrong that several concurrent receivers of one FIFO queue
(the pumps' pollers, as Lambda's) run into all the time:

* **Message group locks are not atomic.** moto reads the set of groups with
  messages in flight once, at the start of a receive, then walks the queue
  without a lock: two receives running at once both see a group as free and
  both take messages of it, so one group is processed by two consumers at once,
  out of order. Here a receive holds the queue's lock while it picks messages
  and marks them in flight, so the next receive sees the group taken.
* **A long poll busy-loops.** moto waits for "some message is visible", so when
  the only visible messages belong to groups with messages in flight, its wait
  returns at once and the poll spins for its whole wait (100% of a core). With
  several pollers on a FIFO queue that is the normal state. Here a receive that
  found nothing sleeps until something can change the answer: a send, a delete
  or a visibility change (each notifies the queue), or the moment the next
  in-flight or delayed message becomes visible.
* **Redelivery reverses a group.** When several in-flight messages of a group
  become visible together, moto unlocks the group only after stepping past all
  but the last, so it hands out the *last* first. Here every message whose
  visibility ran out leaves the in-flight set before the walk, which then takes
  the group's messages in queue order, as SQS does.

What SQS does (https://repost.aws/knowledge-center/sqs-fifo-messages-not-returned):
a receive returns as many messages of one group as it can, possibly with other
groups' messages, in order within each group; messages received and not yet
deleted (in flight) block the delivery of the rest of their group to anyone
until they are deleted or their visibility timeout runs out. Kept from moto: a
message received `maxReceiveCount` times moves to the dead-letter queue on the
next receive that reaches it, and the returned copies carry the requested
message attributes only. A message older than the queue's retention period is
dropped (moto marked it in flight and lost it).
"""

from __future__ import annotations

import functools
import math
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterable
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

REMEMBERED_DELETIONS = 10_000
# The longest a receive sleeps before looking again, so that a state change nothing notifies
# (SetQueueAttributes, a purge) is still seen within a second, as moto's own wait did.
LONGEST_NAP_SECONDS = 1.0

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


@dataclass
class Pick:
    """What one walk over a queue found: messages now in flight for this receive, and what to do with others."""

    received: list[Any] = field(default_factory=list)
    dead: list[Any] = field(default_factory=list)  # received maxReceiveCount times already: for the DLQ
    expired: list[Any] = field(default_factory=list)  # older than the retention period
    next_change_ms: float = math.inf  # when the next hidden message (in flight, delayed) becomes visible


def pick(queue: Any, count: int, visibility_timeout: int, now_ms: float) -> Pick:
    """Take up to `count` receivable messages in queue order; the caller holds the queue's lock."""
    found = Pick()
    fifo = bool(queue.fifo_queue)
    pending = queue.pending_messages
    # A message whose visibility ran out is in flight no more: it takes its place in the queue again.
    pending.difference_update([message for message in pending if now_ms > message.visible_at])
    blocked = {message.group_id for message in pending if message.group_id is not None} if fifo else set()
    max_receives = queue.redrive_policy["maxReceiveCount"] if queue.dead_letter_queue is not None else None
    retention_ms = int(queue.message_retention_period) * 1000
    for message in queue._messages:
        group = message.group_id if fifo else None
        hidden_until = max(message.visible_at, message.delayed_until)
        if now_ms <= message.visible_at or now_ms < message.delayed_until:
            found.next_change_ms = min(found.next_change_ms, hidden_until)
            if group is not None:
                blocked.add(group)  # nothing of a group passes a message of it that is not visible yet
            continue
        if group is not None and group in blocked:
            continue
        if message.sent_timestamp + retention_ms <= now_ms:
            found.expired.append(message)
            continue
        if max_receives is not None and message.approximate_receive_count >= max_receives:
            found.dead.append(message)
            continue
        message.mark_received(visibility_timeout=visibility_timeout)
        pending.add(message)
        found.received.append(message)
        if len(found.received) >= count:
            break
    return found


def patch() -> None:
    from moto.core.utils import unix_time_millis
    from moto.sqs import models as sqs_models
    from moto.sqs.models import Queue, SQSBackend, _filter_message_attributes

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
            outer = getattr(uncounted, "active", False)  # a batch's sends run inside the batch
            uncounted.active = True
            try:
                return call(*args, **kwargs)
            finally:
                uncounted.active = outer

        return run

    send_message = without_counts(SQSBackend.send_message)
    get_queue_attributes = SQSBackend.get_queue_attributes
    get_queue_attributes_uncounted = without_counts(get_queue_attributes)

    def attributes_counting_only_when_asked(self: Any, queue_name: str, attribute_names: list[str]) -> Any:
        # EventBridge asks for ContentBasedDeduplication before each delivery to a FIFO queue.
        if "All" in attribute_names or any(name.startswith("ApproximateNumber") for name in attribute_names):
            return get_queue_attributes(self, queue_name, attribute_names)
        return get_queue_attributes_uncounted(self, queue_name, attribute_names)

    SQSBackend.send_message = send_message  # type: ignore[method-assign]
    # A batch validates every entry first, reading the attribute map each time (the pipe's SendMessageBatch).
    SQSBackend.send_message_batch = without_counts(SQSBackend.send_message_batch)  # type: ignore[method-assign]
    SQSBackend.get_queue_attributes = attributes_counting_only_when_asked  # type: ignore[method-assign]

    queue_init = Queue.__init__

    def init_with_bounded_deletions(self: Any, *args: Any, **kwargs: Any) -> None:
        queue_init(self, *args, **kwargs)
        self.deleted_messages = RecentReceipts()

    Queue.__init__ = init_with_bounded_deletions  # type: ignore[method-assign]

    # moto draws a receipt handle's 185 letters one random.choice at a time: 8% of moto's CPU for an SQS
    # batch. A handle is opaque to its holder (SQS's own are not letters alone either); the same length of
    # letters and digits, from one call.
    sqs_models.generate_receipt_handle = _receipt_handle

    def receive_message(
        self: Any,
        queue_name: str,
        count: int,
        wait_seconds_timeout: int,
        visibility_timeout: int,
        message_attribute_names: list[str] | None = None,
    ) -> list[Any]:
        queue = self.get_queue(queue_name)
        polling_end_ms = unix_time_millis() + int(wait_seconds_timeout) * 1000
        while True:
            with queue._messages_lock:
                now_ms = unix_time_millis()
                found = pick(queue, count, visibility_timeout, now_ms)
                # Copies, taken under the lock, so the answer is the state this receive left.
                received = [deepcopy(message) for message in found.received]
                gone = {id(message) for message in found.dead + found.expired}
                if gone:
                    queue._messages = [message for message in queue._messages if id(message) not in gone]
                elif not received and now_ms < polling_end_ms:
                    nap_ms = min(polling_end_ms, found.next_change_ms + 1) - now_ms
                    queue._messages_lock.wait(min(LONGEST_NAP_SECONDS, max(nap_ms, 1) / 1000))
                    continue
            # The DLQ takes its own lock: not while holding this queue's.
            for message in found.dead:
                queue.dead_letter_queue.add_message(message)
            if received or not gone or unix_time_millis() >= polling_end_ms:
                for message in received:
                    _filter_message_attributes(message, message_attribute_names or [])
                return received

    queue_delete_message = Queue.delete_message

    def delete_message_notifying(queue: Any, receipt_handle: str) -> None:
        with queue._messages_lock:
            queue_delete_message(queue, receipt_handle)
            if queue.fifo_queue:
                # The group's last message in flight may be gone: the group's next one is receivable.
                queue._messages_lock.notify_all()

    change_message_visibility = SQSBackend.change_message_visibility

    def change_visibility_notifying(self: Any, queue_name: str, *args: Any, **kwargs: Any) -> None:
        queue = self.get_queue(queue_name)
        with queue._messages_lock:
            change_message_visibility(self, queue_name, *args, **kwargs)
            queue._messages_lock.notify_all()  # a message made visible now is receivable now

    SQSBackend.receive_message = receive_message  # type: ignore[method-assign]
    SQSBackend.change_message_visibility = change_visibility_notifying  # type: ignore[method-assign]
    Queue.delete_message = delete_message_notifying  # type: ignore[method-assign,assignment]
    _field_names_once()
    Queue._quanttrade_patched = True  # type: ignore[attr-defined]


def _field_names_once() -> None:
    """moto builds a queue's whole attribute map to read one attribute, three or four times per send, and
    each map turns every attribute's name into its field's name character by character (~30% of moto's
    CPU with the simulator at 10x). The field name depends on the attribute's name alone, so it is worked
    out once per name."""
    from moto.sqs import models

    models.camelcase_to_underscores = functools.lru_cache(maxsize=256)(models.camelcase_to_underscores)


RECEIPT_HANDLE_LENGTH = 185  # moto's


def _receipt_handle() -> str:
    return secrets.token_hex(RECEIPT_HANDLE_LENGTH // 2 + 1)[:RECEIPT_HANDLE_LENGTH]
