"""The ceiling: a bare `websockets` server broadcasting frames of the service's size to the same clients.

`python -m bench.end_to_end.ceiling` is what the scenario's `ChildProcess("plain", ...)` starts.
"""

from __future__ import annotations

import json
import os
from typing import Any

from bench.child_process import announce, run_server, until_stdin_closes
from bench.end_to_end.clients import STREAM


async def serve_plain(_: dict[str, Any]) -> None:
    """The ceiling: a bare `websockets` server that broadcasts what the control connection asks for."""
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    clients: set[ServerConnection] = set()

    async def handle(connection: ServerConnection) -> None:
        if connection.request is not None and connection.request.path == "/control":
            async for order in connection:
                request = json.loads(order)
                frame = plain_frame(request["event_id"], int(request["size"]))
                broadcast(clients, frame)
                await connection.send(json.dumps({"event_id": request["event_id"], "clients": len(clients)}))
            return
        clients.add(connection)
        try:
            await connection.wait_closed()
        finally:
            clients.discard(connection)

    async with serve(handle, "127.0.0.1", 0, compression=None, max_size=None, ping_interval=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        announce({"websocket_url": f"ws://127.0.0.1:{port}/", "pid": os.getpid()})
        await until_stdin_closes()


def plain_frame(event_id: str, size: int) -> str:
    """A market-data-shaped frame of exactly `size` bytes, so clients parse it the way they parse the real one."""
    head = {"message_type": "market_data", "stream": STREAM, "payload": {"event_id": event_id, "pad": ""}}
    bare = json.dumps(head, separators=(",", ":"))
    head["payload"]["pad"] = "x" * max(0, size - len(bare))
    return json.dumps(head, separators=(",", ":"))


if __name__ == "__main__":
    run_server(serve_plain, "python -m bench.end_to_end.ceiling")
