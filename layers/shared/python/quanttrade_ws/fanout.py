"""Fan-out: upstream events to exactly the clients that asked for them.

One SQS batch of events becomes, per event, a place in its stream (seq) and an
audience, then one post per connection for the whole batch (several messages as
one `batch` message); large audiences go out as delivery chunks on a second
queue, whose consumer likewise posts once per connection for all the chunks of
its batch. Why a record is acknowledged only when each of its messages is
delivered, dropped on purpose or durably queued, and how FIFO order survives
failures: docs/adr/0001-fan-out-acknowledgement-and-order.md.

Going below one post per message:

* Conflation (`latest_only`, the subscriber's choice): of the messages of one
  stream waiting for the same post, only the newest goes out; the older ones
  are deliberately dropped (they count as handled, like an `interval` skip).
* Coalescing window (`Settings.coalesce_window_ms`, the operator's choice, off
  by default): an invocation whose batch was not full returns no sooner than
  the window after it started. The queue's poller hands over one batch per
  message group at a time, so the next batch gathers a window's worth of events,
  and each connection gets them in one post. Nothing is held across invocations
  (that would acknowledge records not yet delivered): the events wait in the
  queue, durable, and a full batch (a backlog) never waits.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, Protocol

from quanttrade_protocol.data import data_payload
from quanttrade_ws import topology
from quanttrade_ws.config import Settings
from quanttrade_ws.connection_gateway import ConnectionGateway, DeliveryReport, GatewayError, Post
from quanttrade_ws.delivery_chunks import DeliveryChunk, MalformedChunk, chunk_messages
from quanttrade_ws.models import Subscription
from quanttrade_ws.observability import logger
from quanttrade_ws.protocol import ServerMessage, pack_batches
from quanttrade_ws.queues import OutgoingMessage, QueueSender
from quanttrade_ws.record_batch import RecordBatch, conflate, group_of, receive_count
from quanttrade_ws.store.dynamo_store import DynamoStore
from quanttrade_ws.ttl_cache import TtlCache
from quanttrade_ws.upstream import InvalidEvent, UpstreamEvent, parse_upstream_event

# Time an invocation keeps for itself after its posts: sending delivery chunks to SQS, flushing
# metrics, returning the batch response. Posts still throttled this close to the end are failed
# (their records come back) rather than retried into a Lambda timeout, which would fail the whole batch.
DEADLINE_RESERVE_SECONDS = 2.0
# The `interval` state a warm fan-out keeps, (connection, stream) pairs: about 40 MB at most.
INTERVAL_STATE_ENTRIES = 100_000
# A seq wider than any stream reaches (a million a second for 30 years), to size a message before it has one.
WIDEST_SEQ = 10**15


class Metrics(Protocol):
    def add_metric(self, name: str, unit: str, value: float) -> None: ...


class EventFanOut:
    """Upstream events to their subscribers: the events queue's batches, and the delivery queue's chunks."""

    def __init__(
        self,
        settings: Settings,
        store: DynamoStore,
        gateway: ConnectionGateway,
        sender: QueueSender,
        remove_connection: Callable[[str], object],
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.store = store
        self.gateway = gateway
        self.sender = sender
        self._remove_connection = remove_connection
        self.metrics = metrics
        self.clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self.audiences = TtlCache(settings.subscriber_cache_seconds, monotonic)
        self._last_sent: dict[tuple[str, str], tuple[float, float]] = {}  # (sent at, interval)

    # ------------------------------------------------------------ events queue

    def process_events(
        self, records: list[dict[str, Any]], time_left_ms: int | None = None
    ) -> dict[str, list[dict[str, str]]]:
        """Handle one SQS batch from the events queue; returns the partial batch response.

        `time_left_ms` is the invocation's remaining time (the Lambda context's
        `get_remaining_time_in_millis()`): throttled posts are retried until shortly before it.

        Not Powertools' batch processor, which settles one record at a time: here the batch's
        messages are packed across records (one post per connection for the whole batch), so a
        record's fate is known only after every post of the batch, and a record that fails
        takes the later records of its FIFO group with it (`record_batch.RecordBatch`).
        """
        started = self._monotonic()
        batch = RecordBatch(records=records, deadline=self._deadline(started, time_left_ms))
        parsed: list[tuple[dict[str, Any], UpstreamEvent | str]] = []
        for record in records:
            try:
                parsed.append((record, self._deliverable(parse_upstream_event(json.loads(record["body"])))))
            except (ValueError, RecursionError, InvalidEvent) as error:
                # RecursionError: a body nested deeper than the JSON parser recurses is poison too.
                parsed.append((record, str(error) or type(error).__name__))
        places = self._sequence_together([(event, record) for record, event in parsed if not isinstance(event, str)])
        invalid: list[tuple[dict[str, Any], str]] = []
        for record, event in parsed:
            if group_of(record) in batch.blocked_groups:
                # Even an invalid one: it is dead-lettered in its turn, after the records before it.
                batch.failures.append(record["messageId"])
            elif isinstance(event, str):
                invalid.append((record, event))
            else:
                try:
                    self._route(event, record, batch, places.pop(record["messageId"], None))
                except Exception:
                    logger.exception("event could not be sequenced or routed", extra={"event_id": event.id})
                    batch.fail(record)
        self._dead_letter(invalid, batch)
        self._deliver(batch)
        # Chunks go out after the direct posts, so an event that crosses the chunk size
        # never overtakes the previous one of its stream.
        for record, chunks in batch.chunks:
            self._send_chunks(chunks, record, batch)
        self._linger(started, len(records), topology.FANOUT.batch_size)
        return batch.response()

    def _deliverable(self, event: UpstreamEvent) -> UpstreamEvent:
        """The event, if API Gateway would take the message it becomes; InvalidEvent if not.

        A message over the WebSocket message size is refused (413) for every subscriber on every
        receive: as a transient failure it would hold its message group until the last receive,
        and then close the connections of its whole audience as unreachable. It goes to the
        dead-letter queue at once instead, with the reason.
        """
        limit = self.settings.limits.max_message_bytes
        size = len(_renderer(event)(WIDEST_SEQ).encode())
        if size > limit:
            raise InvalidEvent(
                f"{event.detail_type}: its message would be {size} bytes, "
                f"over the {limit} a WebSocket message may carry"
            )
        return event

    def _sequence_together(self, events: list[tuple[UpstreamEvent, dict[str, Any]]]) -> dict[str, tuple[int, str]]:
        """(seq, message) by SQS message id, from one read and one write for the whole batch where the store
        can; a record left out is sequenced alone by `_route` (a redelivery, a contended head, a failed write)."""
        if not events:
            return {}
        try:
            placed = self.store.sequence_new_events([(e.detail.stream, e.id, _renderer(e)) for e, _ in events])
        except Exception:
            # One at a time instead: a record that still fails then fails alone, with its group after it.
            logger.warning("batch sequencing failed; sequencing event by event", exc_info=True)
            return {}
        if placed is None:
            return {}
        return {record["messageId"]: place for (_, record), place in zip(events, placed, strict=True)}

    def _route(
        self, event: UpstreamEvent, record: dict[str, Any], batch: RecordBatch, place: tuple[int, str] | None
    ) -> None:
        detail = event.detail
        stream = detail.stream
        seq, message = place or self.store.sequence_event(stream, event.id, _renderer(event))[:2]
        size = self.settings.chunk_size
        # From the second page of its audience on, an event's chunks go to the delivery queue as the pages
        # are read, so delivery functions start on a large audience before its last page is in (100,000
        # subscribers are over a dozen pages). The first page waits for the second: an audience of one or two
        # pages then goes out in one round of chunks, not a second round that queues behind the first in
        # the same delivery groups. Unless this batch posts directly to the stream before this event: its
        # chunks then wait for those posts (`_deliver`), so that this event cannot overtake that one.
        send_now = stream not in batch.posted_streams
        # Once an event of the stream went by chunks, the later ones of the batch follow it through the
        # same delivery groups, even below the chunk size, rather than overtaking it with direct posts.
        by_chunks = stream in batch.chunked_streams
        audience: dict[str, bool] = {}
        unsent: dict[str, bool] = {}
        for number, part in enumerate(self._audience_parts(event)):
            audience.update(part)
            unsent.update(part)
            if send_now and number > 0 and (by_chunks or len(audience) > size):
                if not self._queue_chunks(
                    chunk_messages(stream, seq, message, unsent, event.event_time, size), record, batch
                ):
                    return
                unsent = {}
        if by_chunks or len(audience) > size:
            batch.chunked_streams.add(stream)
            if unsent:
                chunks = chunk_messages(stream, seq, message, unsent, event.event_time, size)
                if send_now:
                    self._queue_chunks(chunks, record, batch)
                else:
                    batch.chunks.append((record, chunks))
            return
        batch.posted_streams.add(stream)
        event_time = event.event_time
        for connection_id, latest_only in audience.items():
            batch.outbox[connection_id].append((stream if latest_only else None, message))
            batch.record_ids[connection_id].add(record["messageId"])
            batch.event_times.setdefault(connection_id, event_time)

    def audience(self, event: UpstreamEvent) -> list[str]:
        """Every connection that should get this event, once, in a stable order."""
        return [connection_id for part in self._audience_parts(event) for connection_id in part]

    def _audience_parts(self, event: UpstreamEvent) -> Iterator[dict[str, bool]]:
        """The audience as it is read, a page of subscribers at a time: each connection once, with whether
        the subscription that reached it is latest-only."""
        detail = event.detail
        type_key = f"{detail.stream_type.value}:*"
        keys = [detail.stream, type_key] if detail.symbol_key else [type_key]
        chosen: set[str] = set()
        now = self._monotonic()
        # API Gateway authorised only the handshake: a subscriber whose access token has
        # expired gets nothing more (checked on every event, not when the audience was cached).
        wall_clock = self.clock()
        for key in keys:
            for subscriptions in self._subscriber_pages(key):
                part: dict[str, bool] = {}
                for subscription in subscriptions:
                    if subscription.connection_id in chosen or not subscription.live_at(wall_clock):
                        continue
                    if not detail.passes(subscription.filters):
                        continue
                    if subscription.interval and not self._interval_due(subscription, now):
                        continue
                    chosen.add(subscription.connection_id)
                    part[subscription.connection_id] = subscription.latest_only
                if part:
                    yield part
        room = detail.data_room
        if room:
            members: list[Subscription] = self.audiences.get(f"room:{room}", lambda: self.store.room_audience(room))
            part = {}
            for member in members:
                if member.live_at(wall_clock) and member.connection_id not in chosen:
                    chosen.add(member.connection_id)
                    part[member.connection_id] = False
            if part:
                yield part

    def _subscriber_pages(self, key: str) -> Iterator[list[Subscription]]:
        """One stream key's subscribers: from the cache at once, or page by page as DynamoDB answers (then cached)."""
        cached: list[Subscription] | None = self.audiences.peek(key)
        if cached is not None:
            yield cached
            return
        read_at = self._monotonic()
        read: list[Subscription] = []
        for page in self.store.subscriber_pages(key):
            read += page
            yield page
        self.audiences.put(key, read, read_at)

    def _interval_due(self, subscription: Subscription, now: float) -> bool:
        """At most one update per `interval` seconds for this subscription (state of the warm function).

        Best effort, as any warm function's state is (a new environment starts without it). The
        state is bounded however many connections come and go: past `INTERVAL_STATE_ENTRIES`,
        the entries whose interval has passed go (they decide nothing any more), then the
        longest unsent ones (a connection that went away is never sent to again).
        """
        key = (subscription.connection_id, subscription.stream_key)
        interval = float(subscription.interval or 0)
        entry = self._last_sent.get(key)
        if entry is not None and now - entry[0] < interval:
            return False
        self._last_sent.pop(key, None)  # to the back: the order is the order of sending
        self._last_sent[key] = (now, interval)
        if len(self._last_sent) > INTERVAL_STATE_ENTRIES:
            self._trim_interval_state(now)
        return True

    def _trim_interval_state(self, now: float) -> None:
        # Down to nine tenths, so that a full state is trimmed once per tenth of it, not on every send.
        keep = INTERVAL_STATE_ENTRIES * 9 // 10
        state = self._last_sent
        for key in [key for key, (sent_at, interval) in state.items() if now - sent_at >= interval]:
            del state[key]
        while len(state) > keep:
            del state[next(iter(state))]

    def _queue_chunks(self, chunks: list[OutgoingMessage], record: dict[str, Any], batch: RecordBatch) -> bool:
        """While routing: send a record's chunks now; if any is not sent, fail the record (and block its group)."""
        if self.sender.send(self.settings.delivery_queue_url, chunks):
            batch.fail(record)
            return False
        self.metrics.add_metric("DeliveryChunks", "Count", len(chunks))
        return True

    def _send_chunks(self, chunks: list[OutgoingMessage], record: dict[str, Any], batch: RecordBatch) -> None:
        """After the direct posts: send the chunks that waited for them; if any is not sent, fail the record
        and the later records of its group."""
        if record["messageId"] in batch.failures:
            return
        if self.sender.send(self.settings.delivery_queue_url, chunks):
            batch.fail_from({record["messageId"]})
            return
        self.metrics.add_metric("DeliveryChunks", "Count", len(chunks))

    def _dead_letter(self, invalid: list[tuple[dict[str, Any], str]], batch: RecordBatch) -> None:
        for record, reason in invalid:
            logger.warning(
                "invalid upstream event sent to the DLQ", extra={"reason": reason, "sqs": record["messageId"]}
            )
        if not invalid:
            return
        self.metrics.add_metric("InvalidEvent", "Count", len(invalid))
        letters = [
            OutgoingMessage(json.dumps({"reason": reason, "body": record.get("body", "")}), group_id="invalid")
            for record, reason in invalid
        ]
        unsent = {letter.body for letter in self.sender.send(self.settings.events_dlq_url, letters)}
        for letter, (record, _reason) in zip(letters, invalid, strict=True):
            if letter.body in unsent:
                batch.fail(record)

    def _posts(self, outbox: dict[str, list[tuple[str | None, str]]]) -> list[Post]:
        """One post per connection (more only past the frame size limit), latest-only streams conflated."""
        max_bytes = self.settings.limits.max_message_bytes
        posts = []
        superseded = 0
        for connection_id, entries in outbox.items():
            messages = conflate(entries)
            superseded += len(entries) - len(messages)
            posts += [Post(connection_id, frame) for frame in pack_batches(messages, max_bytes)]
        if superseded:
            self.metrics.add_metric("Conflated", "Count", superseded)
        return posts

    @staticmethod
    def _deadline(started: float, time_left_ms: int | None) -> float | None:
        """When the gateway must be done with this invocation's posts, on the monotonic clock."""
        if time_left_ms is None:
            return None
        return started + time_left_ms / 1000 - DEADLINE_RESERVE_SECONDS

    def _linger(self, started: float, records: int, batch_size: int) -> None:
        """The coalescing window: a batch that was not full returns no sooner than the window after it started."""
        window = self.settings.coalesce_window_ms / 1000
        if window <= 0 or records >= batch_size:
            return
        remaining = started + window - self._monotonic()
        if remaining > 0:
            self._sleep(remaining)

    def _deliver(self, batch: RecordBatch) -> None:
        posts = self._posts(batch.outbox)
        if not posts:
            return
        report = self.gateway.post_many(posts, batch.deadline)
        self._account(report, batch.event_times.get)
        if not report.failed:
            return
        undeliverable = {post.connection_id for post in report.failed}
        failed_records = {message_id for cid in undeliverable for message_id in batch.record_ids[cid]}
        last_chance = {r["messageId"] for r in batch.records if receive_count(r) >= _LAST_RECEIVE}
        if failed_records & last_chance:
            # Redelivering would dead-letter an event for everyone: close the connections
            # we cannot reach instead; their clients resume and replay from history, which
            # covers the batch's other records too (the later ones of a blocked group come
            # back together with it, on fewer receives).
            for connection_id in undeliverable:
                try:
                    self.gateway.close(connection_id)
                except GatewayError:
                    # Closing fails too (throttled, or the gateway is failing). Failing the batch would
                    # dead-letter it, and every later event of the group after it: let the connection
                    # go here instead, so nothing reaches it past the gap. Its client, unanswered on
                    # it, reconnects and resumes.
                    logger.warning("could not close an unreachable connection", extra={"connection_id": connection_id})
                    self._let_go(connection_id)
            self.metrics.add_metric("UndeliverableClosed", "Count", len(undeliverable))
            return
        batch.fail_from(failed_records)

    # ------------------------------------------------------------ delivery queue

    def process_chunks(
        self, records: list[dict[str, Any]], time_left_ms: int | None = None
    ) -> dict[str, list[dict[str, str]]]:
        """Handle delivery chunks (the shards of large audiences): one post per connection for the whole batch.

        `time_left_ms` as for `process_events`.

        Not Powertools' batch processor, for the reason `process_events` gives: the chunks' messages
        are packed across records, so a record's fate is known only after every post of the batch.
        """
        started = self._monotonic()
        batch = RecordBatch(records=records, deadline=self._deadline(started, time_left_ms))
        for record in records:
            try:
                chunk = DeliveryChunk.parse(record["body"])
            except (MalformedChunk, KeyError):
                logger.error("malformed delivery chunk dropped", extra={"sqs": record.get("messageId")})
                self.metrics.add_metric("InvalidEvent", "Count", 1)
                continue
            for connection_id in chunk.connections:
                key = chunk.stream if connection_id in chunk.latest_only else None
                batch.outbox[connection_id].append((key, chunk.message))
                batch.record_ids[connection_id].add(record["messageId"])
                if chunk.event_time is not None:
                    batch.event_times.setdefault(connection_id, chunk.event_time)
        posts = self._posts(batch.outbox)
        if posts:
            report = self.gateway.post_many(posts, batch.deadline)
            self._account(report, batch.event_times.get)
            if report.failed:
                # Redelivery re-posts those chunks whole: clients drop duplicates by (stream, seq),
                # and after five receives a chunk goes to the DLQ. Later chunks of their groups wait with them.
                batch.fail_from({mid for post in report.failed for mid in batch.record_ids[post.connection_id]})
        self._linger(started, len(records), topology.DELIVERY.batch_size)
        return batch.response()

    # ------------------------------------------------------------ shared

    def _account(self, report: DeliveryReport, event_time_of: Callable[[str], datetime | None]) -> None:
        # One lag value per event, not per post: a batch stays a handful of EMF values
        # however large its audience (and the oldest event of a batch is what the alarm needs).
        now = self.clock()
        event_times = {event_time_of(post.connection_id) for post in report.delivered}
        for event_time in filter(None, event_times):
            self.metrics.add_metric("DeliveryLag", "Milliseconds", max(0.0, (now - event_time.timestamp()) * 1000))
        self.metrics.add_metric("Delivered", "Count", len(report.delivered))
        if report.throttle_retries:
            self.metrics.add_metric("Throttled", "Count", report.throttle_retries)
        if report.gone:
            self.metrics.add_metric("Gone", "Count", len(report.gone))
        for connection_id in {post.connection_id for post in report.gone}:
            self._let_go(connection_id)
        if report.failed:
            self.metrics.add_metric("DeliveryFailed", "Count", len(report.failed))

    def _let_go(self, connection_id: str) -> None:
        """Remove a connection and what it owns, and forget it in the cached audiences (its interval
        state is left to age out: looking for it would cost a walk of all of it per connection)."""
        self.audiences.forget_connection(connection_id)
        try:
            self._remove_connection(connection_id)
        except Exception:
            # The sweeper removes it later; delivery to everyone else carries on.
            logger.exception("could not remove a connection", extra={"connection_id": connection_id})


_LAST_RECEIVE = topology.EVENTS_QUEUE.max_receive_count


def _renderer(event: UpstreamEvent) -> Callable[[int], str]:
    """The message an event becomes once its seq is known."""
    detail = event.detail

    def render(seq: int) -> str:
        return ServerMessage(
            message_type=detail.message_type,
            payload=data_payload(detail.message_type, detail, event.id),
            source=event.source,
            stream=detail.stream,
            seq=seq,
        ).to_json()

    return render
