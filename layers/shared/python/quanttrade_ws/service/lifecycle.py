"""Connection lifecycle: $connect, $disconnect, the sweeper, and removing connections found gone."""

from __future__ import annotations

from quanttrade_ws.auth import Identity
from quanttrade_ws.connection_gateway import GatewayError, Post
from quanttrade_ws.models import Connection, SessionSnapshot
from quanttrade_ws.observability import logger
from quanttrade_ws.service.core import ServiceCore


class ConnectRefused(Exception):
    """$connect must fail: the client sees the handshake refused."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status_code = status_code


class Lifecycle(ServiceCore):
    """Connections come and go: the rows they own are written and removed here."""

    def connect(self, connection_id: str, identity: Identity, connected_at_ms: int | None = None) -> None:
        now = self.clock()
        # A sliding window: a fixed minute would let twice the limit through around its boundary.
        if self.store.count_in_window(f"connect#{identity.user_id}", 60) > self.limits.connections_per_minute:
            raise ConnectRefused(429, "Too many new connections for this user")
        opened = self.store.open_connection(
            Connection(
                connection_id=connection_id,
                identity=identity,
                connected_at=connected_at_ms or int(now * 1000),
                last_activity=int(now),
            ),
            self.limits.connections_per_user,
        )
        if not opened:
            raise ConnectRefused(429, f"This user already has {self.limits.connections_per_user} open connections")

    def disconnect(self, connection_id: str) -> bool:
        """Remove a connection and everything it owns; keep a session snapshot for resume.

        Idempotent: an unknown or already removed connection is not an error.
        Returns whether there was anything to remove.
        """
        connection = self.store.get_connection(connection_id)
        # The row's counters move in the same transactions as the rows they count, so a connection whose
        # counters are zero owns nothing and its index Queries are skipped (most connections never join a
        # room: that is one Query fewer each). Without its row (a second $disconnect, a connection the
        # sweeper removed half-way) only the index can tell.
        owns_subscriptions = connection is None or connection.subscription_count > 0
        owns_rooms = connection is None or connection.room_count > 0
        subscriptions = self.store.subscriptions_of(connection_id) if owns_subscriptions else []
        rooms = self.store.rooms_of(connection_id) if owns_rooms else []
        if connection is not None and connection.session_id:
            # Only if the session is still this connection's: after a resume elsewhere (a proactive
            # reconnect, or a client back before the sweeper found this one) the live connection's is newer.
            self._save_session(
                SessionSnapshot(connection.session_id, connection.identity.user_id, tuple(subscriptions), tuple(rooms)),
                held_by=connection_id,
            )
        self.store.remove_subscriptions_of(connection_id, [subscription.stream_key for subscription in subscriptions])
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

    def post_to(self, connection_ids: list[str], data: bytes) -> None:
        """Post one message to many connections; clean up the ones that are gone."""
        if not connection_ids:
            return
        report = self.gateway.post_many([Post(cid, data) for cid in connection_ids])
        for post in report.gone:
            self.disconnect(post.connection_id)
