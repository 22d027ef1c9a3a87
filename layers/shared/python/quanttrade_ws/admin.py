"""The admin API's queries: connection info, room members, a client's subscriptions, statistics."""

from __future__ import annotations

from typing import Any

from quanttrade_ws.rooms import ROOM_NAME_PATTERN
from quanttrade_ws.store.ports import Store


class NotFound(Exception):
    """No such connection or room: the admin API answers 404 with this message."""


class AdminQueries:
    def __init__(self, store: Store, counters: dict[str, float] | None = None) -> None:
        self.store = store
        self.counters = counters  # the local stack's delivery counters; on AWS, CloudWatch has them

    def connection(self, connection_id: str) -> dict[str, Any]:
        connection = self.store.get_connection(connection_id)
        if connection is None:
            raise NotFound(f"no connection {connection_id}")
        identity = connection.identity
        return {
            "connection_id": connection.connection_id,
            "user_id": identity.user_id,
            "client_type": identity.client_type,
            "subscription_level": identity.subscription_level,
            "permissions": sorted(identity.permissions),
            "connected_at": connection.connected_at,
            "last_activity": connection.last_activity,
            "rooms": self.store.rooms_of(connection_id),
            "subscription_count": connection.subscription_count,
        }

    def subscriptions(self, connection_id: str) -> dict[str, Any]:
        return {
            "connection_id": connection_id,
            "subscriptions": [s.to_spec() for s in self.store.subscriptions_of(connection_id)],
        }

    def room_members(self, room: str) -> dict[str, Any]:
        if not ROOM_NAME_PATTERN.fullmatch(room):
            raise NotFound(f"no room {room[:64]}")
        return {"room": room, "members": self.store.room_members(room)}

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "connections": self.store.count_connections(),
            "rooms": self.store.count_rooms(),
            "subscriptions": self.store.count_subscriptions(),
        }
        if self.counters is not None:
            stats["deliveries"] = int(self.counters.get("Delivered", 0))
            stats["gone_removed"] = int(self.counters.get("Gone", 0))
            stats["delivery_failures"] = int(self.counters.get("DeliveryFailed", 0))
            stats["invalid_events"] = int(self.counters.get("InvalidEvent", 0))
        return stats
