"""Connection lifecycle and client actions: the domain behind the WebSocket routes.

Handlers parse the API Gateway event and call one method here. Every reply goes
back through the connection gateway (API Gateway's Management API), because
the routes have no route responses.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quanttrade_protocol.messages import (
    ConnectionLimits,
    ConnectPayload,
    JoinRoomPayload,
    LeaveRoomPayload,
    PongPayload,
    RefreshPayload,
    ResumedPayload,
    RoomMemberPayload,
    RoomMessagePayload,
    StreamReplay,
    StreamsChangedPayload,
    SubscribedPayload,
)
from quanttrade_ws.auth import AuthError, Identity, Session, SessionTokens, TokenVerifier
from quanttrade_ws.config import Settings
from quanttrade_ws.gateway import ConnectionGateway, GatewayError, Post
from quanttrade_ws.models import Connection, SessionSnapshot, Subscription
from quanttrade_ws.observability import logger
from quanttrade_ws.protocol import (
    ACTION_COSTS,
    UNPARSED_FRAME_COST,
    WILDCARD_SUBSCRIPTION_COST,
    ErrorCode,
    Hello,
    JoinRoom,
    LeaveRoom,
    MessageType,
    Payload,
    Permission,
    Ping,
    ProtocolError,
    Refresh,
    Resume,
    SendRoomMessage,
    ServerMessage,
    StreamId,
    StreamSpec,
    StreamType,
    Subscribe,
    Unsubscribe,
    error_message,
    pack_batches,
    parse_client_frame,
    subscription_cost,
)
from quanttrade_ws.rooms import (
    MemberAliases,
    RoomKind,
    check_room_name,
    holds_stream,
    room_kind,
    room_permission,
    room_refusal,
)
from quanttrade_ws.store.ports import Outcome, Store
from quanttrade_ws.store.subscriptions import SUBSCRIPTIONS_PER_TRANSACTION

if TYPE_CHECKING:
    from quanttrade_ws.fanout import Metrics


class ConnectRefused(Exception):
    """$connect must fail: the client sees the handshake refused."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status_code = status_code


@dataclass
class ActionContext:
    connection: Connection
    request_id: str | None


