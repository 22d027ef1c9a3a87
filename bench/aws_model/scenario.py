"""One scenario: the simulated stack wired around the real `EventFanOut`, events published, run to the end."""

from __future__ import annotations

import functools
import json
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bench.aws_model.deliveries import Deliveries, EventRecord
from bench.aws_model.designs import DESIGNS, SIX_ATTEMPTS_DELIVERY_CAP, THROTTLE_DEADLINE, VARIANT
from bench.aws_model.dynamodb import SimDynamoDB
from bench.aws_model.lambda_function import LambdaFunction
from bench.aws_model.management_api import ManagementApi, SimGateway
from bench.aws_model.profiles import AWS, LOCAL, Profile
from bench.aws_model.scheduler import Sim
from bench.aws_model.sqs import SimQueue, SimSender
from bench.aws_model.tally import Tally
from bench.aws_model.token_bucket import TokenBucket
from local.fakes import CountingMetrics
from quanttrade_ws import topology
from quanttrade_ws.config import Settings
from quanttrade_ws.fanout import EventFanOut
from quanttrade_ws.store.dynamo_store import DynamoStore
from quanttrade_ws.store.tables import Backoff

EPOCH = 1_800_000_000.0  # wall clock of simulated time 0 (tokens never expire in the model)


@dataclass(frozen=True)
class Scenario:
    audience: int
    rate: float  # events per second offered
    symbols: int
    events: int  # how many events are published
    design: str = "source_group"
    profile: str = "aws"
    seed: int = 7
    keep_latencies: bool = False
    # The delivery queue mapping's MaximumConcurrency, as the stack declares it (None: uncapped).
    delivery_concurrency: int | None = topology.DELIVERY.max_concurrency
    throttle_deadline: float | None = None  # SimGateway.throttle_deadline
    # Execution environments initialised before the first event (provisioned concurrency), per function.
    warm_fanout: int = 0
    warm_delivery: int = 0


@dataclass
class Outcome:
    scenario: Scenario
    tally: Tally
    events: list[EventRecord]
    latencies: list[float] | None
    simulated_seconds: float
    wall_seconds: float
    events_queue_peak_backlog: int
    delivery_queue_peak_backlog: int

    def complete(self) -> list[EventRecord]:
        return [e for e in self.events if e.delivered >= e.audience]

    def times_to_last(self) -> list[float]:
        return sorted(e.last_delivery - e.published_at for e in self.complete())


