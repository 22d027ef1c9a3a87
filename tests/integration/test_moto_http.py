"""The server in front of moto's WSGI app (local.moto_http) keeps connections open, as AWS endpoints do."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from typing import Any

from local.moto_server import MotoServer
from local.sigv4 import Credentials, sign_headers


def _signed(moto: MotoServer, operation: str, body: dict[str, object]) -> tuple[bytes, dict[str, str]]:
    data = json.dumps(body).encode()
    headers = sign_headers(
        "POST",
        moto.endpoint_url + "/",
        Credentials("testing", "testing"),
        service="dynamodb",
        region="us-east-1",
        body=data,
        headers={"X-Amz-Target": f"DynamoDB_20120810.{operation}", "Content-Type": "application/x-amz-json-1.0"},
    )
    return data, headers


def test_one_connection_carries_many_requests_and_large_bodies(moto: MotoServer) -> None:
    # GIVEN one HTTP/1.1 connection to moto
    connection = http.client.HTTPConnection(moto.host, moto.port, timeout=10)
    table = {
        "TableName": "kept",
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
        "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
        "BillingMode": "PAY_PER_REQUEST",
    }
    answers = []
    # WHEN it sends a CreateTable, a 1.5 MB BatchWriteItem (five items of 300 KB) and a GetItem, one after another
    batch = [{"PutRequest": {"Item": {"pk": {"S": f"big{i}"}, "blob": {"S": str(i) * 300_000}}}} for i in range(5)]
    for operation, body in (
        ("CreateTable", table),
        ("BatchWriteItem", {"RequestItems": {"kept": batch}}),
        ("GetItem", {"TableName": "kept", "Key": {"pk": {"S": "big4"}}}),
    ):
        data, headers = _signed(moto, operation, body)
        connection.request("POST", "/", body=data, headers=headers)
        response = connection.getresponse()
        answers.append((response.status, response.will_close, json.loads(response.read() or b"{}")))

    # THEN each is answered on that same connection, which stays open, and the large item comes back whole
    assert [(status, closes) for status, closes, _ in answers] == [(200, False)] * 3
    assert answers[2][2]["Item"]["blob"]["S"] == "4" * 300_000
    connection.close()


def test_moto_exits_by_itself_at_once_when_a_long_poll_is_still_waiting() -> None:
    # GIVEN a moto server with a client inside a 20 s long poll
    import threading

    server = MotoServer(port=0, ttl_sweep_seconds=None).start()
    sqs = server.client("sqs")
    url = sqs.create_queue(QueueName="waiting")["QueueUrl"]
    sent = threading.Event()
    sqs.meta.events.register("before-send.sqs.ReceiveMessage", lambda **_: sent.set())
    polling = threading.Thread(target=_receive_ignoring_the_stop, args=(sqs, url), daemon=True)
    polling.start()
    assert sent.wait(10)
    server.client("sqs").list_queues()  # a request sent after the poll's: the server has read the poll by now
    process = server._process
    assert process is not None

    # WHEN the stack stops it
    server.stop()

    # THEN the process ended on its own (exit status 0), not killed after the grace period for a stuck one
    assert process.returncode == 0


def _receive_ignoring_the_stop(sqs: object, url: str) -> None:
    try:
        sqs.receive_message(QueueUrl=url, WaitTimeSeconds=20)  # type: ignore[attr-defined]
    except Exception:  # the server went away mid-poll: what this test does to it
        return


def test_moto_freezes_its_startup_heap_when_told_and_keeps_serving() -> None:
    # GIVEN a moto server of its own process holding a table
    server = MotoServer(port=0, ttl_sweep_seconds=0).start()
    try:
        dynamodb = server.client("dynamodb")
        dynamodb.create_table(
            TableName="kept",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )

        # WHEN the stack tells it that what it holds now is startup's
        frozen = server.freeze_heap()

        # THEN it moved its objects (tens of thousands: moto's backends and models) out of full collections,
        # and the table is still there and writable
        assert frozen is not None and frozen > 10_000
        dynamodb.put_item(TableName="kept", Item={"pk": {"S": "after"}})
        assert dynamodb.get_item(TableName="kept", Key={"pk": {"S": "after"}})["Item"]["pk"] == {"S": "after"}
    finally:
        server.stop()


def test_a_moto_in_this_process_is_not_frozen_by_the_stack() -> None:
    # GIVEN moto on a thread of the test's own process (the caller manages its own collector)
    import gc

    server = MotoServer(port=0, ttl_sweep_seconds=0, mode="thread").start()
    try:
        before = gc.get_freeze_count()
        # WHEN asked to freeze, THEN nothing of this process moves
        assert server.freeze_heap() is None
        assert gc.get_freeze_count() == before
    finally:
        server.stop()


def test_requests_are_answered_while_a_dynamodb_request_holds_moto_up() -> None:
    # GIVEN moto on a thread of this process, and a DynamoDB request in progress there (a long Query, the TTL
    # sweep): it holds the lock every DynamoDB request takes, here held by the test
    import threading

    from local.moto_dynamodb import REQUEST_LOCK

    server = MotoServer(port=0, ttl_sweep_seconds=0, mode="thread").start()
    try:
        dynamodb, sqs = server.client("dynamodb"), server.client("sqs")
        dynamodb.create_table(
            TableName="held",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        queue = sqs.create_queue(QueueName="beside")["QueueUrl"]
        written = threading.Event()
        with REQUEST_LOCK:
            # WHEN an item write (one of the operations the server runs on its event-loop thread) arrives
            writer = threading.Thread(
                target=lambda: (
                    dynamodb.put_item(TableName="held", Item={"pk": {"S": "waiting"}}),
                    written.set(),
                ),
                daemon=True,
            )
            writer.start()
            # THEN it waits for the lock, but on a pool thread, not on the server's event-loop thread
            assert _wait_for(lambda: _threads_in("atomic_call_action")) == ["moto-request"]
            # AND an SQS request is answered meanwhile
            assert sqs.send_message(QueueUrl=queue, MessageBody="not held up")["MessageId"]
            assert not written.is_set()
        # AND once the lock is let go, the write goes through
        assert written.wait(10)
        assert dynamodb.get_item(TableName="held", Key={"pk": {"S": "waiting"}})["Item"]["pk"] == {"S": "waiting"}
    finally:
        server.stop()


def _threads_in(function: str) -> list[str]:
    """The name prefixes of this process's threads that are running `function` somewhere in their stack."""
    import sys
    import threading

    names = {thread.ident: thread.name for thread in threading.enumerate()}
    found = []
    for ident, frame in sys._current_frames().items():
        current: Any = frame
        while current is not None and current.f_code.co_name != function:
            current = current.f_back
        if current is not None:
            found.append(names.get(ident, "?").rsplit("_", 1)[0])
    return found


def _wait_for(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value
