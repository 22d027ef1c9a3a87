"""Delivery cost: messages posted per CPU second, ManagementApiGateway.post_many vs boto3 one call at a time.

The baseline is the pattern in AWS's samples: `client.post_to_connection(...)`
once per message, one after another. Both run in this process against the
same server, and CPU is `time.process_time()` of this process only: the server
runs in a subprocess, so its work is not counted (on Lambda it is API
Gateway's).

Servers, in order of preference:

* `--endpoint URL`: anything that speaks the Management API (the local stack,
  or AWS with `--aws-credentials`). Without `--connection-id`, posts go to
  made-up ids and are answered 410; both clients pay for the answer the same
  way, so "answered" (delivered + gone) is what is counted.
* the local gateway (`local.api_gateway.server.LocalGateway`) in a subprocess, with real
  WebSocket clients connected to it, so every post is delivered to a socket.
* a minimal stand-in (answers 200 to every `POST /@connections/*`) in a
  subprocess, when the local gateway can't be imported or started, or with
  `--server standin`.

Both servers are in `bench.management_api_servers`.

Run: `python -m bench.delivery_worker [--messages N] [--endpoint URL]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from bench.management_api_servers import ServerProcess

REGION = "us-east-1"
BATCH = 1000  # the fan-out's delivery chunk size (Settings.chunk_size)
# The local gateway verifies SigV4 against the principals it knows: its administrator's key (local.principals).
FAKE_CREDENTIALS = ("testing", "testing", None)
SAMPLE = {
    "message_type": "market_data",
    "stream": "market_data:AAPL",
    "message_id": "8d0c3d0e-7a43-4d8a-9a3c-1f7d5e1f0c2b",
    "timestamp": "2026-01-02T14:30:00.123456+00:00",
    "payload": {"symbol": "AAPL", "price": 187.34, "volume": 1200, "bid": 187.33, "ask": 187.35, "change": 0.42},
}


# ------------------------------------------------------------------ the measurement


def sample_posts(count: int, connection_ids: Sequence[str]) -> list[tuple[str, bytes]]:
    """`count` posts of the sample tick, over 500 symbols and round-robin over `connection_ids`: (id, body)."""
    body = json.dumps(SAMPLE, separators=(",", ":"))
    return [
        (connection_ids[i % len(connection_ids)], body.replace("AAPL", f"S{i % 500:03d}").encode())
        for i in range(count)
    ]


def _measure_gateway(
    endpoint: str, messages: list[tuple[str, bytes]], concurrency: int, credentials: Any, ca_file: str | None
) -> dict[str, Any]:
    import ssl

    from quanttrade_ws.connection_gateway import Post
    from quanttrade_ws.management_api.client import ManagementApiGateway

    gateway = ManagementApiGateway(
        endpoint,
        REGION,
        concurrency=concurrency,
        credentials_provider=credentials,
        timeout=10.0,
        ssl_context=ssl.create_default_context(cafile=ca_file) if ca_file else None,
    )
    posts = [Post(cid, data) for cid, data in messages]
    batches = [posts[i : i + BATCH] for i in range(0, len(posts), BATCH)]
    try:
        gateway.post_many(batches[0][: min(len(batches[0]), concurrency * 2)])  # open the pool, as a warm Lambda has it
        delivered = gone = failed = throttles = 0
        cpu, wall = time.process_time(), time.perf_counter()
        for batch in batches:
            report = gateway.post_many(batch)
            delivered += len(report.delivered)
            gone += len(report.gone)
            failed += len(report.failed)
            throttles += report.throttle_retries
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        gateway.shutdown()
    return {"cpu": cpu, "wall": wall, "delivered": delivered, "gone": gone, "failed": failed, "throttles": throttles}


def _measure_boto3(
    endpoint: str, messages: list[tuple[str, bytes]], credentials: Any, ca_file: str | None
) -> dict[str, Any]:
    import boto3
    import botocore.exceptions

    resolved = credentials()
    session = boto3.session.Session(
        aws_access_key_id=resolved.access_key,
        aws_secret_access_key=resolved.secret_key,
        aws_session_token=resolved.token,
        region_name=REGION,
    )
    client = session.client("apigatewaymanagementapi", endpoint_url=endpoint, verify=ca_file)
    gone_error = client.exceptions.GoneException
    with contextlib.suppress(gone_error):  # warm the client and its connection, as a warm Lambda has them
        client.post_to_connection(ConnectionId=messages[0][0], Data=messages[0][1])
    delivered = gone = failed = 0
    cpu, wall = time.process_time(), time.perf_counter()
    for connection_id, data in messages:
        try:
            client.post_to_connection(ConnectionId=connection_id, Data=data)
            delivered += 1
        except gone_error:
            gone += 1
        except botocore.exceptions.ClientError:
            failed += 1
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    client.close()
    return {"cpu": cpu, "wall": wall, "delivered": delivered, "gone": gone, "failed": failed}


def _rate(count: float, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else float("inf")


def run(
    endpoint: str | None = None,
    messages: int = 20_000,
    *,
    baseline_messages: int | None = None,
    concurrency: int = 64,
    server: str = "local-gateway",
    clients: int = BATCH,
    connection_ids: Sequence[str] | None = None,
    aws_credentials: bool = False,
    tls: bool = False,
) -> dict[str, Any]:
    """Post `messages` through ManagementApiGateway and (fewer, by default) through boto3; return the figures."""
    from botocore.credentials import ReadOnlyCredentials

    from quanttrade_ws.management_api.sigv4 import BotocoreCredentials

    if aws_credentials:
        credentials: Any = BotocoreCredentials()
    else:
        fake = ReadOnlyCredentials(*FAKE_CREDENTIALS)

        def credentials() -> Any:
            return fake

    baseline_messages = baseline_messages or min(messages, 3000)
    with _target(endpoint, server, clients, connection_ids, tls) as target:
        ids = target["connection_ids"] or [f"bench-{i:05d}=" for i in range(BATCH)]
        ca_file = target.get("ca_file")
        ours = _measure_gateway(target["endpoint"], sample_posts(messages, ids), concurrency, credentials, ca_file)
        theirs = _measure_boto3(target["endpoint"], sample_posts(baseline_messages, ids), credentials, ca_file)
    ours_answered = ours["delivered"] + ours["gone"]
    theirs_answered = theirs["delivered"] + theirs["gone"]
    ours_rate = _rate(ours_answered, ours["cpu"])
    theirs_rate = _rate(theirs_answered, theirs["cpu"])
    return {
        "delivery_posts_per_cpu_second": ours_rate,
        "baseline_boto3_posts_per_cpu_second": theirs_rate,
        "delivery_vs_baseline_ratio": round(ours_rate / theirs_rate, 2) if theirs_rate else float("inf"),
        "delivery_posts_per_second": _rate(ours_answered, ours["wall"]),
        "baseline_boto3_posts_per_second": _rate(theirs_answered, theirs["wall"]),
        "delivery_cpu_microseconds_per_post": round(1e6 * ours["cpu"] / max(ours_answered, 1), 1),
        "baseline_boto3_cpu_microseconds_per_post": round(1e6 * theirs["cpu"] / max(theirs_answered, 1), 1),
        "delivery_messages": messages,
        "delivery_delivered": ours["delivered"],
        "delivery_gone": ours["gone"],
        "delivery_failed": ours["failed"],
        "delivery_throttle_retries": ours["throttles"],
        "baseline_messages": baseline_messages,
        "baseline_delivered": theirs["delivered"],
        "baseline_gone": theirs["gone"],
        "baseline_failed": theirs["failed"],
        "concurrency": concurrency,
        "batch_size": BATCH,
        "server": target["kind"],
        "python": sys.version.split()[0],
    }


@contextmanager
def _target(
    endpoint: str | None, server: str, clients: int, connection_ids: Sequence[str] | None, tls: bool
) -> Iterator[dict[str, Any]]:
    if endpoint is not None:
        yield {"endpoint": endpoint, "connection_ids": list(connection_ids or []), "kind": f"given endpoint {endpoint}"}
        return
    process = None
    if server == "local-gateway" and not tls:  # the local gateway speaks plain HTTP only
        try:
            process = ServerProcess("local-gateway", clients, tls=False)
        except (RuntimeError, json.JSONDecodeError) as exc:
            print(f"local gateway unavailable ({exc}); using the stand-in server", file=sys.stderr)
    if process is None:
        process = ServerProcess("standin", clients, tls)
    try:
        yield process.target
    finally:
        process.close()


def _print(figures: dict[str, Any]) -> None:
    print(f"server: {figures['server']} (its CPU is not counted); python {figures['python']}")
    print(
        f"posts: {figures['delivery_messages']} via post_many (batches of {figures['batch_size']}, concurrency "
        f"{figures['concurrency']}); {figures['baseline_messages']} via boto3 post_to_connection, one after another"
    )
    print()
    print(f"{'':34}{'post_many':>14}{'boto3 baseline':>16}")
    rows = [
        ("posts per CPU second", "delivery_posts_per_cpu_second", "baseline_boto3_posts_per_cpu_second"),
        ("CPU microseconds per post", "delivery_cpu_microseconds_per_post", "baseline_boto3_cpu_microseconds_per_post"),
        ("posts per second (wall clock)", "delivery_posts_per_second", "baseline_boto3_posts_per_second"),
        ("delivered", "delivery_delivered", "baseline_delivered"),
        ("gone (410)", "delivery_gone", "baseline_gone"),
        ("failed", "delivery_failed", "baseline_failed"),
    ]
    for label, ours, theirs in rows:
        print(f"{label:34}{figures[ours]:>14,}{figures[theirs]:>16,}")
    print()
    print(
        f"post_many vs baseline, posts per CPU second: {figures['delivery_vs_baseline_ratio']}x (target: 5x or better)"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.delivery_worker", description=__doc__.split("\n")[0])
    parser.add_argument("--endpoint", help="a Management API endpoint; default: start a server in a subprocess")
    parser.add_argument("--connection-id", action="append", dest="connection_ids", help="live ids at --endpoint")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--baseline-messages", type=int, default=None, help="default: min(messages, 3000)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--server", choices=["local-gateway", "standin"], default="local-gateway")
    parser.add_argument("--clients", type=int, default=BATCH, help="WebSocket clients on the local gateway")
    parser.add_argument("--aws-credentials", action="store_true", help="sign with botocore's default credentials")
    parser.add_argument("--tls", action="store_true", help="HTTPS to a stand-in with a self-signed certificate")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    figures = run(
        args.endpoint,
        args.messages,
        baseline_messages=args.baseline_messages,
        concurrency=args.concurrency,
        server=args.server,
        clients=args.clients,
        connection_ids=args.connection_ids,
        aws_credentials=args.aws_credentials,
        tls=args.tls,
    )
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        _print(figures)
    return figures


if __name__ == "__main__":
    main()