def run_scenario(scenario: Scenario, horizon: float = 3600.0, profile: Profile | None = None) -> Outcome:
    """Publish `scenario.events` events at `scenario.rate` and run until every one is delivered (or `horizon`).

    `profile` replaces the one `scenario.profile` names (the local profile of a particular run).
    """
    wall = time.perf_counter()
    if profile is None:
        profile = AWS if scenario.profile == "aws" else LOCAL
    design = DESIGNS[scenario.design.removesuffix(VARIANT)]
    sim = Sim(scenario.seed)
    tally = Tally()
    deliveries = Deliveries(tally, scenario.keep_latencies)
    audiences = {f"market_data:S{index}": scenario.audience for index in range(scenario.symbols)}
    settings = Settings(
        delivery_queue_url="delivery.fifo",
        events_dlq_url="events-dlq.fifo",
        jwt_secret="the-model-signs-no-token-but-settings-need-a-key",
        session_secret="the-model-resumes-no-session-but-settings-need-one",
    )
    dynamodb = SimDynamoDB(sim, profile, tally, lambda key: audiences.get(key, 0))
    api = ManagementApi(profile)
    gateway = SimGateway(sim, profile, api, deliveries, settings)
    gateway.throttle_deadline = scenario.throttle_deadline
    queues: dict[str, SimQueue] = {}
    sender = SimSender(sim, profile, tally, queues)

    def store_for() -> DynamoStore:
        return DynamoStore(settings, client=dynamodb, clock=lambda: EPOCH + sim.now, backoff=Backoff(sleep=sim.sleep))

    def fanout_of(function: LambdaFunction) -> EventFanOut:
        # One EventFanOut per function, as one warm module state: its audience cache is shared by the
        # function's environments here, which at most makes Query counts optimistic for hot streams.
        if function.fanout is None:
            function.fanout = EventFanOut(
                settings,
                store_for(),
                gateway,
                sender,
                remove_connection=lambda _cid: None,
                metrics=CountingMetrics(),
                clock=lambda: EPOCH + sim.now,
                monotonic=lambda: sim.now,
            )
        return function.fanout

    fanout_fn = LambdaFunction(sim, profile, tally, "fanout", topology.FANOUT.memory_mb / 1024)
    delivery_fn = LambdaFunction(sim, profile, tally, "delivery", topology.DELIVERY.memory_mb / 1024)
    fanout_fn.idle, delivery_fn.idle = scenario.warm_fanout, scenario.warm_delivery
    events_kind = design.queue
    events_queue = SimQueue(
        sim,
        profile,
        tally,
        "events",
        events_kind,
        fanout_fn,
        lambda records: fanout_of(fanout_fn).process_events(records),
        topology.FANOUT.batch_size,
        topology.EVENTS_QUEUE.visibility_timeout_seconds,
        max_concurrency=(design.kinesis_shards * design.kinesis_parallelization)
        if design.queue == "kinesis"
        else design.max_concurrency,
    )
    delivery_queue = SimQueue(
        sim,
        profile,
        tally,
        "delivery",
        "fifo",
        delivery_fn,
        lambda records: fanout_of(delivery_fn).process_chunks(records),
        topology.DELIVERY.batch_size,
        topology.DELIVERY_QUEUE.visibility_timeout_seconds,
        max_concurrency=scenario.delivery_concurrency,
    )
    queues[settings.delivery_queue_url] = delivery_queue
    queues[settings.events_dlq_url] = SimQueue(
        sim, profile, tally, "dlq", "standard", delivery_fn, lambda r: {}, 10, 60, max_concurrency=0
    )
    ingest = TokenBucket(profile.fifo_send_tps, profile.fifo_send_tps)
    group_ingest: dict[str, TokenBucket] = {}
    kinesis_lanes = design.kinesis_shards * design.kinesis_parallelization

    def group_of(symbol: str) -> str:
        if design.group_by == "source":
            return topology.SOURCES[0].message_group
        if design.queue == "kinesis":
            return f"lane{hash_symbol(symbol) % kinesis_lanes}"
        return f"market_data:{symbol}"

    def publish(index: int) -> None:
        symbol = f"S{sim.rng.randrange(scenario.symbols)}" if scenario.symbols > 1 else "S0"
        event_id = f"evt-{index}"
        deliveries.events[event_id] = EventRecord(event_id, symbol, sim.now, scenario.audience)
        body = json.dumps(_market_data_event(event_id, symbol, EPOCH + sim.now))
        tally.eventbridge_events += 1
        delay = profile.put_events.sample(sim.rng) + profile.eventbridge_delivery.sample(sim.rng)
        group = group_of(symbol)
        if design.via_pipe:
            delay += profile.pipe_hop.sample(sim.rng)
            tally.pipe_requests += 1
            tally.sqs_requests += 2  # the ingest queue's send and the pipe's receive/delete
        if design.queue == "fifo":
            # EventBridge sends one SendMessage per event: a FIFO queue's send quota is per call.
            if design.high_throughput:
                bucket = group_ingest.get(group)
                if bucket is None:
                    bucket = group_ingest[group] = TokenBucket(
                        profile.fifo_ht_send_tps_per_group, profile.fifo_ht_send_tps_per_group
                    )
            else:
                bucket = ingest
            wait = bucket.wait(sim.now + delay)
            tally.send_wait += wait
            delay += wait
        tally.sqs_requests += 1
        sim.at(sim.now + delay, lambda: events_queue.enqueue(body, group))

    for index in range(scenario.events):
        sim.at(index / scenario.rate, functools.partial(publish, index))
    sim.run(until=horizon)
    events = list(deliveries.events.values())
    return Outcome(
        scenario,
        tally,
        events,
        deliveries.latencies,
        sim.now,
        time.perf_counter() - wall,
        events_queue.peak_backlog,
        delivery_queue.peak_backlog,
    )


def hash_symbol(symbol: str) -> int:
    return zlib.crc32(symbol.encode())


def _market_data_event(event_id: str, symbol: str, now: float) -> dict[str, Any]:
    stamp = datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")
    return {
        "version": "0",
        "id": event_id,
        "detail-type": "MarketData",
        "source": "quanttrade.market-data",
        "account": "123456789012",
        "time": stamp,
        "region": "us-east-1",
        "resources": [],
        "detail": {"symbol": symbol, "price": 101.25, "volume": 1200, "timestamp": stamp},
    }


def make_scenario(audience: int, rate: float, symbols: int, events: int, design: str) -> Scenario:
    """A scenario of the grid; a design with VARIANT retries 429s to the deadline, delivery capped as shipped."""
    if design.endswith(VARIANT):
        return Scenario(audience, rate, symbols, events, design, throttle_deadline=THROTTLE_DEADLINE)
    return Scenario(audience, rate, symbols, events, design, delivery_concurrency=SIX_ATTEMPTS_DELIVERY_CAP)
