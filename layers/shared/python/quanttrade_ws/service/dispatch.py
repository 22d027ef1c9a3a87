"""The realtime service: each client frame checked (rate, token expiry) and handed to its action.

Handlers parse the API Gateway event and call one method here. Every reply goes
back through the connection gateway (API Gateway's Management API), because
the routes have no route responses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quanttrade_protocol.messages import PongPayload
from quanttrade_ws.observability import logger
from quanttrade_ws.protocol import (
    ACTION_COSTS,
    UNPARSED_FRAME_COST,
    ErrorCode,
    Hello,
    JoinRoom,
    LeaveRoom,
    MessageType,
    Ping,
    ProtocolError,
    Refresh,
    Resume,
    SendRoomMessage,
    Subscribe,
    Unsubscribe,
    error_message,
    parse_client_frame,
)
from quanttrade_ws.service.core import ActionContext
from quanttrade_ws.service.sessions import SessionActions


class RealtimeService(SessionActions):
    """Connection lifecycle and every client action, behind the WebSocket routes."""

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

    def _ping(self, ctx: ActionContext, frame: Ping) -> None:
        self._answer(ctx, MessageType.PONG, PongPayload(server_time=self.clock()))
