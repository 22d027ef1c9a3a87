"""Which HTTP client should post to the Management API: CPU per post and posts/s of three, in one run.

Issue 14's rule: keep the hand-written client (`ManagementApiGateway`, its own
HTTP/1.1 and SigV4) only if its CPU per post is at least 2x lower than the best
library-based option. The candidates, all posting the same messages to the
same real local gateway (`local.api_gateway.server.LocalGateway` in a subprocess, with
real WebSocket clients reading every frame), at the same concurrency:

* `hand_written`: `ManagementApiGateway.post_many`, in the fan-out's chunks of 1,000;
* `aiohttp`: one `aiohttp.ClientSession` with a connection pool of the same size,
  that many worker tasks, each request signed by the same `SigV4Signer`;
* `botocore`: one `apigatewaymanagementapi` client (`max_pool_connections` =
  concurrency) shared by a thread pool of that many threads, `post_to_connection`
  per message (boto3 clients are thread-safe; that is AWS's advice for parallel calls).

CPU is `time.process_time()` of this process only (every thread of it): the
gateway runs in a subprocess, as API Gateway is not billed to the Lambda. Each
client is warmed first (its pool opened, as a warm Lambda has it) and then
measured over the same posts; the order of the three is rotated over `--rounds`
rounds and the median round is kept, so background load on the machine falls
on all three alike.

Run: `python -m bench.delivery_clients [--messages N] [--concurrency C] [--rounds R] [--no-write]`.
Figures are merged into bench/results.json under `delivery_clients_*`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import machine
from bench.delivery_worker import BATCH, FAKE_CREDENTIALS, REGION, sample_posts
from bench.management_api_servers import ServerProcess

CLIENTS = ("hand_written", "aiohttp", "botocore")
RESULTS = Path(__file__).resolve().parent / "results.json"
PREFIX = "delivery_clients_"
KEEP_IF_AT_LEAST = 2.0  # the hand-written client's CPU advantage over the best library that justifies keeping it

Messages = list[tuple[str, bytes]]
Outcome = dict[str, float]


def _credentials() -> Any:
    from botocore.credentials import ReadOnlyCredentials

    return ReadOnlyCredentials(*FAKE_CREDENTIALS)


def _timed(post_all: Callable[[Messages], tuple[int, int, int]], messages: Messages) -> Outcome:
    cpu, wall = time.process_time(), time.perf_counter()
    delivered, gone, failed = post_all(messages)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"cpu": cpu, "wall": wall, "delivered": delivered, "gone": gone, "failed": failed}


# ------------------------------------------------------------------ the three clients


class HandWritten:
    def __init__(self, endpoint: str, concurrency: int) -> None:
        from quanttrade_ws.management_api.client import ManagementApiGateway

        credentials = _credentials()
        self.gateway = ManagementApiGateway(
            endpoint, REGION, concurrency=concurrency, credentials_provider=lambda: credentials, timeout=10.0
        )

    def post_all(self, messages: Messages) -> tuple[int, int, int]:
        from quanttrade_ws.connection_gateway import Post

        delivered = gone = failed = 0
        for start in range(0, len(messages), BATCH):
            report = self.gateway.post_many([Post(cid, data) for cid, data in messages[start : start + BATCH]])
            delivered += len(report.delivered)
            gone += len(report.gone)
            failed += len(report.failed)
        return delivered, gone, failed

    def close(self) -> None:
        self.gateway.shutdown()


class AiohttpClient:
    """aiohttp with the hand-written client's signer: what replacing only the HTTP layer would cost."""

    def __init__(self, endpoint: str, concurrency: int) -> None:
        import asyncio
        from urllib.parse import urlsplit

        from quanttrade_ws.management_api.sigv4 import SigV4Signer

        parts = urlsplit(endpoint)
        default_port = 443 if parts.scheme == "https" else 80
        self.host = parts.hostname if parts.port in (None, default_port) else f"{parts.hostname}:{parts.port}"
        self.base = f"{parts.scheme}://{self.host}{parts.path.rstrip('/')}/@connections/"
        self.prefix = parts.path.rstrip("/") + "/@connections/"
        self.signer = SigV4Signer(str(self.host), REGION)
        self.concurrency = concurrency
        self.credentials = _credentials()
        self.clock = (-1, "")
        self.loop = asyncio.new_event_loop()
        self.session: Any = self.loop.run_until_complete(self._session())

    async def _session(self) -> Any:
        import aiohttp

        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency, force_close=False), skip_auto_headers=("User-Agent",)
        )

    def _headers(self, quoted: str, data: bytes) -> dict[str, str]:
        import hashlib

        from quanttrade_ws.management_api.sigv4 import canonical_uri

        second = int(time.time())
        if second != self.clock[0]:  # the same once-a-second date the hand-written client keeps
            self.clock = (second, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second)))
        amz_date = self.clock[1]
        credentials = self.credentials
        authorization = self.signer.authorization(
            "POST",
            canonical_uri(self.prefix + quoted),
            amz_date,
            hashlib.sha256(data).hexdigest(),
            credentials.access_key,
            credentials.secret_key,
            credentials.token,
        )
        return {"X-Amz-Date": amz_date, "Authorization": authorization}

    async def _post_all(self, messages: Messages) -> tuple[int, int, int]:
        import asyncio

        import yarl

        from quanttrade_ws.management_api.sigv4 import quote_segment

        counts = [0, 0, 0]
        pending = iter(messages)

        async def worker() -> None:
            for connection_id, data in pending:
                quoted = quote_segment(connection_id)
                url = yarl.URL(self.base + quoted, encoded=True)
                try:
                    async with self.session.post(url, data=data, headers=self._headers(quoted, data)) as response:
                        await response.read()
                        status = response.status
                except OSError:
                    status = 0
                counts[0 if 200 <= status < 300 else 1 if status == 410 else 2] += 1

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        return counts[0], counts[1], counts[2]

    def post_all(self, messages: Messages) -> tuple[int, int, int]:
        return self.loop.run_until_complete(self._post_all(messages))

    def close(self) -> None:
        self.loop.run_until_complete(self.session.close())
        self.loop.close()


