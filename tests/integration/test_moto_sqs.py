"""The moto server the local stack runs sends to a queue without counting its backlog, and still counts
for GetQueueAttributes and validates FIFO sends as SQS does; its FIFO receives hide a group with messages
in flight from every other receiver, wait without spinning, and redeliver a group in order."""

from __future__ import annotations

import contextlib
import threading
import time
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
def moto() -> Iterator[MotoServer]:
    server = MotoServer(port=0, ttl_sweep_seconds=None).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sqs(moto: MotoServer) -> Any:
    return moto.client("sqs")


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


def test_a_send_or_a_batch_does_not_look_at_every_message_of_the_backlog() -> None:
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
            # WHEN one more message is sent, and a batch of two
            client.send_message(QueueUrl=url, MessageBody="m", MessageGroupId="g", MessageDeduplicationId="new")
            client.send_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(n), "MessageBody": f"b{n}", "MessageGroupId": "g", "MessageDeduplicationId": f"b{n}"}
                    for n in range(2)
                ],
            )
            during_send = len(looked_at)
            # AND the attributes are asked for
            attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]

    # THEN the sends looked at no message's visibility; the attributes request counted them all
    assert during_send == 0
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


# ---------------------------------------------------------------------- receiving from a FIFO queue


def fifo_queue(sqs: Any, name: str, visibility_seconds: int = 30) -> str:
    attributes = {
        "FifoQueue": "true",
        "ContentBasedDeduplication": "true",
        "VisibilityTimeout": str(visibility_seconds),
    }
    return str(sqs.create_queue(QueueName=f"{name}.fifo", Attributes=attributes)["QueueUrl"])


def test_a_long_poll_whose_only_messages_belong_to_a_group_in_flight_waits_instead_of_spinning() -> None:
    # GIVEN moto patched as the local stack runs it, in this process (so the poll runs on this thread),
    # and a FIFO queue whose one group has a message in flight and the next one waiting behind it
    import boto3
    from moto import mock_aws

    from local import moto_sqs

    moto_sqs.patch()
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = fifo_queue(sqs, "blocked")
        for body in ("first", "second"):
            sqs.send_message(QueueUrl=url, MessageBody=body, MessageGroupId="g")
        (in_flight,) = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1)["Messages"]

        # WHEN a 2 s long poll runs
        cpu_before = time.thread_time()
        blocked = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=2)
        cpu_spent = time.thread_time() - cpu_before
        # AND the message in flight is then deleted
        sqs.delete_message(QueueUrl=url, ReceiptHandle=in_flight["ReceiptHandle"])
        freed = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=2)

    # THEN the poll returned nothing, having slept: a busy loop burns the whole 2 s of CPU (moto's own
    # receive measured 1.99 s); waking for its few checks costs milliseconds
    assert "Messages" not in blocked
    assert cpu_spent < 0.5, f"the long poll used {cpu_spent:.2f} s of CPU in 2 s: it spins"
    # AND once the group is free, its next message is receivable
    assert [m["Body"] for m in freed["Messages"]] == ["second"]


def test_a_group_redelivered_after_its_visibility_timeout_comes_back_in_order(sqs: Any) -> None:
    # GIVEN three messages of one group received together and never deleted
    url = fifo_queue(sqs, "redelivered", visibility_seconds=1)
    for body in ("a", "b", "c"):
        sqs.send_message(QueueUrl=url, MessageBody=body, MessageGroupId="g")
    first = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]

    # WHEN their visibility timeout runs out (a long poll waits for it)
    again = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=5)["Messages"]

    # THEN they come back in queue order (moto's own receive handed out the last one first)
    assert [m["Body"] for m in first] == ["a", "b", "c"]
    assert [m["Body"] for m in again] == ["a", "b", "c"]


def test_concurrent_receivers_never_hold_one_group_at_once_and_get_each_group_in_order() -> None:
    # GIVEN moto patched as the local stack runs it, in this process (its receives then overlap on threads as
    # often as the GIL lets them: moto's own receive gave one group to two receivers 9 times in 400 messages),
    # a FIFO queue with 4 interleaved groups of 100 messages, and 6 receivers on their own threads, each
    # holding what it received for a moment before deleting it
    import boto3
    from moto import mock_aws

    from local import moto_sqs

    moto_sqs.patch()
    groups, per_group = 4, 100
    holders: dict[str, bool] = {}
    overlaps: list[str] = []
    seen: dict[str, list[int]] = {str(group): [] for group in range(groups)}
    lock = threading.Lock()
    everything_seen = threading.Event()
    errors: list[BaseException] = []

    def receiver(client: Any, url: str) -> None:
        try:
            while not everything_seen.is_set():
                messages = client.receive_message(
                    QueueUrl=url, MaxNumberOfMessages=3, WaitTimeSeconds=1, MessageSystemAttributeNames=["All"]
                ).get("Messages", [])
                held = {m["Attributes"]["MessageGroupId"] for m in messages}
                with lock:
                    overlaps.extend(group for group in held if holders.get(group))
                    holders.update(dict.fromkeys(held, True))
                    for message in messages:
                        group, index = message["Body"].split("-")
                        seen[group].append(int(index))
                time.sleep(0.002)  # the work: other receivers come in meanwhile
                with lock:
                    holders.update(dict.fromkeys(held, False))
                if messages:
                    entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
                    client.delete_message_batch(QueueUrl=url, Entries=entries)
                with lock:
                    if sum(len(indexes) for indexes in seen.values()) >= groups * per_group:
                        everything_seen.set()
        except BaseException as error:
            errors.append(error)
            everything_seen.set()

    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = fifo_queue(sqs, "contended")
        for index in range(per_group):
            for group in range(groups):
                sqs.send_message(QueueUrl=url, MessageBody=f"{group}-{index}", MessageGroupId=str(group))
        clients = [boto3.client("sqs", region_name="us-east-1") for _ in range(6)]
        threads = [threading.Thread(target=receiver, args=(client, url)) for client in clients]

        # WHEN they drain the queue at once
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

    # THEN no group was ever held by two receivers at once, and each was received once, in send order
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
    assert overlaps == []
    assert seen == {str(group): list(range(per_group)) for group in range(groups)}


