"""Sliding-window counters: new connections per user, room joins and room messages per user and room,
resumes per connection.

A frame's own per-second rate window lives on its connection row
(`DynamoConnections.touch_connection`); these are the longer windows whose scope
is not one connection.
"""

from __future__ import annotations

from typing import Any

from quanttrade_ws.store.codec import get_int, n, named_values, s
from quanttrade_ws.store.tables import DynamoTables

# Sliding-window counters; their scopes start with a word of their own (connect#, join#, room#, resume#).
RATE_PREFIX = "rate#"


class DynamoRateWindows(DynamoTables):
    """Rate windows as `rate#<scope>` items of the connections table."""

    def count_in_window(self, key: str, window_seconds: int) -> float:
        """Count one event under `key` now and return the events of the last `window_seconds`, this one included.

        A sliding window, not a fixed one (a fixed minute lets twice the limit through
        around its boundary): the current bucket's count plus the previous bucket's,
        weighted by how much of it still lies inside the window. One item per key holds
        both buckets; each step is a conditional update, so concurrent callers never
        lose a count, and the common cases (same bucket, or a key never counted: every
        new user's first connect) are one write.
        """
        now = self.clock()
        bucket = int(now // window_seconds)
        inside = 1 - (now - bucket * window_seconds) / window_seconds  # share of the previous bucket still counted
        base = "SET kind = :kind, expires_at = :exp"
        steps = (
            # Same bucket, or no buckets yet (the item is new, or holds none): count in this one.
            (f"{base}, cur_bucket = :b ADD cur_count :one", "cur_bucket = :b OR attribute_not_exists(cur_bucket)"),
            # A caller whose clock runs ahead already moved the bucket on: count there.
            (f"{base} ADD cur_count :one", "cur_bucket > :b"),
            (f"{base}, prev_count = cur_count, cur_count = :one, cur_bucket = :b", "cur_bucket = :prev"),
            (
                f"{base}, prev_count = :zero, cur_count = :one, cur_bucket = :b",
                "attribute_not_exists(cur_bucket) OR cur_bucket < :prev",
            ),
        )
        values = {
            ":kind": s("rate"),
            ":exp": n((bucket + 2) * window_seconds),
            ":one": n(1),
            ":zero": n(0),
            ":b": n(bucket),
            ":prev": n(bucket - 1),
        }
        step = 0
        for _ in range(3 * len(steps)):
            update, condition = steps[step]
            try:
                result = self._db.update_item(
                    TableName=self.connections_table,
                    Key={"pk": s(RATE_PREFIX + key)},
                    UpdateExpression=update,
                    ConditionExpression=condition,
                    ExpressionAttributeValues=named_values(values, update, condition),
                    ReturnValues="ALL_NEW",
                    # A refusal shows where the buckets stand, so the next try is the step that fits:
                    # a count that moves the buckets on costs two writes, not four.
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            except self._errors.ConditionalCheckFailedException as refused:
                found = refused.response.get("Item")
                step = _window_step(found if isinstance(found, dict) else None, bucket)
                continue
            counts = result["Attributes"]
            return get_int(counts, "cur_count") + get_int(counts, "prev_count") * inside
        raise RuntimeError(f"could not count in the rate window {key}: too much contention")


def _window_step(item: dict[str, Any] | None, bucket: int) -> int:
    """Which of count_in_window's steps fits a rate item as it stands (its buckets as a refusal returned them)."""
    if not item or "cur_bucket" not in item:
        return 3
    current = get_int(item, "cur_bucket")
    if current >= bucket:
        return 0 if current == bucket else 1
    return 2 if current == bucket - 1 else 3
