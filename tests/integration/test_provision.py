"""Provisioning against moto in server mode, and the sample events in events/ against the models that read them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.cloud.assembly import CloudAssembly
from local.cloud.provisioning import Clients, provision
from local.moto_server import MotoServer
from quanttrade_ws import topology
from quanttrade_ws.protocol import KNOWN_ACTIONS, ErrorCode, ProtocolError, parse_client_frame
from quanttrade_ws.upstream import DETAILS_BY_TYPE, parse_upstream_event
from tests.integration import events_builder as eb

EVENTS = Path(__file__).resolve().parents[2] / "events"

# API Gateway samples of message routes: file -> route key
MESSAGE_SAMPLES = {
    "hello.json": "hello",
    "subscribe.json": "subscribe",
    "unsubscribe.json": "unsubscribe",
    "join_room.json": "joinRoom",
    "leave_room.json": "leaveRoom",
    "send_room_message.json": "sendRoomMessage",
    "ping.json": "ping",
    "refresh.json": "refresh",
    "resume.json": "resume",
    "default.json": "$default",
}


def load(*parts: str) -> Any:
    return json.loads((EVENTS.joinpath(*parts)).read_text())


# ---------------------------------------------------------------- provisioning


@pytest.fixture(scope="module")
def provisioned(assembly: CloudAssembly) -> Iterator[tuple[MotoServer, str, str, list[str]]]:
    """moto with the template's resources; the bus name, the events queue and every queue a rule feeds
    (the events queue, and the market-data pipe's ingest queue: no pipe runs here)."""
    server = MotoServer(port=0).start()
    deployment = provision(assembly.template, Clients.from_factory(server.client))
    # The alerting rule: a source without a pipe, whose target is the events queue itself.
    rule = next(
        rule
        for rule in assembly.template.rules.values()
        if rule.event_pattern and rule.event_pattern["source"] == ["quanttrade.alerting"]
    )
    fed = {t.target_logical_id for r in assembly.template.rules.values() if r.event_pattern for t in r.targets}
    yield (
        server,
        deployment.ref(rule.bus_logical_id),
        deployment.ref(rule.targets[0].target_logical_id),
        [deployment.ref(logical_id) for logical_id in sorted(fed)],
    )
    server.stop()


def test_a_published_event_reaches_the_events_queue_in_its_source_group(provisioned: Any) -> None:
    server, bus, events_queue, _ = provisioned
    sample = load("eventbridge", "alert.json")
    server.client("events").put_events(
        Entries=[
            {
                "Source": sample["source"],
                "DetailType": sample["detail-type"],
                "Detail": json.dumps(sample["detail"]),
                "EventBusName": bus,
            }
        ]
    )
    sqs = server.client("sqs")
    response = sqs.receive_message(
        QueueUrl=events_queue,
        WaitTimeSeconds=5,
        MessageSystemAttributeNames=["MessageGroupId"],
    )
    (message,) = response["Messages"]
    assert message["Attributes"]["MessageGroupId"] == "alerting"
    assert parse_upstream_event(json.loads(message["Body"])).detail.stream == "alerts:TSLA"
    sqs.delete_message(QueueUrl=events_queue, ReceiptHandle=message["ReceiptHandle"])


# ---------------------------------------------------------------- sample events


def test_there_is_one_eventbridge_sample_per_detail_type() -> None:
    samples = {load("eventbridge", p.name)["detail-type"] for p in (EVENTS / "eventbridge").glob("*.json")}
    assert samples == set(DETAILS_BY_TYPE) == {s.detail_type for s in topology.SOURCES}


@pytest.mark.parametrize("path", sorted((EVENTS / "eventbridge").glob("*.json")), ids=lambda p: p.name)
def test_every_eventbridge_sample_is_a_valid_upstream_event(path: Path) -> None:
    event = json.loads(path.read_text())
    assert set(event) == {"version", "id", "detail-type", "source", "account", "time", "region", "resources", "detail"}
    parsed = parse_upstream_event(event)
    source = next(s for s in topology.SOURCES if s.detail_type == event["detail-type"])
    assert event["source"] == source.source
    assert parsed.detail.stream.split(":")[0] == source.stream_type


@pytest.mark.parametrize(("sample", "route"), sorted(MESSAGE_SAMPLES.items()))
def test_every_message_sample_parses_for_its_route(sample: str, route: str) -> None:
    event = load("apigateway", sample)
    context = event["requestContext"]
    assert context["routeKey"] == route
    assert context["eventType"] == "MESSAGE"
    assert topology.ROUTES[route] is topology.MESSAGE
    if route == "$default":
        # $default gets every frame whose action has no route: the parser names it an unknown action.
        with pytest.raises(ProtocolError) as refused:
            parse_client_frame(event["body"])
        assert refused.value.code is ErrorCode.UNKNOWN_ACTION
    else:
        frame = parse_client_frame(event["body"])
        assert frame.action == route


def test_every_action_has_a_message_sample() -> None:
    assert set(KNOWN_ACTIONS) == set(topology.ACTIONS) == set(MESSAGE_SAMPLES.values()) - {"$default"}


def test_connect_disconnect_and_authorizer_samples_have_their_shapes() -> None:
    connect = load("apigateway", "connect.json")
    assert connect["requestContext"]["routeKey"] == "$connect"
    assert connect["requestContext"]["eventType"] == "CONNECT"
    assert connect["requestContext"]["authorizer"]["principalId"]
    disconnect = load("apigateway", "disconnect.json")
    assert disconnect["requestContext"]["eventType"] == "DISCONNECT"
    assert isinstance(disconnect["requestContext"]["disconnectStatusCode"], int)
    authorizer = load("apigateway", "authorizer.json")
    assert authorizer["type"] == "REQUEST"
    assert authorizer["methodArn"].endswith("/$connect")
    assert authorizer["queryStringParameters"]["token"]


@pytest.mark.parametrize(
    ("sample", "queue"),
    [("sqs_batch_events.json", topology.EVENTS_QUEUE), ("sqs_batch_delivery.json", topology.DELIVERY_QUEUE)],
)
def test_sqs_samples_are_lambda_batches_from_their_queue(sample: str, queue: topology.Queue) -> None:
    records = load("sqs", sample)["Records"]
    assert 1 <= len(records) <= next(f.batch_size for f in topology.FUNCTIONS if f.consumes is queue)
    for record in records:
        assert record["eventSource"] == "aws:sqs"
        assert record["eventSourceARN"].endswith(f":quanttrade-{queue.logical_id}.fifo")
        assert {"MessageGroupId", "SequenceNumber", "ApproximateReceiveCount"} <= set(record["attributes"])
        body = json.loads(record["body"])
        if queue is topology.EVENTS_QUEUE:
            parse_upstream_event(body)
        else:
            assert isinstance(body["data"], str) and body["connections"]


# ---------------------------------------------------------------- the market simulator


def test_the_simulator_publishes_valid_events_of_every_kind_within_put_events_limits(provisioned: Any) -> None:
    from local.simulator import MAX_ENTRIES_PER_CALL, MarketSimulator

    server, bus, _, fed_queues = provisioned
    simulator = MarketSimulator(lambda: server.client("events"), rate=6.0, seed=7, event_bus_name=bus)
    entries = [entry for second in range(600) for entry in simulator.entries_for(1.0, now=1_800_000_000.0 + second)]
    sources = {s.detail_type: s.source for s in topology.SOURCES}
    assert {entry["DetailType"] for entry in entries} == set(sources)
    for entry in entries:
        assert entry["Source"] == sources[entry["DetailType"]]
        assert entry["EventBusName"] == bus
        parse_upstream_event(eb.eventbridge_event(entry["DetailType"], json.loads(entry["Detail"])))
    ticks = [json.loads(e["Detail"]) for e in entries if e["DetailType"] == "MarketData"]
    assert len(ticks) == 3600  # 6 a second
    assert all(t["bid"] < t["ask"] and t["bid"] <= t["price"] <= t["ask"] for t in ticks)

    # Published for real: 23 entries go out as three PutEvents calls and all reach the queues the rules feed.
    batch = entries[:23]
    assert MAX_ENTRIES_PER_CALL == 10
    assert simulator.publish(batch) == 23
    sqs = server.client("sqs")
    arrived = 0
    for url in fed_queues:
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        arrived += int(attributes["Attributes"]["ApproximateNumberOfMessages"])
        sqs.purge_queue(QueueUrl=url)
    assert arrived == 23