class RealtimeService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        gateway: ConnectionGateway,
        session_tokens: SessionTokens,
        token_verifier: Callable[[], TokenVerifier] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        metrics: Metrics | None = None,
        *,
        member_aliases: MemberAliases,
    ) -> None:
        self.settings = settings
        self.member_aliases = member_aliases
        self.limits = settings.limits
        self.store = store
        self.gateway = gateway
        self.session_tokens = session_tokens
        self._token_verifier = token_verifier
        self.clock = clock
        self.sleep = sleep
        self.metrics = metrics

    # ------------------------------------------------------------ lifecycle

    def connect(self, connection_id: str, identity: Identity, connected_at_ms: int | None = None) -> None:
        now = self.clock()
        # A sliding window: a fixed minute would let twice the limit through around its boundary.
        if self.store.count_in_window(f"connect#{identity.user_id}", 60) > self.limits.connections_per_minute:
            raise ConnectRefused(429, "Too many new connections for this user")
        self.store.add_connection(
            Connection(
                connection_id=connection_id,
                identity=identity,
                connected_at=connected_at_ms or int(now * 1000),
                last_activity=int(now),
            )
        )
        # The row first, then the claim: an id in the user's set always has a row, so an id without one is stale.
        if not self.store.claim_user_connection(identity.user_id, connection_id, self.limits.connections_per_user):
            self.store.delete_connection(connection_id)
            raise ConnectRefused(429, f"This user already has {self.limits.connections_per_user} open connections")

    def disconnect(self, connection_id: str) -> bool:
        """Remove a connection and everything it owns; keep a session snapshot for resume.

        Idempotent: an unknown or already removed connection is not an error.
        Returns whether there was anything to remove.
        """
        connection = self.store.get_connection(connection_id)
        subscriptions = self.store.subscriptions_of(connection_id)
        rooms = self.store.rooms_of(connection_id)
        if connection is not None and connection.session_id:
            # Only if the session is still this connection's: after a resume elsewhere (a proactive
            # reconnect, or a client back before the sweeper found this one) the live connection's is newer.
            self._save_session(
                SessionSnapshot(connection.session_id, connection.identity.user_id, tuple(subscriptions), tuple(rooms)),
                held_by=connection_id,
            )
        for subscription in subscriptions:
            self.store.remove_subscription(subscription.stream_key, connection_id, adjust_connection=False)
        for room in rooms:
            self.store.leave_room(room, connection_id, adjust_connection=False)
        removed = self.store.delete_connection(connection_id)
        if removed is not None:
            self.store.release_user_connection(removed.identity.user_id, connection_id)
        return bool(removed or subscriptions or rooms)

    def sweep(self, idle_seconds: int | None = None) -> int:
        """Remove connections that vanished without $disconnect (API Gateway calls it best effort),
        and close those whose access token has expired.

        A connection idle longer than API Gateway's idle timeout is asked about
        through the Management API; only one the gateway no longer knows is
        removed, so a quiet but live client keeps its subscriptions. A live one
        whose token expired is told so and closed (its $disconnect removes it;
        if that never comes, the next sweep finds it gone): the fan-out already
        skips it, and this bounds how long it stays open to one sweep period.
        """
        now = self.clock()
        idle = self.settings.idle_timeout_seconds if idle_seconds is None else idle_seconds
        removed = 0
        for connection in self.store.stale_connections(now - idle, expired_before=now):
            try:
                known = self.gateway.info(connection.connection_id)
            except GatewayError:
                # Unknown is not gone: keep it for the next run, and sweep the others now.
                logger.warning(
                    "sweep could not ask about a connection", extra={"connection_id": connection.connection_id}
                )
                continue
            if known is None:
                self.disconnect(connection.connection_id)
                removed += 1
            elif 0 < connection.identity.token_expires_at < now:
                try:
                    self._expire(connection.connection_id, None)
                except GatewayError:
                    logger.warning(
                        "sweep could not close an expired connection", extra={"connection_id": connection.connection_id}
                    )
                    continue
                removed += 1
        return removed

    # ------------------------------------------------------------ frames

    def handle_frame(self, connection_id: str, body: str | bytes | None, received_at: float | None = None) -> None:
        """Answer one client frame. Never raises for anything a client sends.

        `received_at` is when API Gateway took the frame (requestTimeEpoch): the rate
        window counts arrivals, so a flood is limited even when invocations queue up.
        Each frame weighs its action's cost (protocol.ACTION_COSTS): parsing comes first
        because it is local and cheap, and the cost needs the action.
        """
        request_id: str | None = None
        try:
            frame: Any = None
            problem: ProtocolError | None = None
            try:
                frame = parse_client_frame(body)
            except ProtocolError as error:
                problem = error
            cost = UNPARSED_FRAME_COST if frame is None else ACTION_COSTS[frame.action]
            connection = self.store.touch_connection(connection_id, received_at, cost=cost)
            if connection is None:
                return  # the connection went away while the frame was in flight
            if connection.rate_count > self.limits.messages_per_second:
                self._rate_limited(connection_id)
                return
            expires_at = connection.identity.token_expires_at
            expired = bool(expires_at and expires_at < self.clock())
            if problem is not None:
                if expired:
                    self._expire(connection_id, problem.request_id)
                else:
                    self.reply(connection_id, error_message(problem.code, problem.message, problem.request_id))
                return
            request_id = frame.request_id
            if expired:
                # Only a refresh can bring an expired connection back; anything else, a failed refresh included,
                # ends it (else an invalid refresh now and then would keep a revoked user's data flowing).
                if not isinstance(frame, Refresh):
                    self._expire(connection_id, request_id)
                    return
                try:
                    self._dispatch(ActionContext(connection, request_id), frame)
                except ProtocolError as error:
                    self._expire(connection_id, request_id, f"Session expired and the refresh failed: {error.message}")
                return
            self._dispatch(ActionContext(connection, request_id), frame)
        except ProtocolError as error:
            self.reply(connection_id, error_message(error.code, error.message, error.request_id or request_id))
        except Exception:
            logger.exception("frame failed")
            if self.metrics is not None:
                self.metrics.add_metric("InternalErrors", "Count", 1)
            self.reply(connection_id, error_message(ErrorCode.INTERNAL, "Internal error, please retry", request_id))

    def _expire(self, connection_id: str, request_id: str | None, reason: str = "Session expired") -> None:
        """API Gateway authorised only the handshake: token expiry is ours to enforce."""
        self.reply(connection_id, error_message(ErrorCode.AUTH_FAILED, reason, request_id))
        self.gateway.close(connection_id)

    def _rate_limited(self, connection_id: str) -> None:
        warnings = self.store.add_rate_warning(connection_id)
        self.reply(
            connection_id,
            error_message(
                ErrorCode.RATE_LIMIT,
                f"More than {self.limits.messages_per_second} units per second (a ping is 1, see limits.action_costs);"
                " slow down",
            ),
        )
        if warnings > self.limits.rate_limit_warnings:
            self.gateway.close(connection_id)

    def _dispatch(self, ctx: ActionContext, frame: Any) -> None:
        handlers: dict[type, Callable[[ActionContext, Any], None]] = {
            Hello: self._hello,
            Subscribe: self._subscribe,
            Unsubscribe: self._unsubscribe,
            JoinRoom: self._join_room,
            LeaveRoom: self._leave_room,
            SendRoomMessage: self._send_room_message,
            Ping: self._ping,
            Refresh: self._refresh,
            Resume: self._resume,
        }
        handlers[type(frame)](ctx, frame)

    def reply(self, connection_id: str, message: ServerMessage) -> bool:
        message.target = message.target or connection_id
        return self.gateway.post(connection_id, message.to_json().encode())

    def _answer(self, ctx: ActionContext, message_type: MessageType, payload: Payload, **extra: Any) -> None:
        self.reply(
            ctx.connection.connection_id,
            ServerMessage(message_type=message_type, payload=payload, request_id=ctx.request_id, **extra),
        )

    # ------------------------------------------------------------ actions

    def _hello(self, ctx: ActionContext, frame: Hello) -> None:
        connection = ctx.connection
        session_id = connection.session_id or uuid.uuid4().hex
        if connection.session_id is None:
            self.store.set_session(connection.connection_id, session_id)
            self._save_session(
                SessionSnapshot(session_id, connection.identity.user_id, connection_id=connection.connection_id)
            )
        self._answer(
            ctx,
            MessageType.CONNECT,
            ConnectPayload(
                client_id=connection.connection_id,
                session_token=self._session_token(session_id, connection.identity.user_id),
                user_id=connection.identity.user_id,
                limits=self._limits_for(connection.identity),
            ),
        )

    def _session_token(self, session_id: str, user_id: str) -> str:
        expires = int(self.clock()) + self.settings.token_expiry_hours * 3600
        return self.session_tokens.issue(Session(session_id, user_id, expires))

    def _limits_for(self, identity: Identity) -> ConnectionLimits:
        return ConnectionLimits(
            max_subscriptions=self.limits.subscriptions_for(identity.subscription_level),
            wildcard_subscription_cost=WILDCARD_SUBSCRIPTION_COST,
            max_rooms=self.limits.rooms_per_client,
            max_room_members=self.limits.clients_per_room,
            max_room_message_bytes=self.limits.room_message_bytes,
            messages_per_second=self.limits.messages_per_second,
            action_costs=dict(ACTION_COSTS),
            max_resume_messages=self.limits.resume_messages,
            room_messages_per_minute=self.limits.room_messages_per_minute,
            max_message_bytes=self.limits.max_message_bytes,
            idle_timeout_seconds=self.settings.idle_timeout_seconds,
            history_seconds=self.settings.history_seconds,
        )

    def _ping(self, ctx: ActionContext, frame: Ping) -> None:
        self._answer(ctx, MessageType.PONG, PongPayload(server_time=self.clock()))

    def _subscribe(self, ctx: ActionContext, frame: Subscribe) -> None:
        # A stream named twice counts once (the last spelling of its interval and filters wins).
        specs = list({spec.key: spec for spec in frame.streams}.values())
        for spec in specs:
            self._check_stream(ctx.connection.identity, spec, ctx.request_id)
        limit = self.limits.subscriptions_for(ctx.connection.identity.subscription_level)
        subscriptions = [
            Subscription(
                stream_key=spec.key,
                connection_id=ctx.connection.connection_id,
                user_id=ctx.connection.identity.user_id,
                interval=spec.interval,
                filters=spec.filters.as_dict(),
                token_expires_at=ctx.connection.identity.token_expires_at,
                latest_only=spec.latest_only,
            )
            for spec in specs
        ]
        added: list[str] = []
        # Several streams go in one transaction (a frame of 50 was 50 sequential ones, past the
        # function's timeout on a slow table). More than a transaction holds (the frame allows 50
        # today) go in consecutive transactions, in the frame's order.
        for start in range(0, len(subscriptions), SUBSCRIPTIONS_PER_TRANSACTION):
            chunk = subscriptions[start : start + SUBSCRIPTIONS_PER_TRANSACTION]
            batch = [(subscription, subscription_cost(subscription.stream_key)) for subscription in chunk]
            if len(chunk) > 1 and self.store.add_subscriptions(batch, limit):
                added.extend(subscription.stream_key for subscription in chunk)
                continue
            # One stream, or a batch refused as a whole (a stream already subscribed, the limit, the
            # connection gone): one transaction per stream, which refreshes what is already there and
            # stops exactly where the limit is reached.
            if not self._subscribe_each(ctx, chunk, limit, added):
                return  # the connection is gone: nobody to answer
        # Where each single-symbol stream stands: the seq just before this subscription's first
        # message, so a client dropped before any message arrives can still resume from there.
        # One BatchGetItem for the frame (for one stream it costs what a GetItem does).
        heads = self.store.stream_heads(spec.key for spec in specs if spec.symbol)
        last_values = {
            key: head.last_message
            for key, head in heads.items()
            if head.last_message and key.startswith(f"{StreamType.MARKET_DATA.value}:")
        }
        last_seq = {key: head.last_seq - (1 if key in last_values else 0) for key, head in heads.items()}
        self._answer(
            ctx,
            MessageType.SUBSCRIBE,
            SubscribedPayload(
                success=True, message=f"Subscribed to {', '.join(added)}", streams=added, last_seq=last_seq
            ),
        )
        # A new market data subscriber gets the latest known value at once (last value cache).
        for message in last_values.values():
            self.gateway.post(ctx.connection.connection_id, message.encode())

    def _subscribe_each(
        self, ctx: ActionContext, subscriptions: list[Subscription], limit: int, added: list[str]
    ) -> bool:
        """Subscribe one stream after another, appending each one done to `added`.

        Raises SUBSCRIPTION_LIMIT, naming what this frame added before it, at the first stream
        over the limit; False if the connection went away meanwhile.
        """
        for subscription in subscriptions:
            key = subscription.stream_key
            outcome = self.store.add_subscription(subscription, limit, cost=subscription_cost(key))
            if outcome is Outcome.LIMIT:
                raise ProtocolError(
                    ErrorCode.SUBSCRIPTION_LIMIT,
                    f"Subscription limit of {limit} reached for the {ctx.connection.identity.subscription_level} level"
                    + (f" ({key} counts as {subscription_cost(key)})" if subscription_cost(key) > 1 else "")
                    + (f"; subscribed to {', '.join(added)} before the limit" if added else ""),
                    ctx.request_id,
                )
            if outcome is Outcome.GONE:
                return False
            added.append(key)
        return True

    def _check_stream(self, identity: Identity, spec: StreamSpec, request_id: str | None) -> None:
        # The filters were checked when the frame was parsed: each stream type has its own model.
        if not identity.can(Permission.to_read(spec.stream_type)):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"No permission to read {spec.stream_type.value}", request_id)

    def _unsubscribe(self, ctx: ActionContext, frame: Unsubscribe) -> None:
        keys = dict.fromkeys(spec.key for spec in frame.streams)  # a stream named twice counts once
        removed = [
            key
            for key in keys
            if self.store.remove_subscription(key, ctx.connection.connection_id, cost=subscription_cost(key))
        ]
        self._answer(
            ctx,
            MessageType.UNSUBSCRIBE,
            StreamsChangedPayload(
                success=True,
                message=f"Unsubscribed from {', '.join(removed)}" if removed else "Was not subscribed",
                streams=removed,
            ),
        )

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
            capacity=self.limits.clients_per_room,
            room_limit=self.limits.rooms_per_client,
            token_expires_at=identity.token_expires_at,
            subscription_limit=(
                self.limits.subscriptions_for(identity.subscription_level) if room_kind(room) is RoomKind.DATA else None
            ),
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
        sent = self.store.count_in_window(f"room#{frame.room}#{identity.user_id}", 60)
        if sent > self.limits.room_messages_per_minute:
            raise ProtocolError(
                ErrorCode.RATE_LIMIT,
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

    def post_to(self, connection_ids: list[str], data: bytes) -> None:
        """Post one message to many connections; clean up the ones that are gone."""
        if not connection_ids:
            return
        report = self.gateway.post_many([Post(cid, data) for cid in connection_ids])
        for post in report.gone:
            self.disconnect(post.connection_id)

    def _refresh(self, ctx: ActionContext, frame: Refresh) -> None:
        if self._token_verifier is None:
            raise ProtocolError(ErrorCode.AUTH_FAILED, "Token refresh is not available", ctx.request_id)
        try:
            identity = self._token_verifier().verify(frame.token)
        except AuthError as error:
            raise ProtocolError(ErrorCode.AUTH_FAILED, str(error), ctx.request_id) from None
        if identity.user_id != ctx.connection.identity.user_id:
            raise ProtocolError(ErrorCode.AUTH_FAILED, "Token belongs to another user", ctx.request_id)
        connection_id = ctx.connection.connection_id
        # An older token (by `iat`) must not undo what a newer one set, such as a downgrade.
        if identity.token_issued_at < ctx.connection.identity.token_issued_at or not self.store.update_identity(
            connection_id, identity
        ):
            raise ProtocolError(ErrorCode.AUTH_FAILED, "Token is older than the one in use", ctx.request_id)
        self.store.set_token_expiry(connection_id, identity.token_expires_at)
        # A refreshed token may permit less: drop the streams and rooms it no longer allows.
        dropped = [
            s.stream_key
            for s in self.store.subscriptions_of(connection_id)
            if not _may_read(identity, s.stream_key)
            and self.store.remove_subscription(s.stream_key, connection_id, cost=subscription_cost(s.stream_key))
        ]
        for room in self.store.rooms_of(connection_id):
            if room_refusal(identity, room):
                self._leave(connection_id, room)
                dropped.append(room)
        dropped += self._trim_subscriptions(connection_id, identity)
        refreshed = RefreshPayload(success=True, expires_at=identity.token_expires_at, dropped=dropped)
        self._answer(ctx, MessageType.REFRESH, refreshed)

    def _trim_subscriptions(self, connection_id: str, identity: Identity) -> list[str]:
        """After a downgrade, remove what is over the new level's limit and return its keys: subscriptions
        first (the last in key order go first, each giving back its cost), then data rooms, which count as
        one subscription each. The connection's counter decides how much is over."""
        limit = self.limits.subscriptions_for(identity.subscription_level)
        connection = self.store.get_connection(connection_id)
        over = (connection.subscription_count if connection else 0) - limit
        trimmed: list[str] = []
        for subscription in reversed(self.store.subscriptions_of(connection_id) if over > 0 else []):
            if over <= 0:
                break
            cost = subscription_cost(subscription.stream_key)
            if self.store.remove_subscription(subscription.stream_key, connection_id, cost=cost):
                trimmed.append(subscription.stream_key)
                over -= cost
        for room in reversed(self.store.rooms_of(connection_id) if over > 0 else []):
            if over <= 0:
                break
            if room_kind(room) is RoomKind.DATA and self._leave(connection_id, room) is not None:
                trimmed.append(room)
                over -= 1
        return trimmed

    # ------------------------------------------------------------ resume

    def _resume(self, ctx: ActionContext, frame: Resume) -> None:
        connection = ctx.connection
        try:
            session = self.session_tokens.verify(frame.session_token, now=self.clock())
        except AuthError as error:
            raise ProtocolError(ErrorCode.AUTH_FAILED, str(error), ctx.request_id) from None
        if session.user_id != connection.identity.user_id:
            raise ProtocolError(ErrorCode.AUTH_FAILED, "Session belongs to another user", ctx.request_id)
        # Single use: the `resumed` answer carries the next token. Of two resumes racing with one token on
        # two connections, exactly one gets past this line; the winner may retry a resume that failed.
        if not self.store.spend_session_token(session.token_id, session.expires_at, connection.connection_id):
            raise ProtocolError(
                ErrorCode.AUTH_FAILED, "Session token already used; resume with the latest one", ctx.request_id
            )
        snapshot = self._session_state(session.session_id, connection.connection_id)
        if snapshot is None:
            raise ProtocolError(ErrorCode.AUTH_FAILED, "Session is no longer known", ctx.request_id)

        self.store.set_session(connection.connection_id, session.session_id)
        limit = self.limits.subscriptions_for(connection.identity.subscription_level)
        subscriptions = []  # only what was re-attached: the new token may permit less than the old one
        dropped = []  # what the session had and this connection did not get back
        for subscription in snapshot.subscriptions:
            if not _may_read(connection.identity, subscription.stream_key):
                dropped.append(subscription.stream_key)
            else:
                outcome = self.store.add_subscription(
                    Subscription(
                        subscription.stream_key,
                        connection.connection_id,
                        connection.identity.user_id,
                        subscription.interval,
                        dict(subscription.filters),
                        connection.identity.token_expires_at,
                        subscription.latest_only,
                    ),
                    limit,
                    cost=subscription_cost(subscription.stream_key),
                )
                if outcome in (Outcome.DONE, Outcome.ALREADY):
                    subscriptions.append(subscription.stream_key)
                else:
                    dropped.append(subscription.stream_key)
        rooms = []
        for room in snapshot.rooms:
            if room_refusal(connection.identity, room):
                dropped.append(room)
                continue
            outcome = self._join(connection, room)
            if outcome in (Outcome.DONE, Outcome.SHARED, Outcome.ALREADY):
                rooms.append(room)
            else:
                dropped.append(room)

        # Only streams this connection now receives are replayed (its own subscriptions and data rooms, the
        # session's re-attached ones among them), and at most limits.resume_messages messages in all:
        # one small frame must not buy a replay of every stream the server keeps.
        held_keys = {s.stream_key for s in self.store.subscriptions_of(connection.connection_id)}
        held_rooms = set(self.store.rooms_of(connection.connection_id))
        budget = [self.limits.resume_messages]  # one mutable cell that every _replay below spends from
        results: dict[str, StreamReplay] = {}
        heads: dict[str, int] = {}  # each replayed stream's latest seq, where a catch-up replay starts
        for stream, last_seq in frame.last_seq.items():
            if not _may_read(connection.identity, stream) or not holds_stream(stream, held_keys, held_rooms):
                results[stream] = StreamReplay(recovered=False, replayed=0, error=ErrorCode.FORBIDDEN)
                continue
            results[stream], heads[stream] = self._replay(connection.connection_id, stream, last_seq, budget)
        if heads and self.settings.subscriber_cache_seconds > 0:
            # Fan-out keeps audiences cached for subscriber_cache_seconds, so an event
            # sequenced just now may still go out without this connection. Once the
            # cache has turned over, replay what came meanwhile: no gap, at worst a
            # duplicate the client drops by (stream, seq).
            self.sleep(self.settings.subscriber_cache_seconds)
            for stream, head in heads.items():
                late, latest = self._replay(connection.connection_id, stream, head, budget)
                result = results[stream]
                results[stream] = result.model_copy(
                    update={
                        "recovered": result.recovered and late.recovered,
                        "replayed": result.replayed + late.replayed,
                        "last_seq": latest,
                    }
                )
        recovered = all(result.recovered for result in results.values())
        self.store.complete_session_token(session.token_id)
        new_token = self._session_token(session.session_id, connection.identity.user_id)
        self._answer(
            ctx,
            MessageType.RESUMED,
            ResumedPayload(
                success=True,
                recovered=recovered,
                streams=results,
                subscriptions=subscriptions,
                rooms=rooms,
                dropped=dropped,
                client_id=connection.connection_id,
                session_token=new_token,
            ),
        )

    def _session_state(self, session_id: str, new_connection_id: str) -> SessionSnapshot | None:
        """The session's subscriptions and rooms: from its live connection if it still
        has one (a proactive reconnect before the 2 hour cut-off), else from the
        snapshot saved at disconnect. The session moves to the new connection."""
        snapshot = self.store.load_session(session_id)
        if snapshot is None:
            return None
        live = snapshot.connection_id
        if live and live != new_connection_id and self.store.get_connection(live) is not None:
            subscriptions = tuple(self.store.subscriptions_of(live))
            rooms = tuple(self.store.rooms_of(live))
            # Its $disconnect may have been removing them while we read (a client back at once after
            # the server closed it). That saves the whole snapshot before removing anything, so a
            # session no longer held by the live connection now has it: take that one instead.
            again = self.store.load_session(session_id)
            if again is not None and again.connection_id != live:
                snapshot = again
            else:
                snapshot = SessionSnapshot(session_id, snapshot.user_id, subscriptions, rooms)
        self._save_session(
            SessionSnapshot(session_id, snapshot.user_id, snapshot.subscriptions, snapshot.rooms, new_connection_id)
        )
        return snapshot

    def _save_session(self, snapshot: SessionSnapshot, held_by: str | None = None) -> None:
        self.store.save_session(snapshot, ttl_seconds=self.settings.token_expiry_hours * 3600, held_by=held_by)

    def _replay(self, connection_id: str, stream: str, last_seq: int, budget: list[int]) -> tuple[StreamReplay, int]:
        """Replay a stream after `last_seq`, spending from the resume's shared message `budget`.
        Returns what was replayed and the stream's latest seq."""
        head = self.store.stream_head(stream)
        if head.last_seq <= last_seq:
            return StreamReplay(recovered=True, replayed=0, last_seq=head.last_seq), head.last_seq
        if budget[0] <= 0:
            return StreamReplay(recovered=False, replayed=0, last_seq=head.last_seq), head.last_seq
        entries = self.store.history_after(stream, last_seq, min(self.settings.history_messages, budget[0]))
        budget[0] -= len(entries)
        recovered = bool(entries) and entries[0].seq == last_seq + 1
        for frame in pack_batches([e.message for e in entries], self.limits.max_message_bytes):
            self.post_to([connection_id], frame)
        replay = StreamReplay(
            recovered=recovered,
            replayed=len(entries),
            first_seq=entries[0].seq if entries else None,
            last_seq=head.last_seq,
        )
        return replay, head.last_seq


def _may_read(identity: Identity, stream: str) -> bool:
    """Whether the identity may read a stream or subscription key (`market_data:AAPL`, `alerts:*`, `alerts`)."""
    stream_id = StreamId.parse(stream)
    return stream_id is not None and identity.can(Permission.to_read(stream_id.stream_type))
