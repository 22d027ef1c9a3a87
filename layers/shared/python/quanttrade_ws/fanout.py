"""Fan-out: upstream events to exactly the clients that asked for them.

One SQS batch of events becomes, per event, a place in its stream (seq), an
audience (subscribers of the stream and of its stream type, plus members of the
event's data room, each connection once, filters and intervals applied), and
then one post per connection for the whole batch (several messages as one
`batch` message). Large audiences go out as delivery chunks on a second queue.

Acknowledgement rule: a record is acknowledged only when each of its messages
was delivered, deliberately dropped (filter, interval, gone connection), or
handed to a durable queue (delivery chunks, dead letters).

Order rule: the events queue is FIFO with one message group per source. A
record that cannot be delivered fails together with every later record of its
group, so SQS redelivers them in their order; a redelivered event keeps its seq
and clients drop what they already have. On the last receive before the DLQ a
connection that still cannot be reached is closed instead: its client resumes
and replays the message from the stream's history, and the group moves on.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from quanttrade_ws import topology
from quanttrade_ws.config import Settings
from quanttrade_ws.gateway import ConnectionGateway, DeliveryReport, GatewayError, Post
from quanttrade_ws.models import Subscription
from quanttrade_ws.protocol import ServerMessage, pack_batches
from quanttrade_ws.queues import OutgoingMessage, QueueSender
from quanttrade_ws.store import DynamoStore
from quanttrade_ws.upstream import InvalidEvent, UpstreamEvent, parse_upstream_event

logger = logging.getLogger(__name__)

# Large audiences are split by a stable hash of the connection id, so a
# connection is always in the same delivery group of a stream and its messages
# keep their order however the audience grows or shrinks.
CHUNK_SHARDS = 64


class Metrics(Protocol):
    def add_metric(self, name: str, unit: str, value: float) -> None: ...


class CountingMetrics:
    """Metrics kept in memory: for tests, benchmarks and the local stack's stats."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.samples: dict[str, list[float]] = defaultdict(list)

    def add_metric(self, name: str, unit: str, value: float) -> None:
        self.totals[name] += value
        if unit == "Milliseconds":
            self.samples[name].append(value)


