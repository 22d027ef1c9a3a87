"""API Gateway's idle timeout (10 minutes) and maximum connection duration (2 hours).

One timer per connection, at the nearer of the two deadlines; when it fires
early (activity moved the idle deadline), it is armed again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiohttp import WSCloseCode

from local.api_gateway.config import GatewayConfig
from local.api_gateway.connection import GOING_AWAY, Connection

CloseConnection = Callable[[Connection, int, str], None]
CurrentConfig = Callable[[], GatewayConfig]


class ConnectionTimers:
    """Closes connections that idled or lived too long with 1001 "Going away".

    The stage's config is read each time a timer is armed or fires, so a
    replaced config (shorter timeouts in a test) applies to the connections
    already open.
    """

    def __init__(self, config: CurrentConfig, close: CloseConnection) -> None:
        self._config = config
        self._close = close

    def arm(self, connection: Connection) -> None:
        config = self._config()
        deadline = min(
            connection.last_active_mono + config.idle_timeout,
            connection.connected_mono + config.max_connection_seconds,
        )
        loop = asyncio.get_running_loop()
        # loop.time() is time.monotonic(), so monotonic deadlines convert directly.
        connection.timer = loop.call_at(deadline, self._on_timer, connection)

    @staticmethod
    def cancel(connection: Connection) -> None:
        if connection.timer is not None:
            connection.timer.cancel()
            connection.timer = None

    def _on_timer(self, connection: Connection) -> None:
        connection.timer = None
        if connection.finished or connection.close_intent is not None:
            return
        now = time.monotonic()
        config = self._config()
        if (
            now >= connection.connected_mono + config.max_connection_seconds
            or now >= connection.last_active_mono + config.idle_timeout
        ):
            self._close(connection, WSCloseCode.GOING_AWAY, GOING_AWAY)
        else:
            self.arm(connection)
