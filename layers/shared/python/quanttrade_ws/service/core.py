"""What every part of the service shares: its collaborators, and the way it answers a connection.

The service is one object built from one class per concern (lifecycle,
subscriptions, rooms, sessions, dispatch), each a module of this package; they
share the state set up here, so a test that swaps the gateway or the clock swaps
it for every part at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quanttrade_ws.auth import SessionTokens, TokenVerifier
from quanttrade_ws.clock import Clock, wall_clock
from quanttrade_ws.config import Settings
from quanttrade_ws.connection_gateway import ConnectionGateway
from quanttrade_ws.models import Connection, SessionSnapshot
from quanttrade_ws.protocol import ErrorCode, MessageType, Payload, ProtocolError, ServerMessage, error_message
from quanttrade_ws.rooms import MemberAliases
from quanttrade_ws.store.ports import Store

if TYPE_CHECKING:
    from quanttrade_ws.fanout import Metrics


@dataclass
class ActionContext:
    """The connection a client frame came on, and the request id its answer carries."""

    connection: Connection
    request_id: str | None


class ServiceCore:
    """The service's collaborators (settings, store, gateway, tokens, clock, metrics) and its replies."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        gateway: ConnectionGateway,
        session_tokens: SessionTokens,
        token_verifier: Callable[[], TokenVerifier] | None = None,
        clock: Clock = wall_clock,
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

    def reply(self, connection_id: str, message: ServerMessage) -> bool:
        message.target = message.target or connection_id
        return self.gateway.post(connection_id, message.to_json().encode())

    def _answer(self, ctx: ActionContext, message_type: MessageType, payload: Payload, **extra: Any) -> None:
        self.reply(
            ctx.connection.connection_id,
            ServerMessage(message_type=message_type, payload=payload, request_id=ctx.request_id, **extra),
        )

    def _within_a_minute(self, scope: str, limit: int, refusal: str, request_id: str | None) -> None:
        """Count one more under `scope` in its sliding minute; RATE_LIMIT (naming the request) past `limit`."""
        if self.store.count_in_window(scope, 60) > limit:
            raise ProtocolError(ErrorCode.RATE_LIMIT, refusal, request_id)

    def _expire(self, connection_id: str, request_id: str | None, reason: str = "Session expired") -> None:
        """API Gateway authorised only the handshake: token expiry is ours to enforce."""
        self.reply(connection_id, error_message(ErrorCode.AUTH_FAILED, reason, request_id))
        self.gateway.close(connection_id)

    def _save_session(self, snapshot: SessionSnapshot, held_by: str | None = None) -> None:
        self.store.save_session(snapshot, ttl_seconds=self.settings.token_expiry_hours * 3600, held_by=held_by)
