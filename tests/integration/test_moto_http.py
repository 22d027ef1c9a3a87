"""The server in front of moto's WSGI app (local.moto_http) keeps connections open, as AWS endpoints do."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest

from local.moto_server import MotoServer
from local.sigv4 import Credentials, sign_headers


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer(port=0, ttl_sweep_seconds=0).start()
    try:
        yield server
    finally:
        server.stop()


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