def _sqs_and_events_outcomes(sqs: Any, events: Any) -> list[Any]:
    """What SQS and EventBridge answer to calls of the shapes the stack makes, and to refusals: the parts of
    each answer that do not vary from run to run (ids, receipt handles, digests and times do)."""
    outcomes: list[Any] = []

    def outcome(call: Any, *keep: str, **kwargs: Any) -> Any:
        try:
            answer = call(**kwargs)
        except ClientError as error:
            outcomes.append(
                ("refused", error.response["Error"]["Code"], error.response["ResponseMetadata"]["HTTPStatusCode"])
            )
            return None
        outcomes.append({key: answer.get(key) for key in keep})
        return answer

    url = outcome(sqs.create_queue, QueueName="parity")["QueueUrl"]
    fifo = outcome(sqs.create_queue, QueueName="parity.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    outcome(sqs.send_message, QueueUrl=url, MessageBody="one")
    batch = outcome(
        sqs.send_message_batch, QueueUrl=url, Entries=[{"Id": f"e{i}", "MessageBody": f"m{i}"} for i in range(3)]
    )
    outcomes.append(sorted(entry["Id"] for entry in batch["Successful"]))
    outcome(sqs.send_message_batch, "Successful", "Failed", QueueUrl=fifo, Entries=[{"Id": "a", "MessageBody": "x"}])
    outcome(sqs.send_message, QueueUrl=fifo, MessageBody="no group")
    outcome(sqs.send_message, QueueUrl=url + "-missing", MessageBody="nowhere")
    received = outcome(sqs.receive_message, QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    outcomes.append(sorted(message["Body"] for message in received))
    handles = [message["ReceiptHandle"] for message in received]
    outcome(sqs.change_message_visibility, QueueUrl=url, ReceiptHandle=handles[0], VisibilityTimeout=0)
    outcome(
        sqs.change_message_visibility_batch,
        "Failed",
        QueueUrl=url,
        Entries=[{"Id": "v", "ReceiptHandle": handles[1], "VisibilityTimeout": 5}],
    )
    outcome(sqs.delete_message, QueueUrl=url, ReceiptHandle=handles[2])
    outcome(
        sqs.delete_message_batch,
        "Failed",
        QueueUrl=url,
        Entries=[{"Id": f"d{i}", "ReceiptHandle": h} for i, h in enumerate(handles[1:])],
    )
    outcome(sqs.get_queue_attributes, "Attributes", QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    outcome(events.create_event_bus, Name="parity-bus")
    entry = {"Source": "parity", "DetailType": "tick", "Detail": '{"a": 1}', "EventBusName": "parity-bus"}
    outcome(events.put_events, "FailedEntryCount", Entries=[entry, {**entry, "EventBusName": "missing-bus"}])
    outcome(events.put_events, "FailedEntryCount", Entries=[{**entry, "Detail": "not json"}])
    outcome(events.describe_event_bus, "Name", Name="missing-bus")
    return outcomes


SHIPPED_SQS_AND_EVENTS = """
import json, boto3
from moto import mock_aws
from tests.integration.test_moto_sqs import _sqs_and_events_outcomes
with mock_aws():
    clients = (boto3.client(name, region_name="us-east-1") for name in ("sqs", "events"))
    print(json.dumps(_sqs_and_events_outcomes(*clients)))
"""


def test_sqs_and_eventbridge_answer_as_unpatched_moto_does(moto: MotoServer) -> None:
    # GIVEN the stack's moto (these requests handed straight to their handlers, the ones that never wait run
    # on the server's event-loop thread, receipt handles drawn at once) and moto as it ships, in a process of
    # its own (so nothing in this one can have patched it)
    import json
    import subprocess
    import sys

    # WHEN both take the same sends, receives, visibility changes, deletes and PutEvents, good and bad
    served = _sqs_and_events_outcomes(moto.client("sqs"), moto.client("events"))
    shipped = json.loads(
        subprocess.run(
            [sys.executable, "-c", SHIPPED_SQS_AND_EVENTS], capture_output=True, text=True, check=True
        ).stdout
    )

    # THEN every answer and every refusal is the same
    assert json.loads(json.dumps(served)) == shipped
    assert sum(1 for item in shipped if isinstance(item, list) and item[:1] == ["refused"]) >= 4
