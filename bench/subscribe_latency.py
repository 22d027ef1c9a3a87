"""Time of one `subscribe` of 1, 20 and 50 streams against a running local stack (`make dev`).

Each sample is a fresh connection (a user of its own, so no per-user cap or
connect rate is met) that first pings, so the message function is warm and the
time is the subscribe's alone: from sending the frame to its `subscribe` reply.
Prints the samples and their median per stream count; no pass/fail.

    QT_JWT_SECRET=... python -m bench.subscribe_latency --url ws://127.0.0.1:8081
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from typing import Any

import websockets

from local.tokens import mint_token

REPLY_TIMEOUT = 30.0


async def _reply(ws: Any, message_type: str) -> dict[str, Any]:
    """The next message of `message_type`; an error reply is a failed sample, said plainly."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT))
        if message.get("message_type") == "error":
            raise RuntimeError(f"the stack answered an error: {message['payload']}")
        if message.get("message_type") == message_type:
            return message


async def _one(url: str, secret: str, streams: int) -> float:
    token = mint_token(secret, f"bench-{uuid.uuid4().hex[:12]}", subscription_level="premium", expires_in=3600)
    async with websockets.connect(f"{url}?token={token}", max_size=None) as ws:
        await ws.send(json.dumps({"action": "ping"}))
        await _reply(ws, "pong")
        frame = {
            "action": "subscribe",
            "streams": [{"stream_type": "market_data", "symbol": f"S{i:03d}"} for i in range(streams)],
        }
        started = time.perf_counter()
        await ws.send(json.dumps(frame))
        reply = await _reply(ws, "subscribe")
        elapsed = time.perf_counter() - started
        if len(reply["payload"]["streams"]) != streams:
            raise RuntimeError(f"subscribed to {len(reply['payload']['streams'])} of {streams} streams")
        return elapsed


async def _main(url: str, secret: str, counts: list[int], samples: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for count in counts:
        times = [await _one(url, secret, count) for _ in range(samples)]
        results[str(count)] = {
            "median_ms": round(statistics.median(times) * 1000, 1),
            "samples_ms": [round(t * 1000, 1) for t in times],
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8081", help="the gateway's WebSocket URL")
    parser.add_argument("--streams", default="1,20,50", help="stream counts to time, comma-separated (at most 50)")
    parser.add_argument("--samples", type=int, default=5, help="subscribes per stream count (5)")
    args = parser.parse_args()
    secret = os.environ.get("QT_JWT_SECRET")
    if not secret:
        parser.error("QT_JWT_SECRET must hold the stack's JWT secret")
    counts = [int(part) for part in args.streams.split(",")]
    if any(not 1 <= count <= 50 for count in counts):
        parser.error("each stream count must be 1-50 (a subscribe frame holds at most 50 streams)")
    print(json.dumps(asyncio.run(_main(args.url, secret, counts, args.samples)), indent=1))


if __name__ == "__main__":
    main()
