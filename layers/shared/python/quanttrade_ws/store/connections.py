"""Connections: a row per open connection, its counters and rate window, and each user's open connections.

The connection row carries the counters the limits are kept by (`room_count`,
`sub_count`): subscriptions and rooms move them in their own transactions
through `connection_counters`, the one place that knows their conditions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from quanttrade_ws.auth import Identity
from quanttrade_ws.models import Connection
from quanttrade_ws.store.codec import get_int, get_str, n, named_values, s
from quanttrade_ws.store.ports import Outcome
from quanttrade_ws.store.tables import DynamoTables

USER_PREFIX = "user#"  # a user's open connections (the only kind under this prefix)


class DynamoConnections(DynamoTables):
    """Connection rows and the user's open connections in the connections table."""

    def open_connection(self, connection: Connection, cap: int) -> bool:
        """Write the connection's row and add it to its user's open connections, if they hold fewer than `cap`.

        One transaction: the row and the claim are written together or not at
        all, so a refused connect leaves nothing to take back, and a connect costs
        one write request, not two. The user's item keeps the ids themselves (a
        string set), not a counter: adding and removing an id are idempotent, so a
        repeated $connect or $disconnect cannot make it drift, and an id whose
        connection row is gone (its $disconnect never came and the row expired)
        can be recognised and dropped when the cap is hit.
        """
        identity = connection.identity
        expires_at = n(self._connection_expiry(self.clock()))
        row = {
            "pk": s(connection.connection_id),
            "kind": s("connection"),
            "user_id": s(identity.user_id),
            "client_type": s(identity.client_type),
            "permissions": s(",".join(sorted(identity.permissions))),
            "subscription_level": s(identity.subscription_level),
            "token_expires_at": n(identity.token_expires_at),
            "token_issued_at": n(identity.token_issued_at),
            "connected_at": n(connection.connected_at),
            "last_activity": n(connection.last_activity),
            "room_count": n(0),
            "sub_count": n(0),
            "expires_at": expires_at,
        }
        claim = {
            "Update": {
                "TableName": self.connections_table,
                "Key": {"pk": s(USER_PREFIX + identity.user_id)},
                "UpdateExpression": "SET kind = :kind, expires_at = :exp ADD conns :c",
                "ConditionExpression": "attribute_not_exists(conns) OR size(conns) < :cap OR contains(conns, :cid)",
                "ExpressionAttributeValues": {
                    ":kind": s("user_connections"),
                    ":exp": expires_at,
                    ":c": {"SS": [connection.connection_id]},
                    ":cap": n(cap),
                    ":cid": s(connection.connection_id),
                },
            }
        }
        items = [{"Put": {"TableName": self.connections_table, "Item": row}}, claim]
        for attempt in range(2):
            if self._transact(items) is None:
                return True
            if attempt or not self._forget_closed_connections(identity.user_id, keep=connection.connection_id):
                return False
        return False

    def get_connection(self, connection_id: str) -> Connection | None:
        item = self._db.get_item(TableName=self.connections_table, Key={"pk": s(connection_id)}, ConsistentRead=True)
        found = item.get("Item")
        return _connection_from_item(found) if found and get_str(found, "kind") == "connection" else None

    def touch_connection(
        self, connection_id: str, received_at: float | None = None, cost: int = 1
    ) -> Connection | None:
        """Record activity and add the frame's cost to the one-second rate window of `received_at`
        (when the frame arrived; now if not given), atomically.

        Tries the cheap case first (a new window, one write), and only when another
        frame already opened this second does it add to the count; a frame from a
        second already past counts in the open window. Returns the updated row, or
        None when the connection is gone.
        """
        now = self.clock() if received_at is None else received_at
        window = int(now)
        common = {":now": n(int(now)), ":w": n(window), ":exp": n(self._connection_expiry(now)), ":one": n(cost)}
        steps = (
            # A new window: this frame opens it.
            (
                "SET last_activity = :now, rl_window = :w, rl_count = :one, expires_at = :exp",
                "attribute_exists(pk) AND (attribute_not_exists(rl_window) OR rl_window < :w)",
            ),
            # Another frame already opened this second.
            (
                "SET last_activity = :now, expires_at = :exp ADD rl_count :one",
                "attribute_exists(pk) AND rl_window = :w",
            ),
            # A late frame (its invocation queued past a later frame's second): it counts in the window
            # that is open, or a flood whose invocations queue would go uncounted. Its activity is older
            # than what the row holds, so that stays.
            ("ADD rl_count :one", "attribute_exists(pk) AND rl_window > :w"),
        )
        key = {"pk": s(connection_id)}
        for _ in range(3):
            for update, condition in steps:
                try:
                    result = self._db.update_item(
                        TableName=self.connections_table,
                        Key=key,
                        UpdateExpression=update,
                        ConditionExpression=condition,
                        ExpressionAttributeValues=named_values(common, update, condition),
                        ReturnValues="ALL_NEW",
                    )
                    return _connection_from_item(result["Attributes"])
                except self._errors.ConditionalCheckFailedException:
                    pass
            if self.get_connection(connection_id) is None:
                return None
            # The window moved on between the writes: start over.
        return self.get_connection(connection_id)

    def add_rate_warning(self, connection_id: str) -> int:
        """Count one more RATE_LIMIT warning; returns the total so far."""
        try:
            result = self._db.update_item(
                TableName=self.connections_table,
                Key={"pk": s(connection_id)},
                UpdateExpression="ADD rl_warnings :one",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues={":one": n(1)},
                ReturnValues="UPDATED_NEW",
            )
        except self._errors.ConditionalCheckFailedException:
            return 0
        return get_int(result["Attributes"], "rl_warnings")

    def update_identity(self, connection_id: str, identity: Identity) -> bool:
        """Replace the connection's identity, only by one of the same user from a token no older (`iat`)
        than the current one: of two refreshes racing, the older token cannot land last."""
        try:
            self._db.update_item(
                TableName=self.connections_table,
                Key={"pk": s(connection_id)},
                # `permissions` is a DynamoDB reserved word: it must go through a name placeholder.
                UpdateExpression="SET #p = :p, subscription_level = :l, token_expires_at = :e, token_issued_at = :i",
                ConditionExpression="attribute_exists(pk) AND user_id = :u"
                " AND (attribute_not_exists(token_issued_at) OR token_issued_at <= :i)",
                ExpressionAttributeNames={"#p": "permissions"},
                ExpressionAttributeValues={
                    ":p": s(",".join(sorted(identity.permissions))),
                    ":l": s(identity.subscription_level),
                    ":e": n(identity.token_expires_at),
                    ":i": n(identity.token_issued_at),
                    ":u": s(identity.user_id),
                },
            )
        except self._errors.ConditionalCheckFailedException:
            return False
        return True

    def set_session(self, connection_id: str, session_id: str) -> None:
        self._db.update_item(
            TableName=self.connections_table,
            Key={"pk": s(connection_id)},
            UpdateExpression="SET session_id = :s",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeValues={":s": s(session_id)},
        )

    def delete_connection(self, connection_id: str) -> Connection | None:
        result = self._db.delete_item(
            TableName=self.connections_table, Key={"pk": s(connection_id)}, ReturnValues="ALL_OLD"
        )
        old = result.get("Attributes")
        return _connection_from_item(old) if old and get_str(old, "kind") == "connection" else None

    def release_user_connection(self, user_id: str, connection_id: str) -> None:
        self._db.update_item(
            TableName=self.connections_table,
            Key={"pk": s(USER_PREFIX + user_id)},
            UpdateExpression="DELETE conns :c",
            ExpressionAttributeValues={":c": {"SS": [connection_id]}},
        )

    def user_connections(self, user_id: str) -> set[str]:
        found = self._db.get_item(
            TableName=self.connections_table, Key={"pk": s(USER_PREFIX + user_id)}, ConsistentRead=True
        ).get("Item")
        return set((found or {}).get("conns", {}).get("SS", []))

    def _forget_closed_connections(self, user_id: str, keep: str) -> bool:
        """Drop the user's ids that no longer have a connection row; returns whether any was dropped."""
        closed = [cid for cid in self.user_connections(user_id) - {keep} if self.get_connection(cid) is None]
        if closed:
            self._db.update_item(
                TableName=self.connections_table,
                Key={"pk": s(USER_PREFIX + user_id)},
                UpdateExpression="DELETE conns :c",
                ExpressionAttributeValues={":c": {"SS": closed}},
            )
        return bool(closed)

    def stale_connections(self, idle_before: float, expired_before: float | None = None) -> Iterator[Connection]:
        """Connections whose last activity is older than `idle_before`, or (with `expired_before`)
        whose access token expired before then: the sweeper's look-up.

        A Scan, deliberately: it runs on a schedule off every hot path, reads
        only the few attributes it needs, and pages through the table.
        """
        condition = "last_activity < :before"
        values = {":kind": s("connection"), ":before": n(int(idle_before))}
        if expired_before is not None:
            condition = f"({condition} OR (token_expires_at > :zero AND token_expires_at < :expired))"
            values.update({":zero": n(0), ":expired": n(int(expired_before))})
        pages = self._scan_pages(
            TableName=self.connections_table,
            FilterExpression=f"kind = :kind AND {condition}",
            ExpressionAttributeValues=values,
        )
        for page in pages:
            for item in page.get("Items", []):
                yield _connection_from_item(item)

    def count_connections(self) -> int:
        return self._count(self.connections_table, "kind = :kind", {":kind": s("connection")})