class BotocoreThreads:
    """botocore's own client, one shared by a thread pool: the library way to post in parallel."""

    def __init__(self, endpoint: str, concurrency: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import botocore.config
        import botocore.session

        credentials = _credentials()
        session = botocore.session.get_session()
        self.client: Any = session.create_client(
            "apigatewaymanagementapi",
            region_name=REGION,
            endpoint_url=endpoint,
            aws_access_key_id=credentials.access_key,
            aws_secret_access_key=credentials.secret_key,
            config=botocore.config.Config(max_pool_connections=concurrency, retries={"max_attempts": 1}),
        )
        self.pool = ThreadPoolExecutor(max_workers=concurrency)
        self.concurrency = concurrency

    def _post(self, message: tuple[str, bytes]) -> int:
        from botocore.exceptions import ClientError

        try:
            self.client.post_to_connection(ConnectionId=message[0], Data=message[1])
        except self.client.exceptions.GoneException:
            return 1
        except ClientError:
            return 2
        return 0

    def post_all(self, messages: Messages) -> tuple[int, int, int]:
        counts = [0, 0, 0]
        for outcome in self.pool.map(self._post, messages, chunksize=16):
            counts[outcome] += 1
        return counts[0], counts[1], counts[2]

    def close(self) -> None:
        self.pool.shutdown()
        self.client.close()


FACTORIES: dict[str, Callable[[str, int], Any]] = {
    "hand_written": HandWritten,
    "aiohttp": AiohttpClient,
    "botocore": BotocoreThreads,
}


# ------------------------------------------------------------------ the run


def run(messages: int = 5000, concurrency: int = 64, rounds: int = 3, clients: int = BATCH) -> dict[str, Any]:
    server = ServerProcess("local-gateway", clients, tls=False)
    try:
        endpoint = server.target["endpoint"]
        posts = sample_posts(messages, server.target["connection_ids"])
        warmup = posts[: concurrency * 4]
        instances = {name: FACTORIES[name](endpoint, concurrency) for name in CLIENTS}
        samples: dict[str, list[Outcome]] = {name: [] for name in CLIENTS}
        try:
            for instance in instances.values():
                instance.post_all(warmup)
            for round_number in range(rounds):
                order = CLIENTS[round_number % len(CLIENTS) :] + CLIENTS[: round_number % len(CLIENTS)]
                for name in order:
                    samples[name].append(_timed(instances[name].post_all, posts))
        finally:
            for instance in instances.values():
                instance.close()
    finally:
        server.close()
    return _figures(samples, messages, concurrency, rounds, server.target["kind"])


def _figures(
    samples: dict[str, list[Outcome]], messages: int, concurrency: int, rounds: int, server: str
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    cpu_per_post: dict[str, float] = {}
    for name, outcomes in samples.items():
        per_post = [o["cpu"] / max(o["delivered"] + o["gone"], 1) for o in outcomes]
        median = sorted(range(len(outcomes)), key=lambda i: per_post[i])[len(outcomes) // 2]
        kept = outcomes[median]
        answered = kept["delivered"] + kept["gone"]
        cpu_per_post[name] = 1e6 * per_post[median]
        figures[f"{PREFIX}{name}_cpu_microseconds_per_post"] = round(cpu_per_post[name], 1)
        figures[f"{PREFIX}{name}_cpu_microseconds_per_post_rounds"] = [round(1e6 * p, 1) for p in per_post]
        figures[f"{PREFIX}{name}_posts_per_second"] = round(answered / kept["wall"], 1)
        figures[f"{PREFIX}{name}_delivered"] = int(kept["delivered"])
        figures[f"{PREFIX}{name}_gone"] = int(kept["gone"])
        figures[f"{PREFIX}{name}_failed"] = int(sum(o["failed"] for o in outcomes))
    best_library = min(("aiohttp", "botocore"), key=lambda name: cpu_per_post[name])
    advantage = cpu_per_post[best_library] / cpu_per_post["hand_written"]
    figures[f"{PREFIX}best_library"] = best_library
    figures[f"{PREFIX}hand_written_advantage_over_best_library"] = round(advantage, 2)
    figures[f"{PREFIX}keep_hand_written"] = advantage >= KEEP_IF_AT_LEAST
    figures[f"{PREFIX}rule"] = f"keep the hand-written client only if its CPU per post is >= {KEEP_IF_AT_LEAST}x lower"
    figures[f"{PREFIX}messages_per_round"] = messages
    figures[f"{PREFIX}rounds"] = rounds
    figures[f"{PREFIX}concurrency"] = concurrency
    figures[f"{PREFIX}server"] = server
    return figures


def merge_into_results(figures: dict[str, Any], command: str, described: dict[str, Any], path: Path = RESULTS) -> None:
    """Add this run's keys to the results file, leaving every other benchmark's figures as they are."""
    updates = {f"{PREFIX}command": command, f"{PREFIX}machine": machine.at_end(described), **figures}
    machine.merge_results(path, updates, dropping_prefix=PREFIX)


def _print(figures: dict[str, Any]) -> None:
    print(
        f"{figures[PREFIX + 'messages_per_round']} posts per client and round, concurrency "
        f"{figures[PREFIX + 'concurrency']}, {figures[PREFIX + 'rounds']} rounds (median kept); "
        f"server: {figures[PREFIX + 'server']} (its CPU not counted)"
    )
    print(f"{'client':14}{'CPU us/post':>14}{'posts/s':>12}{'failed':>8}   rounds (CPU us/post)")
    for name in CLIENTS:
        print(
            f"{name:14}{figures[f'{PREFIX}{name}_cpu_microseconds_per_post']:>14,.1f}"
            f"{figures[f'{PREFIX}{name}_posts_per_second']:>12,.1f}{figures[f'{PREFIX}{name}_failed']:>8}   "
            f"{figures[f'{PREFIX}{name}_cpu_microseconds_per_post_rounds']}"
        )
    verdict = "keep it" if figures[PREFIX + "keep_hand_written"] else "replace it"
    print(
        f"hand-written vs best library ({figures[PREFIX + 'best_library']}): "
        f"{figures[PREFIX + 'hand_written_advantage_over_best_library']}x less CPU per post -> {verdict} "
        f"(rule: >= {KEEP_IF_AT_LEAST}x)"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.delivery_clients", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="posts per client and round (5000)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight, every client (64)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, client order rotated each (3)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/results.json alone")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--messages, --concurrency and --rounds must be at least 1")
    described = machine.describe()  # before the run, so its load average is other work's, not ours
    figures = run(args.messages, args.concurrency, args.rounds)
    _print(figures)
    if not args.no_write:
        command = " ".join(["python -m bench.delivery_clients", *(sys.argv[1:] if argv is None else argv)])
        merge_into_results(figures, command, described)
        print(f"merged into {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")
    return figures


if __name__ == "__main__":
    main()
