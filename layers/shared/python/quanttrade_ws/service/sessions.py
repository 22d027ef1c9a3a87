"""Sessions: hello (a session and its token), token refresh, and resume with replay of what was missed."""

from __future__ import annotations

import uuid

from quanttrade_protocol.messages import (
    ConnectionLimits,
    ConnectPayload,
    RefreshPayload,
    ResumedPayload,
    StreamReplay,
)
from quanttrade_ws.auth import AuthError, Identity, Session
from quanttrade_ws.models import SessionSnapshot, Subscription
from quanttrade_ws.protocol import (
    ACTION_COSTS,
    WILDCARD_SUBSCRIPTION_COST,
    ErrorCode,
    Hello,
    MessageType,
    ProtocolError,
    Refresh,
    Resume,
    pack_batches,
    subscription_cost,
)
from quanttrade_ws.rooms import RoomKind, holds_stream, room_kind, room_refusal
from quanttrade_ws.service.core import ActionContext
from quanttrade_ws.service.rooms import RoomActions
from quanttrade_ws.service.subscriptions import SubscriptionActions, may_read
from quanttrade_ws.store.ports import Outcome


class SessionActions(RoomActions, SubscriptionActions):
    """The `hello`, `refresh` and `resume` actions: a resume re-attaches subscriptions and rooms."""

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
            if not may_read(identity, s.stream_key)
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

    def _resume(self, ctx: ActionContext, frame: Resume) -> None:
        connection = ctx.connection
        try:
            session = self.session_tokens.verify(frame.session_token)
        except AuthError as error:
            raise ProtocolError(ErrorCode.AUTH_FAILED, str(error), ctx.request_id) from None
        if session.user_id != connection.identity.user_id:
            raise ProtocolError(ErrorCode.AUTH_FAILED, "Session belongs to another user", ctx.request_id)
        # A resume may replay thousands of messages; a client resumes once on a new connection, then once
        # more to catch up. Chaining the tokens on one connection would replay without end. Counted before
        # the token is spent, so a refused resume keeps it.
        self._within_a_minute(
            f"resume#{connection.connection_id}",
            self.limits.resumes_per_connection,
            f"More than {self.limits.resumes_per_connection} resumes a minute on one connection",
            ctx.request_id,
        )
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
            if not may_read(connection.identity, subscription.stream_key):
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
        # What this resume re-attached counts whatever the index says: a global secondary index is only
        # eventually consistent, so rows written a moment ago may not be in it yet (on DynamoDB, not in moto).
        held_keys = set(subscriptions) | {s.stream_key for s in self.store.subscriptions_of(connection.connection_id)}
        held_rooms = set(rooms) | set(self.store.rooms_of(connection.connection_id))
        budget = [self.limits.resume_messages]  # one mutable cell that every _replay below spends from
        results: dict[str, StreamReplay] = {}
        heads: dict[str, int] = {}  # each replayed stream's latest seq, where a catch-up replay starts
        for stream, last_seq in frame.last_seq.items():
            if not may_read(connection.identity, stream) or not holds_stream(stream, held_keys, held_rooms):
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
