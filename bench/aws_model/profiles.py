"""Latencies and quotas of AWS and of the local stack, the environments the model runs in.

Sources of every figure: bench/README.md ("Sources of the latencies and quotas").
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

Z99 = 2.326  # standard normal quantile of 0.99


@dataclass(frozen=True)
class Latency:
    """A log-normal latency given by its median and 99th percentile, in seconds."""

    p50: float
    p99: float

    @property
    def sigma(self) -> float:
        return math.log(self.p99 / self.p50) / Z99 if self.p99 > self.p50 > 0 else 0.0

    def sample(self, rng: random.Random) -> float:
        sigma = self.sigma
        return self.p50 * math.exp(sigma * rng.gauss(0.0, 1.0)) if sigma else self.p50


def ms(p50: float, p99: float) -> Latency:
    return Latency(p50 / 1000, p99 / 1000)


@dataclass(frozen=True)
class Profile:
    """Latencies and quotas of one environment (AWS, or the local stack). Sources: bench/README.md."""

    name: str
    put_events: Latency  # the publisher's PutEvents call
    eventbridge_delivery: Latency  # rule match to the message being in the queue
    pipe_hop: Latency  # EventBridge Pipes: ingest queue to the FIFO queue (symbol groups only)
    sqs_send: Latency
    sqs_receive: Latency  # event source mapping: message available -> batch in hand
    sqs_delete: Latency
    invoke: Latency  # event source mapping -> handler running (warm)
    cold_start: Latency  # init of a new execution environment (runtime + handler import)
    dynamodb_get: Latency
    dynamodb_transact: Latency
    dynamodb_query: Latency  # one page, plus query_seconds_per_item for each item returned
    query_seconds_per_item: float
    query_rows_per_page: int  # a Query page is at most 1 MB of rows read
    # The function's own CPU per row a Query returns: read, typed and filtered into the audience. Per event
    # it grows with the audience, and the fan-out spends it before any chunk of the event goes out.
    row_cpu_seconds: float
    post: Latency  # a Management API POST from the function, answered
    throttled_post: Latency  # a 429 answer
    post_cpu_seconds: float  # CPU of the function's event loop per post attempt
    event_cpu_seconds: float  # CPU per record outside posting (parse, render, audience)
    management_rate: float  # calls per second per account and region
    management_burst: float  # token bucket depth
    fifo_send_tps: float  # SendMessage(Batch) calls per second per FIFO queue (not high throughput)
    fifo_ht_send_tps_per_group: float  # high-throughput FIFO: per message group (one partition)
    partition_wcu: float
    partition_rcu: float
    account_concurrency: int
    standard_initial_batches: int
    standard_scale_per_minute: int
    standard_max_batches: int
    kinesis_poll_interval: float  # a shard's idle poll interval (standard iterator)
    lambda_ms_billing: bool = True


AWS = Profile(
    name="aws",
    put_events=ms(15, 60),
    eventbridge_delivery=ms(60, 250),
    pipe_hop=ms(40, 150),
    sqs_send=ms(8, 30),
    sqs_receive=ms(15, 60),
    sqs_delete=ms(8, 30),
    invoke=ms(5, 20),
    cold_start=ms(350, 900),
    dynamodb_get=ms(4, 12),
    dynamodb_transact=ms(10, 30),
    dynamodb_query=ms(5, 15),
    query_seconds_per_item=0.000004,  # ~1 MB page (about 8,000 rows of this table) in ~30 ms
    query_rows_per_page=8_000,
    row_cpu_seconds=0.000021,  # 12 us measured on the x86 bench machine (bench.audience_cpu), / 0.58 vCPU of 1 GB
    post=ms(25, 80),
    throttled_post=ms(5, 20),
    post_cpu_seconds=0.000064,  # 36.9 us measured on the x86 bench machine, / 0.58 vCPU of 1 GB
    event_cpu_seconds=0.0005,
    management_rate=10_000.0,
    management_burst=5_000.0,
    fifo_send_tps=300.0,
    fifo_ht_send_tps_per_group=300.0,
    partition_wcu=1000.0,
    partition_rcu=3000.0,
    account_concurrency=1000,
    standard_initial_batches=5,
    standard_scale_per_minute=300,
    standard_max_batches=1000,
    kinesis_poll_interval=1.0,
)

# The local stack. Its fixed parts are this machine's measurements (bench/front-door-results.json): every
# DynamoDB call goes through the SigV4/IAM front door to moto (8.1 ms p50, 12.0 ms p95); the events pump's
# lag is 3.1 ms; a post is answered in 64 / 9,766 s at 64 in flight. The two figures that move with every
# change to the local stack, the audience Query and the stack interpreter's CPU per delivery, come from the
# run being checked (`local_profile`); the values here are those of the `make bench` run at 81f7b38.
LOCAL = replace(
    AWS,
    name="local",
    put_events=ms(8.1, 12.0),
    eventbridge_delivery=ms(8.1, 12.0),
    sqs_send=ms(8.1, 12.0),
    sqs_receive=ms(3.1, 5.0),
    sqs_delete=ms(8.1, 12.0),
    invoke=ms(1.0, 2.0),
    cold_start=ms(0.0, 0.0),
    dynamodb_get=ms(8.1, 12.0),
    dynamodb_transact=ms(8.1, 12.0),
    dynamodb_query=ms(8.1, 12.0),
    query_seconds_per_item=0.0000866,  # measured whole, the client's CPU per row included
    row_cpu_seconds=0.0,
    post=ms(6.6, 10.0),
    throttled_post=ms(6.6, 10.0),
    post_cpu_seconds=0.00043,
    event_cpu_seconds=0.0,
    management_rate=1e9,  # the end-to-end bench lifts the emulated quota
    management_burst=1e9,
)

# What `bench.end_to_end` measures of the local stack in the run it reports (bench/results.json): the
# stack process's CPU per 1,000 deliveries (the gateway's one interpreter posts every frame, so it bounds the
# posting rate as the function's event loop does on AWS), and moto's answer to the 1,000-row audience Query.
STACK_CPU_PER_1000_DELIVERIES = "end_to_end_1000_stack_cpu_seconds_per_1000_deliveries"
AUDIENCE_QUERY_MS = "end_to_end_1000_moto_subscriber_query_ms"
AUDIENCE_QUERY_ROWS = 1000


def local_profile(measured: Mapping[str, Any]) -> Profile:
    """LOCAL with the audience Query and the CPU per delivery that the local run in `measured` measured.

    Both change whenever the local stack does (a faster moto Query, a leaner gateway), so a check against a
    run uses that run's own figures rather than constants that were true of an older stack.
    """
    missing = [key for key in (STACK_CPU_PER_1000_DELIVERIES, AUDIENCE_QUERY_MS) if measured.get(key) is None]
    if missing:
        raise ValueError(f"the local run's results lack {', '.join(missing)}: run `python -m bench end_to_end`")
    return replace(
        LOCAL,
        post_cpu_seconds=measured[STACK_CPU_PER_1000_DELIVERIES] / 1000,
        query_seconds_per_item=measured[AUDIENCE_QUERY_MS] / 1000 / AUDIENCE_QUERY_ROWS,
    )
