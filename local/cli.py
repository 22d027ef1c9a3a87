"""The local stack's command line: run it, mint tokens, publish events, listen, read stats.

python -m local dev                       the whole backend with the simulator (what `make dev` runs)
python -m local token --user alice        a development access token
python -m local publish MarketData '{"symbol": "AAPL", ...}'
python -m local publish --file events/eventbridge/market_data.json
python -m local listen --stream market_data:AAPL --room desk-eu
python -m local stats
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
import warnings
from typing import Any

DEFAULT_WS_URL = "ws://127.0.0.1:8081/"
DEFAULT_HTTP_URL = "http://127.0.0.1:8081"
DEFAULT_AWS_ENDPOINT = "http://127.0.0.1:4566"


def _secret() -> str:
    from local.stack import DEV_SECRET

    secret = os.environ.get("QT_JWT_SECRET")
    if not secret:
        print(f"warning: QT_JWT_SECRET is not set; using the development secret {DEV_SECRET!r}", file=sys.stderr)
        return DEV_SECRET
    return secret


def _quiet_development_warnings() -> None:
    # The development secret is short on purpose and the handlers' metrics are disabled locally:
    # neither warning says anything a developer can act on.
    warnings.filterwarnings("ignore", message=r"The HMAC key is \d+ bytes long")
    warnings.filterwarnings("ignore", message="No application metrics to publish")


# ---------------------------------------------------------------------- dev


def cmd_dev(args: argparse.Namespace) -> int:
    from local.stack import LocalStack, StackConfig, configure_logging

    configure_logging(args.log_level)
    _quiet_development_warnings()
    config = StackConfig(
        host=args.host,
        gateway_port=args.port,
        moto_port=args.moto_port,
        moto_mode=args.moto_mode,
        idle_timeout=args.idle_timeout,
        max_connection_seconds=args.max_connection_duration,
        management_rate_per_second=args.management_rate,
        simulator=not args.no_simulator,
        simulator_rate=args.rate,
        log_level=args.handler_log_level,
    )

    async def run() -> None:
        stack = LocalStack(config)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)
        try:
            await stack.start()
            _print_banner(stack, args.no_simulator)
            await stopping.wait()
            print("\nstopping: closing connections ($disconnect for each), pumps, simulator, moto ...", flush=True)
        finally:
            await stack.stop()
            print("stopped", flush=True)

    asyncio.run(run())
    return 0


def _print_banner(stack: Any, simulator_off: bool) -> None:
    token = stack.token("dev-user")
    url = stack.websocket_url
    lines = [
        "",
        "QuantTrade local stack is up",
        f"  WebSocket    {url}",
        f"  Dashboard    {stack.dashboard_url}?token={token}",
        f"  Management   {stack.management_endpoint}/@connections/{{connectionId}}",
        f"  Admin API    {stack.http_url}/admin/stats",
        f"  Ready        {stack.http_url}/ready",
        f"  AWS (moto)   {stack.aws_endpoint_url}  (DynamoDB, SQS, EventBridge bus 'quanttrade')",
        f"  Simulator    {'off' if simulator_off else 'on'}",
        "",
        "Development token (every permission, premium, 24 h):",
        f"  {token}",
        "",
        "Try it:",
        f"  npx wscat -c '{url}?token={token}'",
        '  > {"action":"hello"}',
        '  > {"action":"subscribe","streams":[{"stream_type":"market_data","symbol":"AAPL"}]}',
        "  python -m local listen --stream market_data:AAPL --room desk-eu",
        "  python -m local publish --file events/eventbridge/alert.json",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    print("\n".join(lines), flush=True)


# ---------------------------------------------------------------------- token


def cmd_token(args: argparse.Namespace) -> int:
    from quanttrade_ws.auth import ALL_PERMISSIONS, mint_token

    _quiet_development_warnings()
    permissions = args.permissions if args.permissions else list(ALL_PERMISSIONS)
    token = mint_token(
        _secret(),
        args.user,
        permissions=permissions,
        subscription_level=args.level,
        client_type=args.client_type,
        expires_in=args.expires,
    )
    print(token)
    return 0


# ---------------------------------------------------------------------- publish


def build_entry(detail_type: str | None, payload: dict[str, Any], bus: str) -> dict[str, Any]:
    """A PutEvents entry from a detail-type and a detail, or from a whole EventBridge event."""
    from quanttrade_ws import topology

    if "detail" in payload and "detail-type" in payload:
        detail_type = detail_type or payload["detail-type"]
        source = payload.get("source")
        detail = payload["detail"]
    else:
        detail, source = payload, None
    sources = {s.detail_type: s.source for s in topology.SOURCES}
    if detail_type not in sources:
        raise SystemExit(f"unknown detail-type {detail_type!r}; one of: {', '.join(sources)}")
    return {
        "Source": source or sources[detail_type],
        "DetailType": detail_type,
        "Detail": json.dumps(detail),
        "EventBusName": bus,
    }


def cmd_publish(args: argparse.Namespace) -> int:
    import boto3

    from quanttrade_ws.upstream import InvalidEvent, parse_upstream_event

    if args.file:
        with open(args.file, encoding="utf-8") as handle:
            payload = json.load(handle)
        detail_type = args.detail_type
    else:
        if not args.detail_type or args.detail is None:
            raise SystemExit("give a detail-type and a JSON detail, or --file")
        detail_type = args.detail_type
        try:
            payload = json.loads(args.detail)
        except ValueError as error:
            raise SystemExit(f"the detail is not JSON: {error}") from None
    if not isinstance(payload, dict):
        raise SystemExit("the detail must be a JSON object")
    entry = build_entry(detail_type, payload, args.bus)
    if not args.force:
        try:
            parse_upstream_event(
                {
                    "id": "check",
                    "source": entry["Source"],
                    "detail-type": entry["DetailType"],
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "detail": json.loads(entry["Detail"]),
                }
            )
        except InvalidEvent as error:
            raise SystemExit(f"fan-out would dead-letter this event ({error}); --force sends it anyway") from None

    deployed = args.profile or args.aws
    endpoint = args.endpoint or (None if deployed else DEFAULT_AWS_ENDPOINT)
    if deployed:
        session = boto3.Session(profile_name=args.profile, region_name=args.region)
    else:
        # moto accepts any keys; fixed ones keep a developer's real credentials out of local traffic.
        session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=args.region)
    client: Any = session.client("events", endpoint_url=endpoint)
    response = client.put_events(Entries=[entry])
    result = response["Entries"][0]
    if response.get("FailedEntryCount"):
        print(f"refused: {result.get('ErrorCode')}: {result.get('ErrorMessage')}", file=sys.stderr)
        return 1
    print(json.dumps({"EventId": result["EventId"], "DetailType": entry["DetailType"], "Source": entry["Source"]}))
    return 0


# ---------------------------------------------------------------------- listen


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


async def listen(args: argparse.Namespace) -> int:
    import websockets

    token = args.token or _mint_listen_token(args.user)
    separator = "&" if "?" in args.url else "?"
    try:
        connection = await websockets.connect(f"{args.url}{separator}token={token}", max_size=None)
    except websockets.InvalidStatus as error:
        print(f"handshake refused: HTTP {error.response.status_code}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"cannot connect to {args.url}: {error}", file=sys.stderr)
        return 1
    async with connection:
        await connection.send(json.dumps({"action": "hello", "request_id": "listen-hello"}))
        if args.stream:
            streams = [parse_stream(s) for s in args.stream]
            await connection.send(json.dumps({"action": "subscribe", "streams": streams, "request_id": "listen-sub"}))
        for room in args.room or []:
            await connection.send(json.dumps({"action": "joinRoom", "room": room, "request_id": f"listen-{room}"}))
        keepalive = asyncio.create_task(_keep_alive(connection))
        try:
            async for frame in connection:
                try:
                    decoded = json.loads(frame)
                except ValueError:
                    print(frame, flush=True)
                    continue
                for message in unpack(decoded):
                    print(format_message(message, args.pretty), flush=True)
        except websockets.ConnectionClosed as closed:
            print(f"connection closed: {closed}", file=sys.stderr)
        finally:
            keepalive.cancel()
    return 0


async def _keep_alive(connection: Any) -> None:
    # API Gateway counts only client messages as activity; its idle timeout is 10 minutes.
    while True:
        await asyncio.sleep(240)
        await connection.send(json.dumps({"action": "ping"}))


def _mint_listen_token(user: str) -> str:
    from quanttrade_ws.auth import mint_token

    _quiet_development_warnings()
    return mint_token(_secret(), user)


def cmd_listen(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(listen(args))
    except KeyboardInterrupt:
        return 0


# ---------------------------------------------------------------------- stats


def cmd_stats(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/")
    paths = ["/admin/stats"] + (["/local/stats"] if args.local else [])
    for path in paths:
        try:
            with urllib.request.urlopen(base + path, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            print(f"GET {path}: HTTP {error.code} {error.read()[:200]!r}", file=sys.stderr)
            return 1
        except OSError as error:
            print(f"GET {base}{path}: {error} (is `python -m local dev` running?)", file=sys.stderr)
            return 1
        print(json.dumps(body, indent=2, sort_keys=True))
    return 0


# ---------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from quanttrade_ws.auth import ALL_PERMISSIONS, CLIENT_TYPES, SUBSCRIPTION_LEVELS

    parser = argparse.ArgumentParser(
        prog="python -m local",
        description="The QuantTrade local stack: API Gateway emulator + Lambda handlers + moto, on one machine.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = commands.add_parser("dev", help="run the whole backend (with the market simulator)")
    dev.add_argument("--host", default="127.0.0.1", help="interface for the gateway and moto (default 127.0.0.1)")
    dev.add_argument("--port", type=int, default=8081, help="gateway port: WebSocket, Management API, dashboard")
    dev.add_argument("--moto-port", type=int, default=4566, help="moto server port (DynamoDB, SQS, EventBridge)")
    dev.add_argument(
        "--moto-mode",
        choices=("subprocess", "thread"),
        default="subprocess",
        help="run moto in a child process (default: keeps it off the gateway's GIL) or a thread",
    )
    dev.add_argument("--no-simulator", action="store_true", help="do not publish simulated market events")
    dev.add_argument("--rate", type=float, default=6.0, help="simulated market data ticks per second (default 6)")
    dev.add_argument("--idle-timeout", type=float, default=600.0, help="seconds without a client message (600)")
    dev.add_argument(
        "--max-connection-duration", type=float, default=7200.0, help="seconds before any connection is closed (7200)"
    )
    dev.add_argument("--management-rate", type=float, default=10_000.0, help="Management API calls per second")
    dev.add_argument("--log-level", default="INFO", help="log level of the local stack's components (INFO)")
    dev.add_argument("--handler-log-level", default="WARNING", help="Powertools log level of the handlers (WARNING)")
    dev.set_defaults(func=cmd_dev)

    token = commands.add_parser("token", help="mint a development access token (HS256 with $QT_JWT_SECRET)")
    token.add_argument("--user", default="dev-user", help="the token's subject")
    token.add_argument(
        "--permissions", nargs="*", metavar="PERMISSION", help=f"default: all ({', '.join(ALL_PERMISSIONS)})"
    )
    token.add_argument("--level", default="premium", choices=SUBSCRIPTION_LEVELS, help="subscription level")
    token.add_argument("--client-type", default="web", choices=CLIENT_TYPES)
    token.add_argument("--expires", type=int, default=3600, help="lifetime in seconds (3600)")
    token.set_defaults(func=cmd_token)

    publish = commands.add_parser("publish", help="put one upstream event on the quanttrade bus")
    publish.add_argument("detail_type", nargs="?", help="MarketData, Prediction, Alert, Performance, ...")
    publish.add_argument("detail", nargs="?", help="the event's detail as JSON")
    publish.add_argument("--file", help="a JSON file: a whole EventBridge event or just its detail")
    publish.add_argument(
        "--endpoint", help=f"EventBridge endpoint (default {DEFAULT_AWS_ENDPOINT}; AWS's own with --profile or --aws)"
    )
    publish.add_argument("--profile", help="an AWS profile: publish to a deployed stack's bus")
    publish.add_argument("--aws", action="store_true", help="publish to AWS with the default credential chain")
    publish.add_argument("--region", default=os.environ.get("AWS_REGION", "us-east-1"))
    publish.add_argument("--bus", default="quanttrade", help="event bus name")
    publish.add_argument("--force", action="store_true", help="send even if the event would not validate")
    publish.set_defaults(func=cmd_publish)

    listen_ = commands.add_parser("listen", help="connect, subscribe and print messages as they arrive")
    listen_.add_argument(
        "--stream", action="append", help="stream to subscribe, e.g. market_data:AAPL, alerts (repeatable)"
    )
    listen_.add_argument("--room", action="append", help="room to join (repeatable)")
    listen_.add_argument("--url", default=DEFAULT_WS_URL, help=f"WebSocket URL (default {DEFAULT_WS_URL})")
    listen_.add_argument("--token", help="access token (default: a development token for --user)")
    listen_.add_argument("--user", default="listener", help="user of the minted token (default listener)")
    listen_.add_argument("--pretty", action="store_true", help="print whole messages as indented JSON")
    listen_.set_defaults(func=cmd_listen)

    stats = commands.add_parser("stats", help="GET the admin API's statistics")
    stats.add_argument("--url", default=DEFAULT_HTTP_URL, help=f"the gateway's HTTP URL (default {DEFAULT_HTTP_URL})")
    stats.add_argument("--local", action="store_true", help="also the local stack's function and pump counters")
    stats.set_defaults(func=cmd_stats)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