class TtlCache:
    """Per-key values that expire after `seconds` in a warm function.

    Hot streams tick many times a second; their subscriber lists are read from
    DynamoDB at most once per `seconds`, which also bounds how long a new
    subscriber waits for its first message.
    """

    def __init__(self, seconds: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._monotonic = monotonic
        self._entries: dict[str, tuple[float, Any]] = {}

    def get(self, key: str, load: Callable[[], Any]) -> Any:
        now = self._monotonic()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        value = load()
        if self.seconds > 0:
            self._entries[key] = (now + self.seconds, value)
        return value

    def forget_connection(self, connection_id: str) -> None:
        """Drop a removed connection from every cached audience at once."""
        for key, (expires, value) in list(self._entries.items()):
            if isinstance(value, list):
                kept = [v for v in value if getattr(v, "connection_id", v) != connection_id]
                if len(kept) != len(value):
                    self._entries[key] = (expires, kept)


@dataclass
class _Batch:
    records: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    blocked_groups: set[str] = field(default_factory=set)
    outbox: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    record_ids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    event_times: dict[str, datetime] = field(default_factory=dict)
    chunks: list[tuple[dict[str, Any], list[OutgoingMessage]]] = field(default_factory=list)

    def fail(self, record: dict[str, Any]) -> None:
        """Fail a record and every later record of its FIFO group, so a retry keeps the order."""
        self.failures.append(record["messageId"])
        self.blocked_groups.add(_group(record))

    def fail_from(self, message_ids: set[str]) -> None:
        """After delivery: fail these records and every later record of their groups."""
        blocked: set[str] = set()
        for record in self.records:
            group = _group(record)
            if record["messageId"] in message_ids or group in blocked:
                blocked.add(group)
                if record["messageId"] not in self.failures:
                    self.failures.append(record["messageId"])


class FanOut:
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
    ) -> None:
        self.settings = settings
        self.store = store
        self.gateway = gateway
        self.sender = sender
        self._remove_connection = remove_connection
        self.metrics = metrics
        self.clock = clock
        self._monotonic = monotonic
        self.audiences = TtlCache(settings.subscriber_cache_seconds, monotonic)
        self._last_sent: dict[tuple[str, str], float] = {}

    # ------------------------------------------------------------ events queue

    def process_events(self, records: list[dict[str, Any]]) -> dict[str, list[dict[str, str]]]:
        """Handle one SQS batch from the events queue; returns the partial batch response."""
        batch = _Batch(records=records)
        invalid: list[tuple[dict[str, Any], str]] = []
        for record in records:
            if _group(record) in batch.blocked_groups:
                batch.failures.append(record["messageId"])
                continue
            try:
                event = parse_upstream_event(json.loads(record["body"]))
            except (ValueError, RecursionError, InvalidEvent) as error:
                # RecursionError: a body nested deeper than the JSON parser recurses is poison too.
                invalid.append((record, str(error) or type(error).__name__))
                continue
            try:
                self._route(event, record, batch)
            except Exception:
                logger.exception("event could not be sequenced or routed", extra={"event_id": event.id})
                batch.fail(record)
        self._dead_letter(invalid, batch)
        self._deliver(batch)
        # Chunks go out after the direct posts, so an event that crosses the chunk size
        # never overtakes the previous one of its stream.
        for record, chunks in batch.chunks:
            self._send_chunks(chunks, record, batch)
        return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in batch.failures]}

    def _route(self, event: UpstreamEvent, record: dict[str, Any], batch: _Batch) -> None:
        detail = event.detail
        stream = detail.stream

        def render(seq: int) -> str:
            return ServerMessage(
                message_type=detail.message_type,
                payload={**detail.model_dump(mode="json", exclude_none=True), "event_id": event.id},
                source=event.source,
                stream=stream,
                seq=seq,
            ).to_json()

        seq, message, _fresh = self.store.sequence_event(stream, event.id, render)
        audience = self.audience(event)
        if len(audience) > self.settings.chunk_size:
            batch.chunks.append((record, self._chunks(stream, seq, message, audience, event.event_time)))
            return
        for connection_id in audience:
            batch.outbox[connection_id].append(message)
            batch.record_ids[connection_id].add(record["messageId"])
            batch.event_times.setdefault(connection_id, event.event_time)

    def audience(self, event: UpstreamEvent) -> list[str]:
        """Every connection that should get this event, once, in a stable order."""
        detail = event.detail
        type_key = f"{detail.stream_type.value}:*"
        keys = [detail.stream, type_key] if detail.symbol_key else [type_key]
        chosen: dict[str, None] = {}
        now = self._monotonic()
        # API Gateway authorised only the handshake: a subscriber whose access token has
        # expired gets nothing more (checked on every event, not when the audience was cached).
        wall_clock = self.clock()
        for key in keys:
            subscriptions: list[Subscription] = self.audiences.get(key, lambda k=key: self.store.subscribers(k))
            for subscription in subscriptions:
                if subscription.connection_id in chosen or not subscription.live_at(wall_clock):
                    continue
                if not detail.passes(subscription.filters):
                    continue
                if subscription.interval and not self._interval_due(subscription, now):
                    continue
                chosen[subscription.connection_id] = None
        room = detail.data_room
        if room:
            members: list[Subscription] = self.audiences.get(f"room:{room}", lambda: self.store.room_audience(room))
            for member in members:
                if member.live_at(wall_clock):
                    chosen.setdefault(member.connection_id, None)
        return list(chosen)

    def _interval_due(self, subscription: Subscription, now: float) -> bool:
        """At most one update per `interval` seconds for this subscription (state of the warm function)."""
        key = (subscription.connection_id, subscription.stream_key)
        last = self._last_sent.get(key)
        if last is not None and now - last < float(subscription.interval or 0):
            return False
        self._last_sent[key] = now
        return True

    def _chunks(
        self, stream: str, seq: int, message: str, audience: list[str], event_time: datetime
    ) -> list[OutgoingMessage]:
        shards: dict[int, list[str]] = defaultdict(list)
        for connection_id in audience:
            shards[zlib.crc32(connection_id.encode()) % CHUNK_SHARDS].append(connection_id)
        size = self.settings.chunk_size
        return [
            OutgoingMessage(
                body=json.dumps(
                    {
                        "data": message,
                        "connections": members[start : start + size],
                        "stream": stream,
                        "seq": seq,
                        "event_time": event_time.isoformat(),
                    }
                ),
                group_id=f"{stream}#{shard}",
            )
            for shard, members in sorted(shards.items())
            for start in range(0, len(members), size)
        ]

    def _send_chunks(self, chunks: list[OutgoingMessage], record: dict[str, Any], batch: _Batch) -> None:
        if record["messageId"] in batch.failures:
            return
        if self.sender.send(self.settings.delivery_queue_url, chunks):
            batch.fail_from({record["messageId"]})
            return
        self.metrics.add_metric("DeliveryChunks", "Count", len(chunks))

    def _dead_letter(self, invalid: list[tuple[dict[str, Any], str]], batch: _Batch) -> None:
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

    def _deliver(self, batch: _Batch) -> None:
        max_bytes = self.settings.limits.max_message_bytes
        posts = [
            Post(connection_id, frame)
            for connection_id, messages in batch.outbox.items()
            for frame in pack_batches(messages, max_bytes)
        ]
        if not posts:
            return
        report = self.gateway.post_many(posts)
        self._account(report, batch.event_times.get)
        if not report.failed:
            return
        undeliverable = {post.connection_id for post in report.failed}
        failed_records = {message_id for cid in undeliverable for message_id in batch.record_ids[cid]}
        last_chance = {r["messageId"] for r in batch.records if _receive_count(r) >= _LAST_RECEIVE}
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

    def process_chunks(self, records: list[dict[str, Any]]) -> dict[str, list[dict[str, str]]]:
        """Handle delivery chunks: the shards of large audiences.

        The batch goes out in rounds: the first chunk of every message group in one
        `post_many`, then the second ones, and so on. Chunks of different groups (other
        connections, or other streams) share the function's requests in flight instead
        of waiting for each other's slowest post; a chunk still waits for the earlier
        chunk of its own group and fails with it, so no connection gets a stream's seq
        before one it missed (bench/README.md, the AWS model, measured the difference).
        """
        batch = _Batch()
        rounds: list[list[tuple[dict[str, Any], list[Post], datetime | None]]] = []
        depth: dict[str, int] = defaultdict(int)
        for record in records:
            try:
                chunk = json.loads(record["body"])
                data = chunk["data"].encode()
                connections = [str(c) for c in chunk["connections"]]
                event_time = datetime.fromisoformat(chunk["event_time"]) if chunk.get("event_time") else None
            except (ValueError, KeyError, TypeError, AttributeError):
                logger.error("malformed delivery chunk dropped", extra={"sqs": record.get("messageId")})
                self.metrics.add_metric("InvalidEvent", "Count", 1)
                continue
            place = depth[_group(record)]
            depth[_group(record)] += 1
            if place == len(rounds):
                rounds.append([])
            rounds[place].append((record, [Post(connection_id, data) for connection_id in connections], event_time))
        for chunks in rounds:
            # A failed post fails every chunk that carried it (the same message to the same
            # connection twice in one round costs a redelivery, never a loss).
            owners: dict[tuple[str, bytes], list[dict[str, Any]]] = defaultdict(list)
            event_times: dict[str, datetime | None] = {}
            posts: list[Post] = []
            for record, chunk_posts, event_time in chunks:
                if _group(record) in batch.blocked_groups:
                    batch.failures.append(record["messageId"])
                    continue
                for post in chunk_posts:
                    owners[(post.connection_id, post.data)].append(record)
                    event_times[post.connection_id] = event_time
                posts.extend(chunk_posts)
            if not posts:
                continue
            report = self.gateway.post_many(posts)
            self._account(report, event_times.get)
            # Redelivery re-posts the whole chunk: clients drop duplicates by (stream, seq),
            # and after five receives the chunk goes to the DLQ.
            failed = {id(record) for post in report.failed for record in owners[(post.connection_id, post.data)]}
            for record, _posts, _time in chunks:
                if id(record) in failed:
                    batch.fail(record)
        return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in batch.failures]}

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
        """Remove a connection and what it owns, and forget it in the warm function's state."""
        self.audiences.forget_connection(connection_id)
        for key in [key for key in self._last_sent if key[0] == connection_id]:
            del self._last_sent[key]
        try:
            self._remove_connection(connection_id)
        except Exception:
            # The sweeper removes it later; delivery to everyone else carries on.
            logger.exception("could not remove a connection", extra={"connection_id": connection_id})


_LAST_RECEIVE = topology.EVENTS_QUEUE.max_receive_count


def _receive_count(record: dict[str, Any]) -> int:
    try:
        return int(record.get("attributes", {}).get("ApproximateReceiveCount", "1"))
    except (TypeError, ValueError):
        return 1


def _group(record: dict[str, Any]) -> str:
    return str(record.get("attributes", {}).get("MessageGroupId", ""))
