"""The moto server the local stack runs sends to a queue without counting its backlog, and still counts
for GetQueueAttributes and validates FIFO sends as SQS does."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from local.moto_server import MotoServer


@contextlib.contextmanager
def visibility_checks() -> Iterator[list[str]]:
    """The ids of the messages whose visibility moto checks meanwhile (each pass over a queue checks every one)."""
    from moto.sqs.models import Message

    looked_at: list[str] = []
    original = Message.visible

    def spy(message: Any) -> bool:
        looked_at.append(message.id)
        return bool(original.fget(message))  # type: ignore[misc]

    Message.visible = property(spy)  # type: ignore[method-assign,assignment]
    try:
        yield looked_at
    finally:
        Message.visible = original  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def sqs() -> Iterator[Any]:
    server = MotoServer(port=0, ttl_sweep_seconds=None).start()
    try:
        yield server.client("sqs")
    finally:
        server.stop()


def test_sends_to_a_fifo_queue_are_validated_and_counted_as_before(sqs: Any) -> None:
    # GIVEN a FIFO queue without content-based deduplication, holding a backlog
    url = sqs.create_queue(QueueName="backlog.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    for n in range(50):
        sqs.send_message(QueueUrl=url, MessageBody=f"m{n}", MessageGroupId="g", MessageDeduplicationId=f"d{n}")
    sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=300)

    # WHEN a send lacks its group id or its deduplication id
    with pytest.raises(ClientError) as no_group:
        sqs.send_message(QueueUrl=url, MessageBody="x", MessageDeduplicationId="dx")
    with pytest.raises(ClientError) as no_dedupe:
        sqs.send_message(QueueUrl=url, MessageBody="x", MessageGroupId="g")
    # AND a send repeats a deduplication id
    sqs.send_message(QueueUrl=url, MessageBody="again", MessageGroupId="g", MessageDeduplicationId="d0")

    # THEN both are refused as SQS refuses them, the duplicate is dropped, and the counts are the backlog's
    assert no_group.value.response["Error"]["Code"] in ("MissingParameter", "MissingRequiredParameter")
    assert no_dedupe.value.response["Error"]["Code"] == "InvalidParameterValue"
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "40"
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "10"


def test_a_send_alone_or_in_a_batch_does_not_look_at_every_message_of_the_backlog() -> None:
    # GIVEN moto's SQS as the local stack patches it, in this process, and a queue holding a backlog
    from moto import mock_aws

    from local import moto_sqs

    moto_sqs.patch()
    with mock_aws():
        import boto3

        client = boto3.client("sqs", region_name="us-east-1")
        url = client.create_queue(QueueName="q.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
        for n in range(20):
            client.send_message(QueueUrl=url, MessageBody=f"m{n}", MessageGroupId="g", MessageDeduplicationId=f"{n}")
        with visibility_checks() as looked_at:
            # WHEN one more message is sent
            client.send_message(QueueUrl=url, MessageBody="m", MessageGroupId="g", MessageDeduplicationId="new")
            during_send = len(looked_at)
            # AND a batch of two more (as a pipe sends to its target)
            entries = [
                {"Id": str(n), "MessageBody": f"b{n}", "MessageGroupId": "g", "MessageDeduplicationId": f"b{n}"}
                for n in range(2)
            ]
            sent = client.send_message_batch(QueueUrl=url, Entries=entries)
            during_batch = len(looked_at) - during_send
            # AND the attributes are asked for
            attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]

    # THEN neither send looked at any message's visibility; the attributes request counted them all
    assert during_send == 0
    assert during_batch == 0
    assert len(sent["Successful"]) == 2
    assert len(looked_at) >= 23
    assert attributes["ApproximateNumberOfMessages"] == "23"


def test_deleting_a_message_twice_still_succeeds(sqs: Any) -> None:
    # GIVEN a message received and deleted
    url = sqs.create_queue(QueueName="twice")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="m")
    (message,) = sqs.receive_message(QueueUrl=url)["Messages"]
    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    # WHEN it is deleted again with the same receipt handle
    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    # THEN SQS answers as for the first deletion, and the queue is empty
    assert (
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]["ApproximateNumberOfMessages"]
        == "0"
    )


def test_a_queue_remembers_only_the_most_recent_deletions() -> None:
    from local.moto_sqs import RecentReceipts

    # GIVEN room for three receipt handles
    recent = RecentReceipts(limit=3)
    # WHEN five are remembered, one of them twice
    recent.update(["a", "b", "c"])
    recent.update(["a", "d", "e"])
    # THEN the three most recent are known and the memory stays at three
    assert [handle in recent for handle in "abcde"] == [True, False, False, True, True]
    assert len(recent) == 3


def test_an_eventbridge_delivery_to_a_fifo_queue_does_not_look_at_its_backlog() -> None:
    # GIVEN moto patched as the local stack runs it, a bus whose rule targets a FIFO queue holding a backlog
    import json

    from moto import mock_aws

    from local import moto_sqs

    moto_sqs.patch()
    with mock_aws():
        import boto3

        sqs, events = boto3.client("sqs", region_name="us-east-1"), boto3.client("events", region_name="us-east-1")
        url = sqs.create_queue(
            QueueName="events.fifo", Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"}
        )["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events.put_rule(Name="r", EventPattern=json.dumps({"source": ["s"]}))
        events.put_targets(Rule="r", Targets=[{"Id": "q", "Arn": arn, "SqsParameters": {"MessageGroupId": "g"}}])
        for n in range(20):
            sqs.send_message(QueueUrl=url, MessageBody=f"m{n}", MessageGroupId="g")
        with visibility_checks() as looked_at:
            # WHEN an event is put on the bus
            events.put_events(Entries=[{"Source": "s", "DetailType": "T", "Detail": "{}"}])
            during_delivery = len(looked_at)
            counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])

    # THEN the delivery looked at no message; asking for the count still counts the 21
    assert during_delivery == 0
    assert counts["Attributes"]["ApproximateNumberOfMessages"] == "21"


def test_a_receive_reads_the_retention_period_without_building_the_attribute_map(monkeypatch: Any) -> None:
    # GIVEN moto's SQS as the local stack patches it, and a queue that keeps messages for a minute
    from moto import mock_aws
    from moto.sqs import models

    from local import moto_sqs

    moto_sqs.patch()
    with mock_aws():
        import boto3

        client = boto3.client("sqs", region_name="us-east-1")
        url = client.create_queue(QueueName="kept", Attributes={"MessageRetentionPeriod": "60"})["QueueUrl"]
        for n in range(10):
            client.send_message(QueueUrl=url, MessageBody=f"m{n}")
        maps = 0
        built = models.Queue.attributes

        def counted(queue: Any) -> Any:
            nonlocal maps
            maps += 1
            return built.fget(queue)  # type: ignore[attr-defined]

        monkeypatch.setattr(models.Queue, "attributes", property(counted))
        # WHEN ten messages are received within their retention period
        received = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)["Messages"]
        receive_maps = maps
        # AND again once the period has passed (moto's clock moved two minutes on)
        now = models.unix_time()
        monkeypatch.setattr(models, "unix_time", lambda: now + 120)
        late = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])

    # THEN all ten came while retained and none after; the receive built at most a map for the request itself
    assert len(received) == 10
    assert late == []
    assert receive_maps <= 2