def connection_counters(table: str, connection_id: str, deltas: dict[str, tuple[int, int | None]]) -> dict[str, Any]:
    """One transaction step that moves several of the connection's counters at once (a transaction
    may touch an item only once): `{counter: (delta, limit)}`, each kept below its limit when given.

    Its failed condition returns the row it saw, so the caller tells a reached
    limit (a row) from a connection that is gone (none) without another read:
    `counter_outcome` reads it."""
    condition = "attribute_exists(pk)"
    values: dict[str, Any] = {}
    adds = []
    for i, (counter, (delta, limit)) in enumerate(sorted(deltas.items())):
        adds.append(f"{counter} :d{i}")
        values[f":d{i}"] = n(delta)
        if limit is not None:
            condition += f" AND {counter} < :l{i}"
            values[f":l{i}"] = n(limit)
    return {
        "Update": {
            "TableName": table,
            "Key": {"pk": s(connection_id)},
            "UpdateExpression": "ADD " + ", ".join(adds),
            "ConditionExpression": condition,
            "ExpressionAttributeValues": values,
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
    }


def counter_outcome(reason: dict[str, Any]) -> Outcome:
    """A failed connection counter: with the row it saw, the limit is reached; without one, the connection is gone."""
    return Outcome.LIMIT if reason.get("Item") else Outcome.GONE


def _connection_from_item(item: dict[str, Any]) -> Connection:
    permissions = get_str(item, "permissions")
    return Connection(
        connection_id=get_str(item, "pk"),
        identity=Identity(
            user_id=get_str(item, "user_id", "unknown") or "unknown",
            client_type=get_str(item, "client_type", "web"),
            permissions=frozenset(p for p in permissions.split(",") if p),
            subscription_level=get_str(item, "subscription_level", "free"),
            token_expires_at=get_int(item, "token_expires_at"),
            token_issued_at=get_int(item, "token_issued_at"),
        ),
        connected_at=get_int(item, "connected_at"),
        last_activity=get_int(item, "last_activity"),
        session_id=get_str(item, "session_id") or None,
        room_count=get_int(item, "room_count"),
        subscription_count=get_int(item, "sub_count"),
        rate_window=get_int(item, "rl_window"),
        rate_count=get_int(item, "rl_count"),
    )
