"""Rooms: which names are valid, what each kind of room needs, and what it allows.

One place for the room rules every action applies (joinRoom, leaveRoom,
sendRoomMessage, refresh, resume): the name check, the kind of a room, and the
permission it needs.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from enum import StrEnum

from quanttrade_ws.auth import Identity
from quanttrade_ws.protocol import WILDCARD, ErrorCode, Permission, ProtocolError, StreamId

# `fullmatch`, never `match` with `$`: `$` also matches before a trailing newline.
ROOM_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
ROOM_NAME_RULE = "Room names are 1-64 of A-Z a-z 0-9 _ . : -"

# Data rooms also receive upstream events (upstream._Detail.data_room spells them),
# and each needs the read permission of its stream family.
DATA_ROOMS = {"alerts": Permission.READ_ALERTS}
DATA_ROOM_PREFIXES = {"market_data_": Permission.READ_MARKET_DATA, "predictions_": Permission.READ_PREDICTIONS}
# Reserved for operators: the exact names and everything under the prefixes need `admin`.
RESERVED_NAMES = frozenset({"admin", "system"})
RESERVED_PREFIXES = ("admin.", "system.")


class RoomKind(StrEnum):
    CHAT = "chat"
    DATA = "data"
    RESERVED = "reserved"


def room_kind(room: str) -> RoomKind:
    """The kind of a valid room name. Reserved names and prefixes compare case-insensitively,
    so `Admin.ops` and `ADMIN` are as reserved as `admin.ops`."""
    folded = room.casefold()
    if folded in RESERVED_NAMES or folded.startswith(RESERVED_PREFIXES):
        return RoomKind.RESERVED
    if folded in DATA_ROOMS or folded.startswith(tuple(DATA_ROOM_PREFIXES)):
        return RoomKind.DATA
    return RoomKind.CHAT


def check_room_name(room: str, request_id: str | None = None) -> RoomKind:
    """The room's kind, or INVALID_ROOM for a name that is not allowed.

    A data room has one spelling, the one its events are addressed to
    (`market_data_AAPL`, `alerts`): a look-alike such as `Market_Data_aapl` would
    be a chat room posing as a data room that never receives data, so it is refused.
    """
    if not ROOM_NAME_PATTERN.fullmatch(room):
        raise ProtocolError(ErrorCode.INVALID_ROOM, ROOM_NAME_RULE, request_id)
    kind = room_kind(room)
    if kind is RoomKind.DATA and canonical_data_room(room) != room:
        raise ProtocolError(
            ErrorCode.INVALID_ROOM,
            "Data rooms are spelled market_data_<SYMBOL>, predictions_<SYMBOL> (symbol in upper case) or alerts",
            request_id,
        )
    return kind


def canonical_data_room(room: str) -> str | None:
    """The one valid spelling of a data room name, or None when it names no symbol."""
    folded = room.casefold()
    if folded in DATA_ROOMS:
        return folded
    for prefix in DATA_ROOM_PREFIXES:
        if folded.startswith(prefix) and len(room) > len(prefix):
            return prefix + room[len(prefix) :].upper()
    return None


def room_permission(room: str) -> Permission | None:
    """The permission a room needs beyond rooms:join (data rooms and reserved rooms)."""
    kind = room_kind(room)
    if kind is RoomKind.RESERVED:
        return Permission.ADMIN
    if kind is RoomKind.DATA:
        folded = room.casefold()
        if folded in DATA_ROOMS:
            return DATA_ROOMS[folded]
        return next(permission for prefix, permission in DATA_ROOM_PREFIXES.items() if folded.startswith(prefix))
    return None


def room_refusal(identity: Identity, room: str) -> str | None:
    """Why this identity may not be in this room, or None when it may.

    The one room-permission check: joinRoom refuses with it, and refresh and
    resume drop the rooms it refuses, so a token never keeps or regains a room
    that joinRoom would refuse it.
    """
    if not identity.can(Permission.ROOMS_JOIN):
        return "No permission to join rooms"
    needed = room_permission(room)
    if needed and not identity.can(needed):
        return f"Room '{room}' needs the {needed} permission"
    return None


def data_room_of_stream(stream: str) -> str | None:
    """The data room that also receives a stream's events (as upstream._Detail.data_room names it)."""
    stream_id = StreamId.parse(stream)
    if stream_id is None:
        return None
    if stream_id.stream_type.value in DATA_ROOMS:
        return stream_id.stream_type.value
    prefix = f"{stream_id.stream_type.value}_"
    symbol = stream_id.symbol
    return prefix + symbol if prefix in DATA_ROOM_PREFIXES and symbol and not stream_id.is_wildcard else None


def holds_stream(stream: str, subscription_keys: set[str], rooms: set[str]) -> bool:
    """Whether a connection with these subscriptions and rooms receives `stream` (`market_data:AAPL`, `alerts`)."""
    stream_id = StreamId.parse(stream)
    if stream_id is None:
        return False
    every_symbol = StreamId(stream_id.stream_type, WILDCARD)
    if str(every_symbol) in subscription_keys or (stream_id.symbol and stream in subscription_keys):
        return True
    room = data_room_of_stream(stream)
    return room is not None and room in rooms


class MemberAliases:
    """Per-room pseudonymous member ids: what room traffic shows instead of who sent it.

    Notices and room messages never carry the JWT subject (often an e-mail
    address) nor a connection id (with it, anyone could post to that connection
    through a leaked management role, and it links a user across rooms). The id is
    an HMAC of the room and the user under a key derived from the service secret:
    stable for a user within a room, so members can follow a conversation;
    different in every room, so rooms cannot be joined up; all of a user's
    connections in a room share it, as they share the room's seat.
    """

    def __init__(self, secret: str | Callable[[], str]) -> None:
        self._secret = secret
        self._key: tuple[str, bytes] | None = None  # (secret, key derived from it)

    def of(self, room: str, user_id: str) -> str:
        secret = self._secret() if callable(self._secret) else self._secret
        # The secret is read on every call (a key cache of bounded age serves it) and the key derived
        # again when it changed: after a rotation every warm function names members alike within that age.
        if self._key is None or self._key[0] != secret:
            self._key = (secret, hmac.new(secret.encode(), b"quanttrade-room-member-v1", hashlib.sha256).digest())
        digest = hmac.new(self._key[1], f"{room}\x00{user_id}".encode(), hashlib.sha256).hexdigest()
        return f"m-{digest[:24]}"
