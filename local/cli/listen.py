"""`python -m local listen`: connect, say hello, subscribe and join rooms, and print every message."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from local.cli.arguments import add_deployed_options, positive
from local.cli.deployed import TOKEN_ENV, deployed_stack, local_only_profile
from local.cli.local_target import DEFAULT_WS_URL, local_signing_key, quiet_development_warnings

# What --count counts: the messages streams and rooms deliver, not replies, pongs or heartbeats.
DATA_MESSAGE_TYPES = frozenset(
    {"market_data", "prediction", "alert", "performance", "system_status", "market_regime", "room_message"}
)


def parse_stream(text: str) -> dict[str, Any]:
    """`market_data:AAPL` or `alerts` as a subscribe frame's stream spec."""
    stream_type, _, symbol = text.partition(":")
    spec: dict[str, Any] = {"stream_type": stream_type}
    if symbol and symbol != "*":
        spec["symbol"] = symbol
    return spec


def unpack(message: Any) -> list[Any]:
    """A server frame's messages: a `batch` carries several in payload.messages."""
    if isinstance(message, dict) and message.get("message_type") == "batch":
        inner = (message.get("payload") or {}).get("messages")
        if isinstance(inner, list):
            return [m for item in inner for m in unpack(item)]
    return [message]


def is_data_message(message: Any) -> bool:
    return isinstance(message, dict) and message.get("message_type") in DATA_MESSAGE_TYPES


def format_message(message: Any, pretty: bool) -> str:
    if not isinstance(message, dict):
        return json.dumps(message)
    if pretty:
        return json.dumps(message, indent=2, sort_keys=True)
    head = message.get("message_type", "?")
    where = message.get("stream") or message.get("room") or ""
    seq = f" #{message['seq']}" if message.get("seq") is not None else ""
    stamp = time.strftime("%H:%M:%S")
    return f"{stamp} {head:<14} {where}{seq} {json.dumps(message.get('payload', message), sort_keys=True)}"


def listen_target(args: argparse.Namespace) -> tuple[str, str]:
    """The WebSocket URL and the access token: the local stack's and a minted token, or a deployed stack's and
    --token/$QT_TOKEN."""
    stack = deployed_stack(args)
    if stack is None:
        local_only_profile(args, "outputs (listening needs no AWS credentials)")
        return args.url or DEFAULT_WS_URL, args.token or _mint_listen_token(args.user)
    url = args.url or stack.output("WebSocketUrl")
    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise SystemExit(
            f"listening to the deployed stack {stack.name} needs an access token: pass --token TOKEN or set "
            f"${TOKEN_ENV}, e.g. {TOKEN_ENV}=$(python -m local token --stack {stack.name}) when the stack verifies "
            "HS256 tokens with its JwtSecretArn key; otherwise a token from its identity provider."
        )
    return url, token


async def listen(args: argparse.Namespace) -> int:
    import websockets

    url, token = listen_target(args)
    separator = "&" if "?" in url else "?"
    try:
        connection = await websockets.connect(f"{url}{separator}token={token}", max_size=None, open_timeout=15)
    except websockets.InvalidStatus as error:
        print(f"handshake refused by {url}: HTTP {error.response.status_code}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError) as error:
        print(f"cannot connect to {url}: {error or type(error).__name__}", file=sys.stderr)
        return 1
    received = 0
    wanted = args.count
    async with connection:
        await connection.send(json.dumps({"action": "hello", "request_id": "listen-hello"}))
        if args.stream:
            streams = [parse_stream(s) for s in args.stream]
            await connection.send(json.dumps({"action": "subscribe", "streams": streams, "request_id": "listen-sub"}))
        for room in args.room or []:
            await connection.send(json.dumps({"action": "joinRoom", "room": room, "request_id": f"listen-{room}"}))
        keepalive = asyncio.create_task(_keep_alive(connection))
        try:
            async with asyncio.timeout(args.seconds):
                async for frame in connection:
                    try:
                        decoded = json.loads(frame)
                    except ValueError:
                        print(frame, flush=True)
                        continue
                    for message in unpack(decoded):
                        print(format_message(message, args.pretty), flush=True)
                        if is_data_message(message):
                            received += 1
                            if wanted is not None and received >= wanted:
                                return 0
        except TimeoutError:
            if wanted is None:
                return 0
            print(f"{received} of {wanted} data messages within {args.seconds:g} s", file=sys.stderr)
            return 1
        except websockets.ConnectionClosed as closed:
            print(f"connection closed: {closed}", file=sys.stderr)
        finally:
            keepalive.cancel()
    if wanted is not None and received < wanted:
        print(f"connection closed after {received} of {wanted} data messages", file=sys.stderr)
        return 1
    return 0


async def _keep_alive(connection: Any) -> None:
    # API Gateway counts only client messages as activity; its idle timeout is 10 minutes.
    while True:
        await asyncio.sleep(240)
        await connection.send(json.dumps({"action": "ping"}))


def _mint_listen_token(user: str) -> str:
    from local.tokens import mint_token

    quiet_development_warnings()
    return mint_token(local_signing_key(), user)


def cmd_listen(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(listen(args))
    except KeyboardInterrupt:
        return 0


def add_command(commands: Any) -> None:
    """The `listen` command and its options. `commands`: the main parser's sub-parsers."""
    listen_command = commands.add_parser(
        "listen",
        help="connect, subscribe and print messages as they arrive",
        description="Connect, say hello, subscribe to streams and join rooms, and print every message. Locally a "
        f"development token is minted; a deployed stack needs --token or ${TOKEN_ENV}.",
    )
    listen_command.add_argument(
        "--stream", action="append", help="stream to subscribe, e.g. market_data:AAPL, alerts (repeatable)"
    )
    listen_command.add_argument("--room", action="append", help="room to join (repeatable)")
    listen_command.add_argument(
        "--url", help=f"WebSocket URL (default {DEFAULT_WS_URL}, or the deployed stack's WebSocketUrl output)"
    )
    listen_command.add_argument(
        "--token",
        help=f"access token (local default: a development token for --user; a deployed stack: ${TOKEN_ENV})",
    )
    listen_command.add_argument("--user", default="listener", help="user of the minted token (default listener)")
    listen_command.add_argument("--pretty", action="store_true", help="print whole messages as indented JSON")
    listen_command.add_argument(
        "--count",
        type=positive(int),
        metavar="N",
        help="exit after N data messages (stream and room messages, not replies); exit 1 if the connection closes "
        "or --seconds runs out first",
    )
    listen_command.add_argument(
        "--seconds",
        type=positive(float),
        metavar="S",
        help="stop listening after S seconds (exit 0; with --count, a deadline)",
    )
    add_deployed_options(listen_command, "for --stack's DescribeStacks (listening itself needs no AWS credentials)")
    listen_command.set_defaults(func=cmd_listen)
