"""What the stage knows about one connection, and the close codes and reasons API Gateway uses."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from aiohttp import web

from local.api_gateway.frame_size_limit import GatewayWebSocket

GOING_AWAY = "Going away"
NO_STATUS_REASON = "Client-side close frame status not set"
ABNORMAL_REASON = "Connection closed abnormally"
MESSAGE_TOO_BIG_REASON = "Message too big"


class Connection:
    """Everything the gateway knows about one accepted (or being accepted) connection."""

    __slots__ = (
        "authorizer",
        "client_outcome",
        "close_intent",
        "closer",
        "connected_at",
        "connected_at_ms",
        "connected_mono",
        "connection_id",
        "domain_name",
        "done",
        "finished",
        "identity",
        "last_active",
        "last_active_mono",
        "pending",
        "source_ip",
        "timer",
        "transport",
        "ws",
    )

    def __init__(self, connection_id: str, source_ip: str, user_agent: str | None, domain_name: str) -> None:
        self.connection_id = connection_id
        self.source_ip = source_ip
        self.identity: dict[str, str] = {"sourceIp": source_ip}
        if user_agent is not None:
            self.identity["userAgent"] = user_agent
        self.domain_name = domain_name
        self.connected_at = time.time()
        self.connected_at_ms = int(self.connected_at * 1000)
        self.connected_mono = time.monotonic()
        self.last_active = self.connected_at
        self.last_active_mono = self.connected_mono
        self.authorizer: dict[str, Any] | None = None
        self.ws: GatewayWebSocket | None = None
        self.transport: asyncio.Transport | None = None
        self.close_intent: tuple[int, str] | None = None  # set when the gateway decided to close
        self.client_outcome: tuple[int, str] | None = None  # how the client ended it
        self.closer: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.pending: set[asyncio.Task[None]] = set()
        self.done = asyncio.Event()
        self.finished = False

    def touch(self) -> None:
        """A data frame arrived from the client: the connection is active now."""
        self.last_active = time.time()
        self.last_active_mono = time.monotonic()


async def close_quietly(ws: web.WebSocketResponse, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await ws.close(code=code, message=reason.encode())
