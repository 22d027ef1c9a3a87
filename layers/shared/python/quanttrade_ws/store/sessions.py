"""Sessions: the snapshot a session leaves for resume, and the single use of each session token."""

from __future__ import annotations

import json
from typing import Any

from quanttrade_ws.models import SessionSnapshot, Subscription
from quanttrade_ws.store.codec import get_int, get_str, n, s
from quanttrade_ws.store.tables import DynamoTables

SESSION_PREFIX = "session#"
SPENT_PREFIX = "spent#"  # a session token (by its jti) that has resumed once


class DynamoSessions(DynamoTables):
    """`session#<id>` snapshots and `spent#<jti>` markers in the connections table."""

    def save_session(self, snapshot: SessionSnapshot, ttl_seconds: int, held_by: str | None = None) -> bool:
        """Store a session's snapshot. With `held_by`, only while the session is still held by that connection
        (or has no snapshot yet): a connection the session moved on from must not overwrite the live one's.
        Returns whether it was stored."""
        item: dict[str, Any] = {
            "pk": s(SESSION_PREFIX + snapshot.session_id),
            "kind": s("session"),
            "user_id": s(snapshot.user_id),
            "subscriptions": s(json.dumps([_subscription_json(sub) for sub in snapshot.subscriptions])),
            "rooms": s(json.dumps(list(snapshot.rooms))),
            "expires_at": n(int(self.clock()) + ttl_seconds),
        }
        if snapshot.connection_id:
            item["connection_id"] = s(snapshot.connection_id)
        if held_by is None:
            self._db.put_item(TableName=self.connections_table, Item=item)
            return True
        try:
            self._db.put_item(
                TableName=self.connections_table,
                Item=item,
                ConditionExpression="attribute_not_exists(pk) OR connection_id = :held_by",
                ExpressionAttributeValues={":held_by": s(held_by)},
            )
        except self._errors.ConditionalCheckFailedException:
            return False
        return True

    def spend_session_token(self, token_id: str, expires_at: int, connection_id: str) -> bool:
        """Mark a session token used by this connection: False when another connection used it.

        One conditional write, so of two resumes racing with one token on two
        connections exactly one wins. Until `complete_session_token`, the
        connection that spent it may present it again: a resume that failed after
        spending (INTERNAL) can be retried, and a write retried after its first
        attempt landed finds its own marker; a completed resume cannot be replayed.
        The marker lives as long as the token could still be presented.
        """
        try:
            self._db.put_item(
                TableName=self.connections_table,
                Item={
                    "pk": s(SPENT_PREFIX + token_id),
                    "kind": s("spent_session_token"),
                    "spent_by": s(connection_id),
                    "expires_at": n(expires_at),
                },
                ConditionExpression=(
                    "attribute_not_exists(pk) OR (spent_by = :connection AND attribute_not_exists(completed))"
                ),
                ExpressionAttributeValues={":connection": s(connection_id)},
            )
        except self._errors.ConditionalCheckFailedException:
            return False
        return True

    def complete_session_token(self, token_id: str) -> None:
        """The resume that spent the token answered: the token cannot be presented again, even by its connection."""
        self._db.update_item(
            TableName=self.connections_table,
            Key={"pk": s(SPENT_PREFIX + token_id)},
            UpdateExpression="SET completed = :yes",
            ExpressionAttributeValues={":yes": n(1)},
        )

    def load_session(self, session_id: str) -> SessionSnapshot | None:
        found = self._db.get_item(
            TableName=self.connections_table, Key={"pk": s(SESSION_PREFIX + session_id)}, ConsistentRead=True
        ).get("Item")
        if not found or get_int(found, "expires_at") < self.clock():
            return None
        subscriptions = tuple(
            Subscription(
                stream_key=entry["stream_key"],
                connection_id="",
                interval=entry.get("interval"),
                filters=entry.get("filters", {}),
                latest_only=bool(entry.get("latest_only", False)),
            )
            for entry in json.loads(get_str(found, "subscriptions", "[]"))
        )
        return SessionSnapshot(
            session_id=session_id,
            user_id=get_str(found, "user_id"),
            subscriptions=subscriptions,
            rooms=tuple(json.loads(get_str(found, "rooms", "[]"))),
            connection_id=get_str(found, "connection_id") or None,
        )


def _subscription_json(subscription: Subscription) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "stream_key": subscription.stream_key,
        "interval": subscription.interval,
        "filters": subscription.filters,
    }
    if subscription.latest_only:
        entry["latest_only"] = True
    return entry
