"""The template's EventBridge Pipe on moto behind the front door: market data reaches the FIFO events
queue in its symbol's message group, moved by the pipe's role."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from local.aws_front_door.server import AwsFrontDoor
from local.cloud.assembly import CloudAssembly
from local.cloud.deployment import Deployment
from local.cloud.provisioning import Clients, provision
from local.moto_server import MotoServer
from local.pipes import PIPE_POLLERS, PipePump, pipe_pumps
from local.principals import Principals
from quanttrade_ws import topology
from quanttrade_ws.upstream import parse_upstream_event
from tests.integration import events_builder as eb


@pytest.fixture(scope="module")
def cloud(assembly: CloudAssembly) -> Iterator[tuple[MotoServer, Deployment, AwsFrontDoor]]:
    server = MotoServer(port=0).start()
    deployment = provision(assembly.template, Clients.from_factory(server.client))
    door = AwsFrontDoor(server.endpoint_url, Principals(deployment.account), region=deployment.region).start()
    yield server, deployment, door
    door.stop()
    server.stop()


@pytest.fixture
async def pipe(cloud: tuple[MotoServer, Deployment, AwsFrontDoor]) -> AsyncIterator[PipePump]:
    _, deployment, door = cloud
    (pump,) = pipe_pumps(
        deployment.template, deployment, door.principals, endpoint_url=door.endpoint_url, region=deployment.region
    )
    pump.start()
    yield pump
    await pump.stop()


def queue_url(deployment: Deployment, declared: topology.Queue) -> str:
    # CDK's logical id: the construct path and an 8 hex digit hash (so EventsQueue is not EventsQueueDlq).
    (logical_id,) = [
        q for q in deployment.template.queues if re.fullmatch(f"FanOut{declared.logical_id}[0-9A-F]{{8}}", q)
    ]
    return deployment.ref(logical_id)


# Generous: a loaded 2-core machine (moto, the front door and the pump in one process) can be slow.
async def receive_all(sqs: Any, url: str, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out with {len(got)} of {count} messages on {url}")
        response = await asyncio.to_thread(
            sqs.receive_message,
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            MessageSystemAttributeNames=["MessageGroupId", "MessageDeduplicationId"],
        )
        for message in response.get("Messages", []):
            got.append(message)
            await asyncio.to_thread(sqs.delete_message, QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return got


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_market_data_reaches_the_events_queue_in_its_symbols_group(
    cloud: tuple[MotoServer, Deployment, AwsFrontDoor], pipe: PipePump
) -> None:
    # GIVEN the stack's bus, rules, ingest queue and pipe, deployed from the template
    server, deployment, _ = cloud
    bus = deployment.outputs()["EventBusName"]
    events_queue = queue_url(deployment, topology.EVENTS_QUEUE)

    # WHEN upstream puts ticks of two symbols and an alert on the bus
    entries = [
        {"Source": "quanttrade.market-data", "DetailType": "MarketData", "Detail": json.dumps(detail)}
        for detail in (eb.market_data("AAPL")["detail"], eb.market_data("MSFT")["detail"])
    ]
    alert = eb.alert()
    entries.append({"Source": alert["source"], "DetailType": "Alert", "Detail": json.dumps(alert["detail"])})
    await asyncio.to_thread(
        server.client("events").put_events, Entries=[{**entry, "EventBusName": bus} for entry in entries]
    )

    # THEN each tick is in its symbol's group, deduplicated by its event id, its body the EventBridge event;
    # the alert came straight from its rule, in its source's group
    messages = await receive_all(server.client("sqs"), events_queue, 3)
    by_group = {m["Attributes"]["MessageGroupId"]: m for m in messages}
    assert set(by_group) == {"AAPL", "MSFT", "alerting"}
    for symbol in ("AAPL", "MSFT"):
        event = parse_upstream_event(json.loads(by_group[symbol]["Body"]))
        assert event.detail.stream == f"market_data:{symbol}"
        assert by_group[symbol]["Attributes"]["MessageDeduplicationId"] == event.id
    # (a poller counts a move once it has deleted it from the source, a moment after the send)
    await eventually(lambda: pipe.stats.moved == 2, "the pipe to count both moves")
    assert pipe.stats.unresolved == 0
    # AND the pipe signed as its role: the front door saw its calls under the pipe's name
    assert cloud[2].call_counts()[pipe.name]["sqs:SendMessageBatch"] >= 1


async def test_a_tick_without_a_symbol_stays_on_the_ingest_queue_for_its_dlq(
    cloud: tuple[MotoServer, Deployment, AwsFrontDoor], pipe: PipePump
) -> None:
    # GIVEN the pipe, and a message on the ingest queue whose event has no detail.symbol
    server, deployment, _ = cloud
    sqs = server.client("sqs")
    ingest = queue_url(deployment, topology.MARKET_DATA_INGEST_QUEUE)
    event = eb.market_data("AAPL")
    del event["detail"]["symbol"]
    await asyncio.to_thread(sqs.send_message, QueueUrl=ingest, MessageBody=json.dumps(event))

    # WHEN the pipe receives it
    await eventually(lambda: pipe.stats.unresolved >= 1, "the pipe to leave the message on the ingest queue")

    # THEN it is not sent on: it stays in flight on the ingest queue (its redrive policy will dead-letter it)
    attributes = sqs.get_queue_attributes(QueueUrl=ingest, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
    assert attributes["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "1"
    assert "$.body.detail.symbol" in (pipe.stats.last_error or "")


async def test_several_pollers_move_batches_at_once_and_every_tick_arrives_once(
    cloud: tuple[MotoServer, Deployment, AwsFrontDoor],
) -> None:
    # GIVEN the pipe, whose first two moves only get through if they run at the same time,
    # and 40 ticks of 20 symbols on its ingest queue
    server, deployment, door = cloud
    (pump,) = pipe_pumps(
        deployment.template, deployment, door.principals, endpoint_url=door.endpoint_url, region=deployment.region
    )
    barrier = threading.Barrier(2, timeout=10)
    moves = itertools.count()
    move = pump.move

    def move_after_meeting(messages: list[dict[str, Any]], poller: int) -> None:
        if next(moves) < 2:
            barrier.wait()  # raises BrokenBarrierError if no other move comes meanwhile
        move(messages, poller)

    pump.move = move_after_meeting  # type: ignore[method-assign,assignment]
    sqs = server.client("sqs")
    ingest = queue_url(deployment, topology.MARKET_DATA_INGEST_QUEUE)
    ticks = [eb.market_data(f"SYM{n % 20}") for n in range(40)]
    for start in range(0, len(ticks), 10):
        entries = [{"Id": str(i), "MessageBody": json.dumps(tick)} for i, tick in enumerate(ticks[start : start + 10])]
        await asyncio.to_thread(sqs.send_message_batch, QueueUrl=ingest, Entries=entries)

    # WHEN the pipe runs
    pump.start()
    try:
        messages = await receive_all(sqs, queue_url(deployment, topology.EVENTS_QUEUE), len(ticks))
    finally:
        await pump.stop()  # each poller finishes its move (the send's delete and count)

    # THEN every tick reached the events queue once, in its symbol's group, moved by several pollers at once
    assert sorted(m["Attributes"]["MessageDeduplicationId"] for m in messages) == sorted(t["id"] for t in ticks)
    assert {m["Attributes"]["MessageGroupId"] for m in messages} == {f"SYM{n}" for n in range(20)}
    stats = pump.stats.as_dict()
    assert stats["pollers"] == PIPE_POLLERS
    assert stats["peak_in_flight"] >= 2
    assert stats["moved"] == len(ticks)


def test_a_pipe_whose_role_may_not_read_its_source_fails_the_start(
    cloud: tuple[MotoServer, Deployment, AwsFrontDoor],
) -> None:
    # GIVEN the deployed template, with the pipe role's source permissions taken away
    _, deployment, door = cloud
    (role_id,) = {pipe.role_logical_id for pipe in deployment.template.pipes.values()}
    documents = deployment.role_documents(role_id)
    for document in documents:
        document["Statement"] = [s for s in document["Statement"] if "sqs:ReceiveMessage" not in s["Action"]]

    class Narrowed(Deployment):
        def role_documents(self, role_logical_id: str) -> list[dict[str, Any]]:
            return documents

    narrowed = Narrowed(
        template=deployment.template,
        region=deployment.region,
        physical_ids=deployment.physical_ids,
        attributes=deployment.attributes,
    )

    # WHEN the pipes start THEN the start fails, naming the pipe and the refusal
    with pytest.raises(RuntimeError, match=r"MarketDataPipe.*(AccessDenied|not authorized)"):
        pipe_pumps(deployment.template, narrowed, door.principals, endpoint_url=door.endpoint_url, region="us-east-1")
