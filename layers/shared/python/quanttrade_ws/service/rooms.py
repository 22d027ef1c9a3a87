"""Room actions: join, leave, send, and the presence notices of chat rooms."""

from __future__ import annotations

from quanttrade_protocol.messages import JoinRoomPayload, LeaveRoomPayload, RoomMemberPayload, RoomMessagePayload
from quanttrade_ws.auth import Identity
from quanttrade_ws.models import Connection
from quanttrade_ws.protocol import (
    ErrorCode,
    JoinRoom,
    LeaveRoom,
    MessageType,
    Permission,
    ProtocolError,
    SendRoomMessage,
    ServerMessage,
)
from quanttrade_ws.rooms import RoomKind, check_room_name, room_kind, room_permission, room_refusal
from quanttrade_ws.service.core import ActionContext
from quanttrade_ws.service.lifecycle import Lifecycle
from quanttrade_ws.store.ports import JoinLimits, Outcome


class RoomActions(Lifecycle):
    """The `join_room`, `leave_room` and `send_room_message` actions (posting to members removes those gone)."""

    def _check_room(self, identity: Identity, room: str, request_id: str | None) -> None:
        check_room_name(room, request_id)
        needed = room_permission(room)
        if needed and not identity.can(needed):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"Room '{room}' needs the {needed} permission", request_id)

    def _join_room(self, ctx: ActionContext, frame: JoinRoom) -> None:
        identity = ctx.connection.identity
        check_room_name(frame.room, ctx.request_id)
        refusal = room_refusal(identity, frame.room)
        if refusal:
            raise ProtocolError(ErrorCode.FORBIDDEN, refusal, ctx.request_id)
        # A join and a leave are each announced to every member: flapping in and out of a room would
        # turn the rate budget into a post per member per frame, out of the Management API quota
        # every client shares. Leaving is never limited, so a refused user is out, not stuck.
        self._within_a_minute(
            f"join#{frame.room}#{identity.user_id}",
            self.limits.room_joins_per_minute,
            f"More than {self.limits.room_joins_per_minute} joins per minute to '{frame.room}'; slow down",
            ctx.request_id,
        )
        outcome = self._join(ctx.connection, frame.room)
        if outcome is Outcome.FULL:
            raise ProtocolError(ErrorCode.ROOM_FULL, f"Room '{frame.room}' is full", ctx.request_id)
        if outcome is Outcome.LIMIT:
            # One step checks both limits a data room counts against: the counters say which one held it back.
            current = self.store.get_connection(ctx.connection.connection_id)
            if current is not None and current.room_count < self.limits.rooms_per_client:
                limit = self.limits.subscriptions_for(identity.subscription_level)
                raise ProtocolError(
                    ErrorCode.SUBSCRIPTION_LIMIT,
                    f"Subscription limit of {limit} reached for the {identity.subscription_level} level"
                    f" (the data room '{frame.room}' counts as one subscription)",
                    ctx.request_id,
                )
            raise ProtocolError(
                ErrorCode.ROOM_LIMIT, f"Room limit of {self.limits.rooms_per_client} reached", ctx.request_id
            )
        if outcome is Outcome.GONE:
            return
        self._answer(
            ctx,
            MessageType.JOIN_ROOM,
            JoinRoomPayload(
                success=True,
                message=f"Joined {frame.room}",
                already_member=outcome is Outcome.ALREADY,
                member_id=self.member_aliases.of(frame.room, identity.user_id),
            ),
            room=frame.room,
        )
        if outcome is Outcome.DONE:
            self._notify_room(frame.room, MessageType.JOIN_ROOM, ctx.connection, exclude=ctx.connection.connection_id)

    def _leave_room(self, ctx: ActionContext, frame: LeaveRoom) -> None:
        # Only the name is checked: a client whose refreshed token lost a room's permission must still be able to leave.
        check_room_name(frame.room, ctx.request_id)
        outcome = self._leave(ctx.connection.connection_id, frame.room)
        if outcome is None:
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"Not a member of '{frame.room}'", ctx.request_id)
        self._answer(
            ctx, MessageType.LEAVE_ROOM, LeaveRoomPayload(success=True, message=f"Left {frame.room}"), room=frame.room
        )
        if outcome is Outcome.DONE:  # the user left; not when another of their connections keeps the seat
            self._notify_room(frame.room, MessageType.LEAVE_ROOM, ctx.connection)

    def _join(self, connection: Connection, room: str) -> Outcome:
        """Join a room; a data room also counts as one subscription toward the level's limit,
        since it delivers a stream as a subscription does."""
        identity = connection.identity
        return self.store.join_room(
            room,
            connection.connection_id,
            identity.user_id,
            JoinLimits(
                capacity=self.limits.clients_per_room,
                room_limit=self.limits.rooms_per_client,
                subscription_limit=(
                    self.limits.subscriptions_for(identity.subscription_level)
                    if room_kind(room) is RoomKind.DATA
                    else None
                ),
            ),
            token_expires_at=identity.token_expires_at,
        )

    def _leave(self, connection_id: str, room: str) -> Outcome | None:
        return self.store.leave_room(room, connection_id, subscription=room_kind(room) is RoomKind.DATA)

    def _notify_room(
        self, room: str, message_type: MessageType, connection: Connection, exclude: str | None = None
    ) -> None:
        # Presence costs one post per member for every join and leave: data rooms are
        # feeds, not conversations, and above the threshold the posts would outgrow the
        # Management API's quota, so neither announces comings and goings.
        if room_kind(room) is RoomKind.DATA:
            return
        # The size with the one coming or going counted, so a join and its leave are told alike.
        size = self.store.room_size(room) + (1 if message_type is MessageType.LEAVE_ROOM else 0)
        if size > self.limits.presence_max_members:
            return
        member_id = self.member_aliases.of(room, connection.identity.user_id)
        notice = ServerMessage(
            message_type=message_type, payload=RoomMemberPayload(member_id=member_id), source=member_id, room=room
        )
        members = [m for m in self.store.room_members(room) if m != exclude]
        self.post_to(members, notice.to_json().encode())

    def _send_room_message(self, ctx: ActionContext, frame: SendRoomMessage) -> None:
        identity = ctx.connection.identity
        if not identity.can(Permission.ROOMS_SEND):
            raise ProtocolError(ErrorCode.FORBIDDEN, "No permission to send room messages", ctx.request_id)
        self._check_room(identity, frame.room, ctx.request_id)
        if room_kind(frame.room) is RoomKind.DATA:
            # Members read a data room as the feed itself: a message there would pass for real data.
            raise ProtocolError(
                ErrorCode.FORBIDDEN, f"'{frame.room}' is a data room: it carries upstream data only", ctx.request_id
            )
        size = len(frame.message.encode())
        if size > self.limits.room_message_bytes:
            raise ProtocolError(
                ErrorCode.MESSAGE_TOO_LARGE,
                f"Room messages are limited to {self.limits.room_message_bytes} bytes (got {size})",
                ctx.request_id,
            )
        if not self.store.is_member(frame.room, ctx.connection.connection_id):
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"Join '{frame.room}' before sending to it", ctx.request_id)
        # Per user, not per connection: a second connection does not double the allowance.
        self._within_a_minute(
            f"room#{frame.room}#{identity.user_id}",
            self.limits.room_messages_per_minute,
            f"More than {self.limits.room_messages_per_minute} messages per minute to '{frame.room}'; slow down",
            ctx.request_id,
        )
        member_id = self.member_aliases.of(frame.room, identity.user_id)
        message = ServerMessage(
            message_type=MessageType.ROOM_MESSAGE,
            payload=RoomMessagePayload(message=frame.message, member_id=member_id),
            source=member_id,
            room=frame.room,
        )
        data = message.to_json().encode()
        members = self.store.room_members(frame.room)
        # The sender's copy carries its request_id, so the client can match the echo to its request.
        others = [m for m in members if m != ctx.connection.connection_id]
        self.post_to(others, data)
        message.request_id = ctx.request_id
        self.reply(ctx.connection.connection_id, message)
