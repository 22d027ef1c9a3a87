"""Typed errors: one exception class per server error code.

The server answers a failed request with an `error` message whose payload holds
`error_code` and `message`; the client raises the matching subclass so callers
can `except RoomFull:` instead of comparing strings.
"""

from __future__ import annotations

from quanttrade_protocol.enums import ErrorCode


class QuantTradeError(Exception):
    """Base of every error the client raises. `code` is the server's error code, or None for client-side failures."""

    code: str | None = None

    def __init__(self, message: str, *, code: str | None = None, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.request_id = request_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class AuthFailed(QuantTradeError):
    """The token or session was refused (handshake 401/403, expired session, failed refresh or resume)."""

    code = ErrorCode.AUTH_FAILED.value


class RateLimited(QuantTradeError):
    """Too many frames per second (or too many new connections); slow down."""

    code = ErrorCode.RATE_LIMIT.value


class SubscriptionLimit(QuantTradeError):
    code = ErrorCode.SUBSCRIPTION_LIMIT.value


class RoomLimit(QuantTradeError):
    code = ErrorCode.ROOM_LIMIT.value


class RoomFull(QuantTradeError):
    code = ErrorCode.ROOM_FULL.value


class InvalidRoom(QuantTradeError):
    code = ErrorCode.INVALID_ROOM.value


class InvalidMessage(QuantTradeError):
    code = ErrorCode.INVALID_MESSAGE.value


class UnknownAction(QuantTradeError):
    code = ErrorCode.UNKNOWN_ACTION.value


class Forbidden(QuantTradeError):
    code = ErrorCode.FORBIDDEN.value


class NotInRoom(QuantTradeError):
    code = ErrorCode.NOT_IN_ROOM.value


class MessageTooLarge(QuantTradeError):
    code = ErrorCode.MESSAGE_TOO_LARGE.value


class InternalError(QuantTradeError):
    """The server failed; the request may be retried."""

    code = ErrorCode.INTERNAL.value


class ConnectionLost(QuantTradeError):
    """The connection carrying a request went away before the reply, or none came back in time to send it."""


class RequestTimeout(QuantTradeError, TimeoutError):
    """No reply within the request timeout."""


class ClientClosed(QuantTradeError):
    """The client was closed by the application."""


ERRORS_BY_CODE: dict[str, type[QuantTradeError]] = {
    cls.code: cls
    for cls in (
        AuthFailed,
        RateLimited,
        SubscriptionLimit,
        RoomLimit,
        RoomFull,
        InvalidRoom,
        InvalidMessage,
        UnknownAction,
        Forbidden,
        NotInRoom,
        MessageTooLarge,
        InternalError,
    )
    if cls.code is not None
}


def error_from_payload(payload: dict[str, object], request_id: str | None = None) -> QuantTradeError:
    """The typed exception for an `error` message's payload; unknown codes (a newer server) keep their code."""
    code = str(payload.get("error_code") or "")
    message = str(payload.get("message") or code or "error")
    cls = ERRORS_BY_CODE.get(code, QuantTradeError)
    return cls(message, code=code or None, request_id=request_id)
