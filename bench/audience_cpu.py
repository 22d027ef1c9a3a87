"""The fan-out's own CPU per audience row: what reading a large audience costs the function.

The real `EventFanOut.process_events` and `DynamoStore` against moto in server
mode (a process of its own, so its CPU is not counted), with 1,000 and then
10,000 subscribers of one stream and no audience cache: the difference of the
two, per row, is what the function spends reading, typing and filtering each
subscription (the AWS model charges it, scaled to a Lambda's share of a core).
Delivery is in memory, and above the chunk size the audience goes to an
in-memory delivery queue, so posting is not counted here.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

SIZES = (1_000, 10_000)
REPEATS = 7
STREAM = "market_data:AAPL"


def _subscribe(client: Any, table: str, start: int, stop: int) -> None:
    """Subscription rows as the store writes them, in bulk."""
    from bench.dynamodb_work import put_rows

    row = {"stream_key": {"S": STREAM}, "token_expires_at": {"N": "0"}, "latest_only": {"BOOL": False}}
    put_rows(
        client,
        [
            (table, {**row, "connection_id": {"S": f"c{index:06d}AbCdEfGh="}, "user_id": {"S": f"user-{index}"}})
            for index in range(start, stop)
        ],
    )


def run() -> dict[str, Any]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    from bench.dynamodb_work import market_data_record
    from local.fakes import CountingMetrics, InMemoryGateway, InMemorySender
    from local.moto_server import MotoServer
    from quanttrade_ws.config import Settings
    from quanttrade_ws.fanout import EventFanOut
    from quanttrade_ws.store.dynamo_store import DynamoStore
    from tests.provision import provision

    with MotoServer(port=0) as moto:
        clients = {name: moto.client(name) for name in ("dynamodb", "sqs", "events")}
        settings, _ = provision(
            clients["dynamodb"],
            clients["sqs"],
            clients["events"],
            Settings(jwt_secret="bench", session_secret="bench-session", subscriber_cache_seconds=0),
        )
        fanout = EventFanOut(
            settings,
            DynamoStore(settings, clients["dynamodb"]),
            InMemoryGateway(),
            InMemorySender(),
            lambda _connection_id: None,
            CountingMetrics(),
        )
        cpu_ms: dict[int, float] = {}
        subscribed = 0
        for size in SIZES:
            _subscribe(clients["dynamodb"], settings.subscriptions_table, subscribed, size)
            subscribed = size
            samples = []
            for index in range(REPEATS):
                started = time.process_time()
                fanout.process_events([market_data_record("AAPL", index)])
                samples.append(time.process_time() - started)
            cpu_ms[size] = statistics.median(samples) * 1000
    small, large = SIZES
    return {
        f"fanout_event_cpu_{small}_subscribers_ms": round(cpu_ms[small], 1),
        f"fanout_event_cpu_{large}_subscribers_ms": round(cpu_ms[large], 1),
        "fanout_cpu_microseconds_per_audience_row": round((cpu_ms[large] - cpu_ms[small]) * 1000 / (large - small), 1),
    }


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:50} {value}")
