"""Rooms: memberships, each user's seat in a room, and the room's count of seats.

A join or a leave is one transaction over the membership, the user's seat, the
room's `#meta` count and the connection's counters: limits hold under
concurrency and counters never drift.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from quanttrade_ws.models import Subscription
from quanttrade_ws.store.codec import get_int, get_str, n, s
from quanttrade_ws.store.connections import connection_counters, counter_outcome
from quanttrade_ws.store.ports import JoinLimits, Outcome
from quanttrade_ws.store.tables import DynamoTables, StoreError, failed

ROOM_META = "#meta"  # sorts before every connection id, which never starts with '#'
SEAT_PREFIX = "!seat#"  # a user's seat in a room: sorts before ROOM_META, so member queries never see it
# How many times a join or leave goes through its transaction shapes while another connection of the
# same user keeps changing the seat under it (each round follows the seat's state it last saw).
SEAT_ROUNDS = 4


class DynamoRooms(DynamoTables):
    """The rooms table: a row per member, a seat per user, a `#meta` row per room."""

    def join_room(
        self, room: str, connection_id: str, user_id: str, limits: JoinLimits, token_expires_at: int = 0
    ) -> Outcome:
        """Join in one transaction with its conditions: this connection not yet a member,
        the connection below its room limit, and either a new seat for the user with the
        room below capacity, or the user's existing seat (a user holds one seat in a room
        however many of their connections are in it). Concurrent joins for the last seat
        cannot both win. With a `subscription_limit` (a data room), the membership also
        counts as one subscription, below that limit, in the same step.

        DONE: the user took a new seat; SHARED: the connection joined the user's seat."""
        now = self.clock()
        expires = n(self._connection_expiry(now))  # every item the join writes lives as long as the connection may
        counters: dict[str, tuple[int, int | None]] = {"room_count": (1, limits.room_limit)}
        if limits.subscription_limit is not None:
            counters["sub_count"] = (1, limits.subscription_limit)
        membership = {
            "Put": {
                "TableName": self.rooms_table,
                "Item": {
                    "room": s(room),
                    "member_id": s(connection_id),
                    "connection_id": s(connection_id),
                    "user_id": s(user_id),
                    "token_expires_at": n(token_expires_at),
                    "joined_at": n(int(now)),
                    "expires_at": expires,
                },
                "ConditionExpression": "attribute_not_exists(member_id)",
            }
        }
        seat_key = {"room": s(room), "member_id": s(SEAT_PREFIX + user_id)}
        # The room's count lives as long as the newest membership could: each join moves its expiry on, and
        # once every member is gone it expires with them, so rooms named once do not pile up forever.
        room_lives_on = {
            "Update": {
                "TableName": self.rooms_table,
                "Key": {"room": s(room), "member_id": s(ROOM_META)},
                "UpdateExpression": "SET expires_at = :exp",
                "ExpressionAttributeValues": {":exp": expires},
            }
        }
        # Every shape: the membership at index 0, the seat at index 1, the connection's counters last.
        new_seat = [
            membership,
            {
                "Put": {
                    "TableName": self.rooms_table,
                    "Item": {
                        **seat_key,
                        "user_id": s(user_id),
                        "conns": {"SS": [connection_id]},
                        "expires_at": expires,
                    },
                    "ConditionExpression": "attribute_not_exists(member_id)",
                }
            },
            {
                "Update": {
                    "TableName": self.rooms_table,
                    "Key": {"room": s(room), "member_id": s(ROOM_META)},
                    "UpdateExpression": "ADD member_count :one SET expires_at = :exp",
                    "ConditionExpression": "attribute_not_exists(member_count) OR member_count < :cap",
                    "ExpressionAttributeValues": {
                        ":one": n(1),
                        ":cap": n(limits.capacity),
                        ":exp": expires,
                    },
                }
            },
            connection_counters(self.connections_table, connection_id, counters),
        ]
        shared_seat = [
            membership,
            {
                "Update": {
                    "TableName": self.rooms_table,
                    "Key": seat_key,
                    "UpdateExpression": "ADD conns :c SET expires_at = :exp",
                    "ConditionExpression": "attribute_exists(member_id)",
                    "ExpressionAttributeValues": {
                        ":c": {"SS": [connection_id]},
                        ":exp": expires,
                    },
                }
            },
            room_lives_on,
            connection_counters(self.connections_table, connection_id, counters),
        ]
        # The seat may appear or vanish between the two shapes (another connection of the
        # user joining or leaving): a failed condition on the seat sends us to the other shape.
        # Conflicts and throttling never get here: `_transact` retries them.
        for _ in range(SEAT_ROUNDS):
            for items, outcome in ((new_seat, Outcome.DONE), (shared_seat, Outcome.SHARED)):
                reasons = self._transact(items)
                if reasons is None:
                    return outcome
                if failed(reasons, 0):
                    return Outcome.ALREADY
                if failed(reasons, 1):
                    continue  # the seat is not in the state this shape needs: try the other
                if outcome is Outcome.DONE and failed(reasons, 2):
                    return Outcome.FULL
                return counter_outcome(reasons[len(items) - 1])
        raise StoreError(f"could not join {room}: the user's seat kept changing")

    def leave_room(
        self, room: str, connection_id: str, adjust_connection: bool = True, subscription: bool = False
    ) -> Outcome | None:
        """Leave a room; `subscription` gives back the subscription a data room's membership counted as.

        The membership, the seat, the room's count and the connection's counters change in
        one transaction conditioned on the membership, or not at all: counters never drift.

        DONE: the user's seat was freed (their last connection in the room left);
        SHARED: another of the user's connections still holds the seat; None: not a member."""
        found = self._db.get_item(
            TableName=self.rooms_table,
            Key={"room": s(room), "member_id": s(connection_id)},
            ProjectionExpression="user_id",
            ConsistentRead=True,
        ).get("Item")
        if not found:
            return None
        seat_key = {"room": s(room), "member_id": s(SEAT_PREFIX + get_str(found, "user_id"))}
        tail: list[dict[str, Any]] = []
        if adjust_connection:
            counters: dict[str, tuple[int, int | None]] = {"room_count": (-1, None)}
            if subscription:
                counters["sub_count"] = (-1, None)
            tail.append(connection_counters(self.connections_table, connection_id, counters))
        for _ in range(SEAT_ROUNDS):
            for items, outcome in self._leave_shapes(room, connection_id, seat_key, tail):
                reasons = self._transact(items)
                if reasons is None:
                    return outcome
                if failed(reasons, 0):
                    return None  # left meanwhile
                if failed(reasons, 1):
                    continue  # the seat is not in the state this shape needs: try the next
                # Only the connection's counters are left (the room's count has no condition): the
                # connection row is gone, so the membership goes without them, in the next round.
                tail = []
                break
        raise StoreError(f"could not leave {room}: the user's seat kept changing")

    def _leave_shapes(
        self, room: str, connection_id: str, seat_key: dict[str, Any], tail: list[dict[str, Any]]
    ) -> list[tuple[list[dict[str, Any]], Outcome]]:
        """The ways a membership can go, one per state of the user's seat (their conditions exclude each
        other): the membership at index 0, the seat at index 1, then the room's count and `tail`."""
        membership = {
            "Delete": {
                "TableName": self.rooms_table,
                "Key": {"room": s(room), "member_id": s(connection_id)},
                "ConditionExpression": "attribute_exists(member_id)",
            }
        }
        free_place = {
            "Update": {
                "TableName": self.rooms_table,
                "Key": {"room": s(room), "member_id": s(ROOM_META)},
                "UpdateExpression": "ADD member_count :minus",
                "ExpressionAttributeValues": {":minus": n(-1)},
            }
        }
        cid = {":cid": s(connection_id)}
        return [
            # the user's last connection in the room: the seat goes, and the room has one place more
            (
                [
                    membership,
                    {
                        "Delete": {
                            "TableName": self.rooms_table,
                            "Key": seat_key,
                            "ConditionExpression": "contains(conns, :cid) AND size(conns) = :one",
                            "ExpressionAttributeValues": {**cid, ":one": n(1)},
                        }
                    },
                    free_place,
                    *tail,
                ],
                Outcome.DONE,
            ),
            # another connection of the user stays: the seat stays
            (
                [
                    membership,
                    {
                        "Update": {
                            "TableName": self.rooms_table,
                            "Key": seat_key,
                            "UpdateExpression": "DELETE conns :c",
                            "ConditionExpression": "contains(conns, :cid) AND size(conns) > :one",
                            "ExpressionAttributeValues": {**cid, ":one": n(1), ":c": {"SS": [connection_id]}},
                        }
                    },
                    *tail,
                ],
                Outcome.SHARED,
            ),
            # a membership from before seats existed: it counted one place by itself
            (
                [
                    membership,
                    {
                        "ConditionCheck": {
                            "TableName": self.rooms_table,
                            "Key": seat_key,
                            "ConditionExpression": "attribute_not_exists(member_id) OR NOT contains(conns, :cid)",
                            "ExpressionAttributeValues": cid,
                        }
                    },
                    free_place,
                    *tail,
                ],
                Outcome.DONE,
            ),
        ]

    def room_size(self, room: str) -> int:
        """How many members the room counts (its `#meta` counter): one GetItem, whatever the size."""
        found = self._db.get_item(
            TableName=self.rooms_table,
            Key={"room": s(room), "member_id": s(ROOM_META)},
            ProjectionExpression="member_count",
            ConsistentRead=True,
        ).get("Item")
        return get_int(found or {}, "member_count")

    def room_members(self, room: str) -> list[str]:
        return [get_str(item, "member_id") for item in self._members(room, "member_id")]

    def room_audience(self, room: str) -> list[Subscription]:
        """A data room's members as the fan-out needs them: connection and token expiry."""
        return [
            Subscription(
                stream_key=f"room:{room}",
                connection_id=get_str(item, "member_id"),
                user_id=get_str(item, "user_id"),
                token_expires_at=get_int(item, "token_expires_at"),
            )
            for item in self._members(room, "member_id, user_id, token_expires_at")
        ]

    def rooms_of(self, connection_id: str) -> list[str]:
        return sorted(get_str(item, "room") for item in self._owned(self.rooms_table, connection_id))

    def is_member(self, room: str, connection_id: str) -> bool:
        found = self._db.get_item(
            TableName=self.rooms_table,
            Key={"room": s(room), "member_id": s(connection_id)},
            ProjectionExpression="member_id",
            ConsistentRead=True,
        )
        return "Item" in found

    def count_rooms(self) -> int:
        return self._count(
            self.rooms_table, "member_id = :meta AND member_count > :zero", {":meta": s(ROOM_META), ":zero": n(0)}
        )

    def _members(self, room: str, projection: str) -> Iterator[dict[str, Any]]:
        """The room's member rows (past its seats and `#meta`), with the attributes in `projection`."""
        return self._query(
            TableName=self.rooms_table,
            KeyConditionExpression="room = :r AND member_id > :meta",
            ExpressionAttributeValues={":r": s(room), ":meta": s(ROOM_META)},
            ProjectionExpression=projection,
            ConsistentRead=True,
        )
