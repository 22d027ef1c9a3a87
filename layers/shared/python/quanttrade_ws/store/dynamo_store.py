"""The store: every repository over one DynamoDB client, one backoff and one clock."""

from __future__ import annotations

import contextlib

from quanttrade_ws.store.codec import n, s
from quanttrade_ws.store.connections import DynamoConnections
from quanttrade_ws.store.rate_windows import DynamoRateWindows
from quanttrade_ws.store.rooms import DynamoRooms
from quanttrade_ws.store.sessions import DynamoSessions
from quanttrade_ws.store.streams import DynamoStreams
from quanttrade_ws.store.subscriptions import DynamoSubscriptions


class DynamoStore(
    DynamoConnections, DynamoRateWindows, DynamoSessions, DynamoSubscriptions, DynamoRooms, DynamoStreams
):
    """Connections, rate windows, sessions, subscriptions, rooms and stream history on DynamoDB.

    Each base is one aggregate's repository (its own module); they share the
    client, backoff and clock of `DynamoTables`, which this inherits once.
    """

    def set_token_expiry(self, connection_id: str, token_expires_at: int) -> None:
        """Copy a refreshed token's expiry onto every subscription and membership row the connection owns."""
        owned = [
            (self.subscriptions_table, {"stream_key": item["stream_key"], "connection_id": s(connection_id)})
            for item in self._owned(self.subscriptions_table, connection_id)
        ] + [
            (self.rooms_table, {"room": item["room"], "member_id": s(connection_id)})
            for item in self._owned(self.rooms_table, connection_id)
        ]
        for table, key in owned:
            # A row removed meanwhile stays removed: the condition keeps the update from resurrecting it.
            with contextlib.suppress(self._errors.ConditionalCheckFailedException):
                self._db.update_item(
                    TableName=table,
                    Key=key,
                    UpdateExpression="SET token_expires_at = :e",
                    ConditionExpression="attribute_exists(connection_id)",
                    ExpressionAttributeValues={":e": n(token_expires_at)},
                )
