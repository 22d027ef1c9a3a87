"""The persistent connections to one endpoint, kept between batches and between warm invocations."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl

    from quanttrade_ws.management_api.call_batch import CallBatch
    from quanttrade_ws.management_api.http_connection import HttpConnection


class ConnectionPool:
    """Persistent connections to one endpoint, reused across batches and across warm Lambda invocations."""

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        size: int,
        idle_timeout: float,
        connect_timeout: float,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.size = size
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.idle: list[HttpConnection] = []
        self.live = 0  # idle + busy + opening
        self.batch: CallBatch | None = None
        self.connections_opened = 0

    def take_idle(self) -> HttpConnection | None:
        now = time.monotonic()
        while self.idle:
            # LIFO: the most recently used connection is the least likely to have been dropped.
            conn = self.idle.pop()
            if conn.dead or conn.transport.is_closing():
                self._drop(conn)
            elif now - conn.idle_since > self.idle_timeout:
                # Servers and NATs drop idle connections without a word; a request on one would wait for the timeout.
                conn.transport.close()
                self._drop(conn)
            else:
                return conn
        return None

    def put_idle(self, conn: HttpConnection) -> None:
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def forget(self, conn: HttpConnection) -> None:
        """A connection is gone: free its slot, and let the running batch use the slot."""
        if self._drop(conn) and self.batch is not None:
            self.batch.pump()

    def _drop(self, conn: HttpConnection) -> bool:
        if conn.dead:
            return False
        conn.dead = True
        self.live -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        return True

    async def open(self, conn: HttpConnection) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        await asyncio.wait_for(
            loop.create_connection(
                lambda: conn,  # type: ignore[type-var]
                self.host,
                self.port,
                ssl=self.ssl_context,
                server_hostname=self.host if self.ssl_context is not None else None,
            ),
            self.connect_timeout,
        )
        self.connections_opened += 1

    def close_all(self) -> None:
        for conn in list(self.idle):
            conn.transport.close()
            self._drop(conn)
