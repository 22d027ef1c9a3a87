"""Subscriptions: a row per (stream key, connection), counted against the connection's limit."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from quanttrade_ws.models import Subscription
from quanttrade_ws.store.codec import get_flag, get_float, get_int, get_str, get_string_map, n, s
from quanttrade_ws.store.connections import connection_counters, counter_outcome
from quanttrade_ws.store.ports import Outcome
from quanttrade_ws.store.tables import BATCH_WRITE_ITEMS, TRANSACTION_ACTIONS, DynamoTables, chunks, failed

# A batch subscribe spends one action on the connection's counter; the rest are its rows.
SUBSCRIPTIONS_PER_TRANSACTION = TRANSACTION_ACTIONS - 1


class DynamoSubscriptions(DynamoTables):
    """The subscriptions table: the fan-out Queries it by stream key, $disconnect by connection."""

    def add_subscription(self, subscription: Subscription, limit: int, cost: int = 1) -> Outcome:
        """Subscribe, counting `cost` against the connection's limit in the same transaction."""
        item = self._subscription_item(subscription)
        reasons = self._transact(
            [
                self._new_subscription(item),
                # sub_count + cost <= limit, as `sub_count < limit - cost + 1`
                self._sub_count(subscription.connection_id, cost, limit=limit - cost + 1),
            ]
        )
        if reasons is None:
            return Outcome.DONE
        if failed(reasons, 0):
            # Already subscribed: keep one row, take the newest interval, filters and token expiry. A row
            # that says all that already is left alone: a client re-sending what it holds buys no write.
            if not _same_subscription(reasons[0].get("Item"), item):
                self._db.put_item(TableName=self.subscriptions_table, Item=item)
            return Outcome.ALREADY
        return counter_outcome(reasons[1])

    def add_subscriptions(self, subscriptions: Sequence[tuple[Subscription, int]], limit: int) -> bool:
        """Subscribe one connection to several new streams at once: `(subscription, cost)` pairs, all or none.

        One transaction: a conditional Put per stream (as `add_subscription`
        writes it) and one update of the connection's counter by the total cost,
        kept within `limit`. True: every row is written and counted. False:
        nothing was written, because a stream was already subscribed, the limit
        would be passed or the connection is gone; the caller then subscribes
        one stream at a time, which tells those apart and stops where today's
        order of streams reaches the limit.
        """
        if not subscriptions:
            raise ValueError("add_subscriptions needs at least one subscription")
        if len(subscriptions) > SUBSCRIPTIONS_PER_TRANSACTION:
            raise ValueError(
                f"{len(subscriptions)} subscriptions do not fit one transaction "
                f"(at most {SUBSCRIPTIONS_PER_TRANSACTION} besides the connection's counter)"
            )
        connection_ids = {subscription.connection_id for subscription, _ in subscriptions}
        if len(connection_ids) != 1:
            raise ValueError(f"add_subscriptions takes one connection's subscriptions, not {sorted(connection_ids)}")
        keys = [subscription.stream_key for subscription, _ in subscriptions]
        if len(set(keys)) != len(keys):
            # A transaction may touch an item once: DynamoDB would refuse the whole request.
            raise ValueError(
                f"add_subscriptions got a stream twice: {sorted(k for k in set(keys) if keys.count(k) > 1)}"
            )
        total = sum(cost for _, cost in subscriptions)
        reasons = self._transact(
            [
                *(self._new_subscription(self._subscription_item(subscription)) for subscription, _ in subscriptions),
                # sub_count + total <= limit, as `sub_count < limit - total + 1`
                self._sub_count(connection_ids.pop(), total, limit=limit - total + 1),
            ]
        )
        return reasons is None

    def remove_subscription(self, stream_key: str, connection_id: str, cost: int = 1) -> bool:
        """Unsubscribe, giving the subscription's `cost` back to the connection's count in the same transaction.

        Returns whether the row was there to remove."""
        delete = {
            "TableName": self.subscriptions_table,
            "Key": {"stream_key": s(stream_key), "connection_id": s(connection_id)},
            "ConditionExpression": "attribute_exists(connection_id)",
        }
        # The row and its count go together or not at all: a row already gone leaves the counter alone.
        reasons = self._transact([{"Delete": delete}, self._sub_count(connection_id, -cost)])
        if reasons is None:
            return True
        if failed(reasons, 0):
            return False
        # Only the counter's condition is left: the connection row, and its counter with it, is gone. The
        # subscription still goes, alone: a conditional delete is the same write as a transaction of one, at
        # half its capacity.
        try:
            self._db.delete_item(**delete)
        except self._errors.ConditionalCheckFailedException:
            return False
        return True

    def remove_subscriptions_of(self, connection_id: str, stream_keys: Sequence[str]) -> None:
        """Delete a closing connection's subscription rows, its counter left to go with its row.

        BatchWriteItem, 25 rows a call: a client subscribed to a dozen streams is one
        round trip for them, not twelve (the same writes either way). Rows DynamoDB
        leaves unprocessed are sent again with the store's backoff, a bounded number
        of times; whatever is still left then is deleted one DeleteItem at a time.
        """
        keys = [{"stream_key": s(key), "connection_id": s(connection_id)} for key in dict.fromkeys(stream_keys)]

        def delete(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
            response = self._db.batch_write_item(RequestItems={self.subscriptions_table: requests})
            return list((response.get("UnprocessedItems") or {}).get(self.subscriptions_table, []))

        left: list[dict[str, Any]] = []
        for chunk in chunks(keys, BATCH_WRITE_ITEMS):
            left += self._until_processed([{"DeleteRequest": {"Key": key}} for key in chunk], delete)
        for request in left:
            self._db.delete_item(TableName=self.subscriptions_table, Key=request["DeleteRequest"]["Key"])

    def subscribers(self, stream_key: str) -> list[Subscription]:
        """Everyone subscribed to one stream key: a Query, never a Scan."""
        return [subscription for page in self.subscriber_pages(stream_key) for subscription in page]

    def subscriber_pages(self, stream_key: str) -> Iterator[list[Subscription]]:
        """`subscribers`, a page of the Query at a time (DynamoDB reads up to 1 MB a page: several thousand rows)."""
        for items in self._query_pages(
            TableName=self.subscriptions_table,
            KeyConditionExpression="stream_key = :k",
            ExpressionAttributeValues={":k": s(stream_key)},
            ProjectionExpression="connection_id, user_id, #i, filters, token_expires_at, latest_only",
            ExpressionAttributeNames={"#i": "interval"},
            # Strongly consistent: a subscription written a moment ago must be seen
            # once the fan-out's audience cache turns over (resume depends on it).
            ConsistentRead=True,
        ):
            yield [
                Subscription(
                    stream_key=stream_key,
                    connection_id=get_str(item, "connection_id"),
                    user_id=get_str(item, "user_id"),
                    interval=get_float(item, "interval"),
                    filters=get_string_map(item, "filters"),
                    token_expires_at=get_int(item, "token_expires_at"),
                    latest_only=get_flag(item, "latest_only"),
                )
                for item in items
            ]

    def subscriptions_of(self, connection_id: str) -> list[Subscription]:
        """A connection's subscriptions in stream key order: one Query of its index, which holds whole rows."""
        return [
            Subscription(
                stream_key=get_str(item, "stream_key"),
                connection_id=connection_id,
                user_id=get_str(item, "user_id"),
                interval=get_float(item, "interval"),
                filters=get_string_map(item, "filters"),
                latest_only=get_flag(item, "latest_only"),
            )
            for item in self._owned(self.subscriptions_table, connection_id)
        ]

    def count_subscriptions(self) -> int:
        return self._count(self.subscriptions_table)

    def _subscription_item(self, subscription: Subscription) -> dict[str, Any]:
        item: dict[str, Any] = {
            "stream_key": s(subscription.stream_key),
            "connection_id": s(subscription.connection_id),
            "user_id": s(subscription.user_id),
            "filters": {"M": {k: s(v) for k, v in subscription.filters.items()}},
            "token_expires_at": n(subscription.token_expires_at),
            "expires_at": n(self._connection_expiry(self.clock())),
        }
        if subscription.interval is not None:
            item["interval"] = n(subscription.interval)
        if subscription.latest_only:
            item["latest_only"] = {"BOOL": True}
        return item

    def _new_subscription(self, item: dict[str, Any]) -> dict[str, Any]:
        """A transaction step writing a subscription row only where none is, so none is counted twice."""
        return {
            "Put": {
                "TableName": self.subscriptions_table,
                "Item": item,
                "ConditionExpression": "attribute_not_exists(connection_id)",
                # The row that is there, when there is one: add_subscription refreshes it only if it differs.
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    def _sub_count(self, connection_id: str, delta: int, limit: int | None = None) -> dict[str, Any]:
        """A transaction step that moves the connection's subscription counter, below `limit` when adding."""
        return connection_counters(self.connections_table, connection_id, {"sub_count": (delta, limit)})


def _same_subscription(stored: dict[str, Any] | None, item: dict[str, Any]) -> bool:
    """Whether a stored subscription row already says what `item` would write (its TTL aside: a row outlives
    its connection either way)."""
    if not stored:
        return False
    return _without_ttl(stored) == _without_ttl(item)


def _without_ttl(item: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in item.items() if name != "expires_at"}
