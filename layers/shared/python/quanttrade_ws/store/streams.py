"""Streams: each upstream event's place (seq) in its stream, the stream's head, and the history for replay.

A stream's head (seq 0) holds its counter and last value; history entries
expire after `history_seconds`; an `event#<id>` marker keeps a redelivered event
on the seq it was given the first time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from quanttrade_ws.models import HistoryEntry, StreamHead
from quanttrade_ws.store.codec import get_int, get_str, n, s
from quanttrade_ws.store.tables import BATCH_GET_KEYS, TRANSACTION_ACTIONS, TRANSACTION_BYTES, DynamoTables, chunks

EVENT_PREFIX = "event#"


class DynamoStreams(DynamoTables):
    """The streams table: heads, history entries and event markers."""

    def sequence_event(
        self, stream: str, event_id: str, message_for_seq: Callable[[int], str]
    ) -> tuple[int, str, bool]:
        """Give an upstream event its place in its stream, once.

        Returns (seq, message, fresh). A redelivered event gets the seq and message
        it was given the first time (fresh=False), so clients can drop the duplicate.
        `message_for_seq(seq) -> str` renders the message once the seq is known.
        """
        marker_key = {"stream": s(EVENT_PREFIX + event_id), "seq": n(0)}
        head_key = {"stream": s(stream), "seq": n(0)}
        # The seq is taken in the same transaction that stores the entry, conditional on the
        # head still being where it was read: a failed write leaves no gap in the stream, and
        # two writers of one event or one stream cannot both win (the loser looks again).
        for _ in range(8):
            known = self._db.get_item(TableName=self.streams_table, Key=marker_key, ConsistentRead=True).get("Item")
            stale_seq = None
            if known:
                stale_seq = get_int(known, "assigned_seq")
                entry = self._db.get_item(
                    TableName=self.streams_table, Key={"stream": s(stream), "seq": n(stale_seq)}, ConsistentRead=True
                ).get("Item")
                if entry:
                    return stale_seq, get_str(entry, "message"), False
            head = self._db.get_item(TableName=self.streams_table, Key=head_key, ConsistentRead=True).get("Item") or {}
            last = get_int(head, "last_seq")
            seq = last + 1
            message = message_for_seq(seq)
            expires = self._history_expiry()
            reasons = self._transact(
                [
                    {
                        "Put": {
                            "TableName": self.streams_table,
                            "Item": {
                                "stream": s(stream),
                                "seq": n(seq),
                                "message": s(message),
                                "expires_at": expires,
                            },
                        }
                    },
                    {
                        "Put": {
                            "TableName": self.streams_table,
                            "Item": {**marker_key, "assigned_seq": n(seq), "expires_at": expires},
                            # New, or known but its entry expired (seq 0 is never assigned).
                            "ConditionExpression": "attribute_not_exists(assigned_seq) OR assigned_seq = :old",
                            "ExpressionAttributeValues": {":old": n(stale_seq or 0)},
                        }
                    },
                    self._move_head(stream, seq, message, last),
                ]
            )
            if reasons is not None:
                continue  # another writer sequenced this event or this stream first: look again
            return seq, message, True
        raise RuntimeError(f"could not sequence event {event_id} on {stream}: too much contention")

    def sequence_new_events(
        self, events: Sequence[tuple[str, str, Callable[[int], str]]]
    ) -> list[tuple[int, str]] | None:
        """Sequence a batch of events never seen before in one read and one transaction.

        `events` are (stream, event id, render) in the order they arrived; each
        gets the next seq of its stream, in that order. This is the events
        queue's common case, and it costs one BatchGetItem and one
        TransactWriteItems for the whole batch instead of three calls an event.
        Returns the (seq, message) of each, or None with nothing written when
        it does not apply: an event was sequenced before (a redelivery), a head
        moved between the read and the write, or the batch does not fit one
        transaction. The caller then gives each event to `sequence_event`,
        which handles all of those one at a time.
        """
        ids = [event_id for _, event_id, _ in events]
        streams = list(dict.fromkeys(stream for stream, _, _ in events))
        if not events or len(set(ids)) != len(ids) or 2 * len(events) + len(streams) > TRANSACTION_ACTIONS:
            return None
        found = self._stream_items([(EVENT_PREFIX + event_id, 0) for event_id in ids] + [(st, 0) for st in streams])
        if any((EVENT_PREFIX + event_id, 0) in found for event_id in ids):
            return None
        read = {stream: get_int(found.get((stream, 0), {}), "last_seq") for stream in streams}
        last = dict(read)
        expires = self._history_expiry()
        placed: list[tuple[int, str]] = []
        items: list[dict[str, Any]] = []
        for stream, event_id, render in events:
            last[stream] += 1
            seq = last[stream]
            message = render(seq)
            placed.append((seq, message))
            entry = {"stream": s(stream), "seq": n(seq), "message": s(message), "expires_at": expires}
            marker = {
                "stream": s(EVENT_PREFIX + event_id),
                "seq": n(0),
                "assigned_seq": n(seq),
                "expires_at": expires,
            }
            items.append({"Put": {"TableName": self.streams_table, "Item": entry}})
            items.append(
                {
                    "Put": {
                        "TableName": self.streams_table,
                        "Item": marker,
                        "ConditionExpression": "attribute_not_exists(assigned_seq)",
                    }
                }
            )
        newest = {stream: (seq, message) for (stream, _, _), (seq, message) in zip(events, placed, strict=True)}
        for stream, (seq, message) in newest.items():
            items.append(self._move_head(stream, seq, message, read[stream]))
        # Each message is written twice (its entry and its stream's head); keep well inside the cap.
        if 2 * sum(len(message.encode()) for _, message in placed) > TRANSACTION_BYTES * 3 // 4:
            return None
        return placed if self._transact(items) is None else None

    def stream_head(self, stream: str) -> StreamHead:
        found = self._db.get_item(
            TableName=self.streams_table, Key={"stream": s(stream), "seq": n(0)}, ConsistentRead=True
        ).get("Item")
        return _stream_head(stream, found)

    def stream_heads(self, streams: Iterable[str]) -> dict[str, StreamHead]:
        """Where several streams stand, as `stream_head` reads each one, by stream in the order given."""
        wanted = list(dict.fromkeys(streams))
        found = self._stream_items([(stream, 0) for stream in wanted])
        return {stream: _stream_head(stream, found.get((stream, 0))) for stream in wanted}

    def history_after(self, stream: str, after_seq: int, limit: int) -> list[HistoryEntry]:
        """Retained messages of a stream after `after_seq`, oldest first, expired ones left out."""
        # Newest first with a Limit, so a long-absent client costs at most `limit` reads;
        # retention is a count as well as an age.
        now = int(self.clock())
        page = self._db.query(
            TableName=self.streams_table,
            KeyConditionExpression="#s = :s AND seq > :after",
            ExpressionAttributeNames={"#s": "stream"},  # a DynamoDB reserved word (moto does not check key conditions)
            ExpressionAttributeValues={":s": s(stream), ":after": n(max(after_seq, 0))},
            ScanIndexForward=False,
            Limit=limit,
            ConsistentRead=True,
        )
        entries = [
            HistoryEntry(get_int(item, "seq"), get_str(item, "message"))
            for item in page.get("Items", [])
            if get_int(item, "expires_at") >= now  # TTL deletion lags; an expired entry is no longer retained
        ]
        entries.reverse()
        return entries

    def _history_expiry(self) -> dict[str, str]:
        """When an entry (and its event's marker) written now leaves the history."""
        return n(int(self.clock()) + self._settings.history_seconds)

    def _move_head(self, stream: str, seq: int, message: str, last: int) -> dict[str, Any]:
        """A transaction step moving the stream's head to `seq` and its last value, only from `last`
        (where it was read): of two writers of one stream, the one that read it stale loses."""
        return {
            "Update": {
                "TableName": self.streams_table,
                "Key": {"stream": s(stream), "seq": n(0)},
                "UpdateExpression": "SET last_seq = :seq, last_message = :m, last_message_seq = :seq",
                "ConditionExpression": "attribute_not_exists(last_seq) OR last_seq = :last",
                "ExpressionAttributeValues": {":m": s(message), ":seq": n(seq), ":last": n(last)},
            }
        }

    def _stream_items(self, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], dict[str, Any]]:
        """Items of the streams table by (stream, seq), read consistently; absent keys are left out.

        BatchGetItem, up to 100 keys a call. Keys DynamoDB leaves unprocessed
        (throttling, its 16 MB answer cap) are asked again with the store's
        backoff, a bounded number of times; whatever is still left is read one
        GetItem at a time, so a busy table slows the answer down but never
        leaves an item out or reads one stale.
        """
        wanted = list(dict.fromkeys(keys))  # BatchGetItem refuses a key named twice
        found: dict[tuple[str, int], dict[str, Any]] = {}

        def read(request: list[dict[str, Any]]) -> list[dict[str, Any]]:
            response = self._db.batch_get_item(
                RequestItems={self.streams_table: {"Keys": request, "ConsistentRead": True}}
            )
            for item in response.get("Responses", {}).get(self.streams_table, []):
                found[(get_str(item, "stream"), get_int(item, "seq"))] = item
            return list((response.get("UnprocessedKeys") or {}).get(self.streams_table, {}).get("Keys", []))

        left: list[dict[str, Any]] = []
        for chunk in chunks(wanted, BATCH_GET_KEYS):
            left += self._until_processed([{"stream": s(stream), "seq": n(seq)} for stream, seq in chunk], read)
        for key in left:
            item = self._db.get_item(TableName=self.streams_table, Key=key, ConsistentRead=True).get("Item")
            if item:
                found[(get_str(item, "stream"), get_int(item, "seq"))] = item
        return found


def _stream_head(stream: str, item: dict[str, Any] | None) -> StreamHead:
    """A stream's head row as the domain reads it: a stream without one has seen no message yet."""
    if not item:
        return StreamHead(stream)
    return StreamHead(stream, get_int(item, "last_seq"), get_str(item, "last_message") or None)
