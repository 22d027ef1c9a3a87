"""`python -m local dev`: the whole backend locally (what `make dev` runs), until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

from local.cli.arguments import positive
from local.cli.local_target import quiet_development_warnings
from local.lambda_runtime.pool import DEFAULT_IDLE_LIMIT_SECONDS
from local.moto_dynamodb import DEFAULT_TTL_SWEEP_SECONDS


def cmd_dev(args: argparse.Namespace) -> int:
    from local.heap import freeze_startup_heap
    from local.stack.config import StackConfig
    from local.stack.console_logging import configure_logging
    from local.stack.local_stack import LocalStack

    configure_logging(args.log_level)
    quiet_development_warnings()
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
        faults=args.faults,
        fault_seed=args.fault_seed,
        ttl_sweep_seconds=args.ttl_sweep or None,
        environment_idle_seconds=args.environment_idle,
    )

    async def run() -> None:
        stack = LocalStack(config)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)
        try:
            await stack.start()
            freeze_startup_heap()  # this process serves the gateway for hours: see local.heap
            _print_banner(stack, args.no_simulator)
            await stopping.wait()
            print("\nstopping: closing connections ($disconnect for each), pumps, simulator, moto ...", flush=True)
        finally:
            await stack.stop()
            print("stopped", flush=True)

    asyncio.run(run())
    return 0


def assembly_origin(stack: Any) -> str:
    directory = stack.assembly.directory
    shown = directory.relative_to(Path.cwd()) if directory.is_relative_to(Path.cwd()) else directory
    return f"{shown}, {'cached' if stack.assembly.cached else 'synthesized now'}"


def _print_banner(stack: Any, simulator_off: bool) -> None:
    token = stack.token("dev-user")
    url = stack.websocket_url
    lines = [
        "",
        "QuantTrade local stack is up",
        f"  WebSocket    {url}",
        f"  Dashboard    {stack.dashboard_url}?token={token}",
        f"  Management   {stack.management_endpoint}/@connections/{{connectionId}}",
        f"  Admin API    {stack.http_url}/admin/stats  (IAM-authorised, as deployed: `python -m local stats` signs)",
        f"  Ready        {stack.http_url}/ready",
        f"  AWS (moto)   {stack.aws_endpoint_url}  (DynamoDB, SQS, Secrets Manager, EventBridge bus "
        f"'{stack.event_bus_name}')",
        f"  Functions    {stack.aws_function_endpoint}  (each function's calls, checked against its role)",
        f"  Simulator    {'off' if simulator_off else 'on'}",
        *_fault_lines(stack.config),
        "",
        f"Started in {stack.startup_seconds:.1f} s from the synthesized template "
        f"({assembly_origin(stack)}); every function answered its samples in events/.",
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


def _fault_lines(config: Any) -> list[str]:
    if not config.faults:
        return []
    rates = ", ".join(f"{name} {rate:.0%}" for name, rate in sorted(config.faults.items()))
    seed = "" if config.fault_seed is None else f", seed {config.fault_seed}"
    return [f"  Faults       {rates}{seed} of calls answered with AWS's own errors"]


def fault_rates(text: str) -> dict[str, float]:
    """`dynamodb=0.05,management=0.05,sqs=0.02` -> {"dynamodb": 0.05, ...}, each a share within [0, 1]."""
    from local.stack.config import FAULT_TARGETS  # only when faults are asked for: it imports moto's server

    rates: dict[str, float] = {}
    for pair in text.split(","):
        name, separator, value = pair.strip().partition("=")
        if not separator or not name:
            raise argparse.ArgumentTypeError(f"expected name=rate pairs like dynamodb=0.05, got {pair.strip()!r}")
        if name not in FAULT_TARGETS:
            raise argparse.ArgumentTypeError(f"faults go to {', '.join(FAULT_TARGETS)}, not {name!r}")
        try:
            rate = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: not a number: {value!r}") from None
        if not 0.0 <= rate <= 1.0:
            raise argparse.ArgumentTypeError(f"{name}: a rate is a share of calls within [0, 1], not {value}")
        rates[name] = rate
    return rates


def add_command(commands: Any) -> None:
    """The `dev` command and its options. `commands`: the main parser's sub-parsers."""
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
    dev.add_argument(
        "--faults",
        type=fault_rates,
        default={},
        metavar="NAME=RATE,...",
        help="answer this share of calls with AWS's own errors: dynamodb and sqs (the functions' calls: throttling, "
        "500s, cancelled transactions), management (Management API: 429 LimitExceeded or 500); "
        "e.g. dynamodb=0.05,management=0.05,sqs=0.02",
    )
    dev.add_argument("--fault-seed", type=int, default=None, help="seed for --faults, to repeat a run's faults")
    dev.add_argument(
        "--ttl-sweep",
        type=positive(float, or_zero=True),
        default=DEFAULT_TTL_SWEEP_SECONDS,
        metavar="SECONDS",
        help="delete items whose DynamoDB TTL has passed this often (%(default)g; 0: never)",
    )
    dev.add_argument(
        "--environment-idle",
        type=positive(float, or_zero=True),
        default=DEFAULT_IDLE_LIMIT_SECONDS,
        metavar="SECONDS",
        help="shut down a function's execution environment after this long without an invocation, as Lambda does "
        "(%(default)g; 0: never)",
    )
    dev.add_argument("--log-level", default="INFO", help="log level of the local stack's components (INFO)")
    dev.add_argument(
        "--handler-log-level",
        default="WARNING",
        help="show the functions' log lines from this level up (WARNING); they log at the template's level",
    )
    dev.set_defaults(func=cmd_dev)
