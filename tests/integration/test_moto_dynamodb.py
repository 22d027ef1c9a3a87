"""The moto server the local stack runs (local.moto_server, patched by local.moto_dynamodb) answers
Query by partition as DynamoDB does, and deletes items whose TTL has passed."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from local.moto_server import MotoServer

TABLE = "history"
# An index of the items that have an owner, by owner then sort key (the shape of the service's `by_connection`).
BY_OWNER = {
    "IndexName": "by-owner",
    "KeySchema": [{"AttributeName": "owner", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    "Projection": {"ProjectionType": "ALL"},
}


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer(port=0, ttl_sweep_seconds=0.2).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dynamodb(moto: MotoServer) -> Iterator[Any]:
    client = moto.client("dynamodb")
    client.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "N"},
            {"AttributeName": "owner", "AttributeType": "S"},
        ],
        GlobalSecondaryIndexes=[BY_OWNER],
        BillingMode="PAY_PER_REQUEST",
    )
    try:
        yield client
    finally:
        client.delete_table(TableName=TABLE)


def _put(client: Any, pk: str, sk: int, **attributes: dict[str, str]) -> None:
    client.put_item(TableName=TABLE, Item={"pk": {"S": pk}, "sk": {"N": str(sk)}, **attributes})


def _keys(client: Any, **query: Any) -> list[tuple[str, int]]:
    items = client.query(TableName=TABLE, **query)["Items"]
    return [(item["pk"]["S"], int(item["sk"]["N"])) for item in items]


def _all_keys(client: Any) -> set[tuple[str, int]]:
    items = client.scan(TableName=TABLE, ConsistentRead=True)["Items"]
    return {(item["pk"]["S"], int(item["sk"]["N"])) for item in items}


def test_a_query_reads_its_partition_in_key_order_with_conditions_paging_and_direction(dynamodb: Any) -> None:
    # GIVEN items in three partitions, written out of order
    for sk in (5, 1, 3, 2, 4):
        _put(dynamodb, "a", sk, owner={"S": "x"})
        _put(dynamodb, "b", sk, owner={"S": "y"})
    _put(dynamodb, "c", 1)
    key = {"KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": "a"}}}

    # WHEN the partition is queried, forwards, backwards, from a seq on, and page by page
    forwards = _keys(dynamodb, **key)
    backwards = _keys(dynamodb, **key, ScanIndexForward=False)
    ranged = _keys(
        dynamodb,
        KeyConditionExpression="pk = :p AND sk > :s",
        ExpressionAttributeValues={":p": {"S": "a"}, ":s": {"N": "3"}},
    )
    first = dynamodb.query(TableName=TABLE, **key, Limit=2)
    second = dynamodb.query(TableName=TABLE, **key, Limit=2, ExclusiveStartKey=first["LastEvaluatedKey"])

    # THEN only that partition's items come back, in the order and pages DynamoDB gives
    assert forwards == [("a", n) for n in (1, 2, 3, 4, 5)]
    assert backwards == [("a", n) for n in (5, 4, 3, 2, 1)]
    assert ranged == [("a", 4), ("a", 5)]
    assert [int(item["sk"]["N"]) for item in first["Items"] + second["Items"]] == [1, 2, 3, 4]
    assert _keys(dynamodb, KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "none"}}) == []
    # AND a query of an index still reads across partitions
    by_owner = _keys(
        dynamodb,
        IndexName="by-owner",
        KeyConditionExpression="#o = :o",
        ExpressionAttributeNames={"#o": "owner"},
        ExpressionAttributeValues={":o": {"S": "y"}},
    )
    assert by_owner == [("b", n) for n in (1, 2, 3, 4, 5)]


def _wait_until(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_items_whose_ttl_has_passed_are_deleted_and_nothing_else(dynamodb: Any) -> None:
    # GIVEN TTL on `expires_at`, and items with every kind of expiry value
    dynamodb.update_time_to_live(
        TableName=TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
    )
    now = time.time()
    _put(dynamodb, "h", 1, expires_at={"N": str(int(now) - 10)})  # expired
    _put(dynamodb, "h", 2, expires_at={"N": str(int(now) + 3600)})  # an hour to go
    _put(dynamodb, "h", 3, expires_at={"S": str(int(now) - 10)})  # not a Number: DynamoDB ignores it
    _put(dynamodb, "h", 4, expires_at={"N": str(int(now) - 6 * 365 * 24 * 3600)})  # > 5 years ago: ignored
    _put(dynamodb, "h", 5)  # no expiry
    _put(dynamodb, "gone", 1, expires_at={"N": str(int(now) - 1)})  # a partition with only an expired item

    # WHEN the sweep (every 0.2 s here) has run
    swept = _wait_until(lambda: not {("h", 1), ("gone", 1)} & _all_keys(dynamodb))

    # THEN the expired items are gone, everything else is still there
    assert swept
    assert _all_keys(dynamodb) == {("h", 2), ("h", 3), ("h", 4), ("h", 5)}
    assert _keys(dynamodb, KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "gone"}}) == []


def test_a_table_without_ttl_keeps_items_whatever_their_attributes(moto: MotoServer, dynamodb: Any) -> None:
    # GIVEN no TTL on the table, and an item whose `expires_at` has passed
    _put(dynamodb, "k", 1, expires_at={"N": str(int(time.time()) - 10)})
    # AND a second table, with TTL, whose expired item marks that a sweep has happened since
    other = "swept-marker"
    dynamodb.create_table(
        TableName=other,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    try:
        dynamodb.update_time_to_live(TableName=other, TimeToLiveSpecification={"Enabled": True, "AttributeName": "e"})
        dynamodb.put_item(TableName=other, Item={"pk": {"S": "m"}, "e": {"N": str(int(time.time()) - 10)}})

        # WHEN a sweep has run
        assert _wait_until(lambda: not dynamodb.scan(TableName=other)["Items"])

        # THEN the table without TTL still has its item
        assert _all_keys(dynamodb) == {("k", 1)}
    finally:
        dynamodb.delete_table(TableName=other)


EVERY_TYPE = {
    "pk": {"S": "typed"},
    "sk": {"N": "7"},
    "text": {"S": "caf\u00e9 \u2713"},
    "number": {"N": "-12.5"},
    "blob": {"B": b"\x00\xffbinary"},
    "strings": {"SS": ["a", "b"]},
    "numbers": {"NS": ["1", "2.5"]},
    "blobs": {"BS": [b"\x01", b"\x02\x03"]},
    "nested": {"M": {"inner": {"L": [{"S": "x"}, {"N": "1"}, {"NULL": True}, {"BOOL": False}]}}},
    "flag": {"BOOL": True},
    "nothing": {"NULL": True},
}


def _same_item(found: dict[str, Any]) -> bool:
    def normal(item: dict[str, Any]) -> dict[str, Any]:
        # Sets come back in any order, as from DynamoDB.
        return {
            name: {kind: sorted(v) if kind in ("SS", "NS", "BS") else v for kind, v in value.items()}
            for name, value in item.items()
        }

    return normal(found) == normal(EVERY_TYPE)


def test_data_plane_answers_carry_every_attribute_type_as_dynamodb_writes_them(dynamodb: Any) -> None:
    # GIVEN an item with every attribute type, binary ones included
    key = {"pk": EVERY_TYPE["pk"], "sk": EVERY_TYPE["sk"]}
    put = dynamodb.put_item(TableName=TABLE, Item=EVERY_TYPE, ReturnConsumedCapacity="TOTAL")

    # WHEN it is read back by each data-plane operation (answers written without moto's serializer)
    got = dynamodb.get_item(TableName=TABLE, Key=key, ConsistentRead=True)["Item"]
    queried = dynamodb.query(
        TableName=TABLE, KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "typed"}}
    )
    scanned = dynamodb.scan(TableName=TABLE)["Items"]
    batch = dynamodb.batch_get_item(RequestItems={TABLE: {"Keys": [key]}})
    transact = dynamodb.transact_get_items(TransactItems=[{"Get": {"TableName": TABLE, "Key": key}}])
    updated = dynamodb.update_item(
        TableName=TABLE,
        Key=key,
        UpdateExpression="SET flag = :f",
        ExpressionAttributeValues={":f": {"BOOL": True}},
        ReturnValues="ALL_OLD",
    )["Attributes"]
    absent = dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": "none"}, "sk": {"N": "0"}})
    deleted = dynamodb.delete_item(TableName=TABLE, Key=key, ReturnValues="ALL_OLD")["Attributes"]

    # THEN every answer holds the same item, bytes as bytes, with counts and capacity where asked
    assert put["ConsumedCapacity"]["TableName"] == TABLE and "Attributes" not in put
    assert _same_item(got) and _same_item(updated) and _same_item(deleted)
    assert queried["Count"] == 1 and queried["ScannedCount"] == 1 and _same_item(queried["Items"][0])
    assert "LastEvaluatedKey" not in queried
    assert [_same_item(item) for item in scanned] == [True]
    assert _same_item(batch["Responses"][TABLE][0]) and not batch.get("UnprocessedKeys")
    assert _same_item(transact["Responses"][0]["Item"])
    assert "Item" not in absent
    # AND an error still has DynamoDB's own shape
    with pytest.raises(dynamodb.exceptions.ConditionalCheckFailedException) as refused:
        dynamodb.put_item(
            TableName=TABLE,
            Item={"pk": {"S": "typed"}, "sk": {"N": "8"}},
            ConditionExpression="attribute_exists(pk)",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    assert refused.value.response["Error"]["Code"] == "ConditionalCheckFailedException"


def test_memory_freed_between_long_lived_items_goes_back_to_the_system() -> None:
    # GIVEN a process that allocated 200 MB in blocks, then freed all but every 50th (the survivors pin
    # the allocator's pages, as moto's unexpired items do among request garbage)
    script = """
import os
from local.moto_dynamodb import release_free_memory
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
blocks = [os.urandom(1) * 4000 for _ in range(50_000)]
kept = blocks[::50]
del blocks
before = rss()
released = release_free_memory()
print(released, before, rss())
"""
    import subprocess
    import sys

    # WHEN the moto server's sweep hands free memory back (in a fresh interpreter, to measure only that)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()

    # THEN glibc released the freed pages: the resident size fell by most of the 200 MB
    released, before, after = out[0] == "True", int(out[1]), int(out[2])
    assert released
    assert before - after > 100 * 2**20


# A fresh interpreter's moto, patched as the stack's, holding a table `t` keyed (pk: S, sk: N), as `db`: the
# tests that look at the table moto holds continue it inside its `with mock_aws():` and print what they found.
_FRESH_MOTO_WITH_TABLE = """
import boto3
from moto import mock_aws
from moto.dynamodb.models import dynamodb_backends
from moto.dynamodb.models.dynamo_type import DynamoType
from local.moto_dynamodb import patch

patch()
with mock_aws():
    db = boto3.client("dynamodb", region_name="us-east-1")
    db.create_table(
        TableName="t",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "N"}
        ],
        BillingMode="PAY_PER_REQUEST",
    )
"""


def _in_fresh_moto(script: str) -> list[str]:
    """What `script`, run on in `_FRESH_MOTO_WITH_TABLE`, printed, word by word."""
    import subprocess
    import sys

    command = [sys.executable, "-c", _FRESH_MOTO_WITH_TABLE + script]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()


def test_reads_and_deletes_of_missing_keys_leave_no_partition_behind() -> None:
    # GIVEN the stack's moto (in a fresh interpreter, to look at the table moto holds) with two items
    script = """
    key = lambda pk: {"pk": {"S": pk}, "sk": {"N": "1"}}
    db.put_item(TableName="t", Item=key("kept"))
    db.put_item(TableName="t", Item=key("emptied"))
    found = [db.get_item(TableName="t", Key=key("kept"))["Item"]["pk"]["S"]]
    # WHEN keys in partitions that hold nothing are read, deleted, written under a failed condition,
    # and a transaction writing one is refused; and the other partition's only item is deleted
    assert "Item" not in db.get_item(TableName="t", Key=key("read"))
    db.batch_get_item(RequestItems={"t": {"Keys": [key("batch-read"), key("kept")]}})
    db.delete_item(TableName="t", Key=key("deleted"))
    db.delete_item(TableName="t", Key=key("emptied"))
    try:
        db.put_item(TableName="t", Item=key("refused"), ConditionExpression="attribute_exists(pk)")
    except db.exceptions.ConditionalCheckFailedException:
        pass
    try:
        check = {"TableName": "t", "Key": key("kept"), "ConditionExpression": "attribute_not_exists(pk)"}
        db.transact_write_items(
            TransactItems=[{"Put": {"TableName": "t", "Item": key("rolled-back")}}, {"ConditionCheck": check}]
        )
    except db.exceptions.TransactionCanceledException:
        pass
    table = dynamodb_backends["123456789012"]["us-east-1"].tables["t"]
    print(" ".join(found + sorted(partition.value for partition in table.items)))
"""
    out = _in_fresh_moto(script)

    # THEN moto holds only the partition that has an item, which still reads as before
    assert out == ["kept", "kept"]


def test_stored_items_hold_their_key_once_and_share_attribute_names() -> None:
    # GIVEN the stack's moto (in a fresh interpreter, to look at the items moto holds)
    script = """
    item = lambda pk: {"pk": {"S": pk}, "sk": {"N": "0"}, "alias": {"S": pk}, "zero": {"N": "0"}, "text": {"S": "m"}}
    written = ("put", "transacted", "batched")
    # WHEN items are written by each kind of write
    db.put_item(TableName="t", Item=item("put"))
    db.transact_write_items(TransactItems=[{"Put": {"TableName": "t", "Item": item("transacted")}}])
    db.batch_write_item(RequestItems={"t": [{"PutRequest": {"Item": item("batched")}}]})
    table = dynamodb_backends["123456789012"]["us-east-1"].tables["t"]
    stored = [table.get_item(DynamoType({"S": pk}), DynamoType({"N": "0"})) for pk in written]
    names = [list(stored_item.attrs) for stored_item in stored]
    print(all(s.attrs["pk"] is s.hash_key and s.attrs["sk"] is s.range_key for s in stored))
    print(all(a is b for other in names[1:] for a, b in zip(names[0], other, strict=True)))
    # AND attributes holding the same values as the key are changed
    for pk in written:
        db.update_item(
            TableName="t", Key={"pk": {"S": pk}, "sk": {"N": "0"}}, UpdateExpression="SET alias = :x ADD zero :one",
            ExpressionAttributeValues={":x": {"S": "changed"}, ":one": {"N": "1"}},
        )
    changed = {"alias": {"S": "changed"}, "zero": {"N": "1"}}
    for pk in written:
        print(db.get_item(TableName="t", Key={"pk": {"S": pk}, "sk": {"N": "0"}})["Item"] == {**item(pk), **changed})
"""
    out = _in_fresh_moto(script)

    # THEN each item's key attributes are its key objects, every item names its attributes with the same
    # strings, and each reads back with its key as written and the other attributes changed
    assert out == ["True", "True", "True", "True", "True"]


# Update requests of every shape the expression machinery handles, each text used again with other values:
# a parsed text is shared between requests, so a value must never leak from one request into the next.
UPDATES: list[dict[str, Any]] = [
    {"UpdateExpression": "SET a = :v, b = :w", "ExpressionAttributeValues": {":v": {"N": "1"}, ":w": {"S": "x"}}},
    {"UpdateExpression": "SET a = :v, b = :w", "ExpressionAttributeValues": {":v": {"N": "7"}, ":w": {"S": "y"}}},
    {"UpdateExpression": "SET a = a + :v", "ExpressionAttributeValues": {":v": {"N": "5"}}},
    {
        "UpdateExpression": "SET c = if_not_exists(c, :z) - :v",
        "ExpressionAttributeValues": {":z": {"N": "0"}, ":v": {"N": "2"}},
    },
    {
        "UpdateExpression": "SET c = if_not_exists(c, :z) - :v",
        "ExpressionAttributeValues": {":z": {"N": "9"}, ":v": {"N": "3"}},
    },
    {
        "UpdateExpression": "SET l = list_append(if_not_exists(l, :e), :v)",
        "ExpressionAttributeValues": {":e": {"L": []}, ":v": {"L": [{"S": "p"}]}},
    },
    {
        "UpdateExpression": "SET l = list_append(if_not_exists(l, :e), :v)",
        "ExpressionAttributeValues": {":e": {"L": []}, ":v": {"L": [{"N": "2"}]}},
    },
    {
        "UpdateExpression": "SET #m = :m",
        "ExpressionAttributeNames": {"#m": "map"},
        "ExpressionAttributeValues": {":m": {"M": {"in": {"M": {}}}}},
    },
    {
        "UpdateExpression": "SET #m.#i.deep = :v",
        "ExpressionAttributeNames": {"#m": "map", "#i": "in"},
        "ExpressionAttributeValues": {":v": {"BOOL": True}},
    },
    {"UpdateExpression": "SET l[0] = :v REMOVE b", "ExpressionAttributeValues": {":v": {"S": "first"}}},
    {
        "UpdateExpression": "ADD n :one, s :set",
        "ExpressionAttributeValues": {":one": {"N": "1"}, ":set": {"SS": ["a", "b"]}},
    },
    {
        "UpdateExpression": "ADD n :one, s :set",
        "ExpressionAttributeValues": {":one": {"N": "10"}, ":set": {"SS": ["c"]}},
    },
    {"UpdateExpression": "DELETE s :set", "ExpressionAttributeValues": {":set": {"SS": ["a"]}}},
    {"UpdateExpression": "REMOVE l[0], #m.#i", "ExpressionAttributeNames": {"#m": "map", "#i": "in"}},
    # refused alike: a missing operand, overlapping paths, a key attribute, an unused value, a failed condition
    {"UpdateExpression": "SET a = missing + :v", "ExpressionAttributeValues": {":v": {"N": "1"}}},
    {"UpdateExpression": "SET a = :v, a = :w", "ExpressionAttributeValues": {":v": {"N": "1"}, ":w": {"N": "2"}}},
    {"UpdateExpression": "SET pk = :v", "ExpressionAttributeValues": {":v": {"S": "other"}}},
    {"UpdateExpression": "SET a = :v", "ExpressionAttributeValues": {":v": {"N": "1"}, ":unused": {"N": "2"}}},
    {
        "UpdateExpression": "SET a = :v",
        "ConditionExpression": "a = :w",
        "ExpressionAttributeValues": {":v": {"N": "3"}, ":w": {"N": "999"}},
    },
    # one text with other names: checks that depend on the names (overlaps, key attributes) are made again
    *(
        {
            "UpdateExpression": "SET #x = :v, #y = :w",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": {":v": {"N": "4"}, ":w": {"S": "n"}},
        }
        for names in ({"#x": "a", "#y": "b"}, {"#x": "a", "#y": "a"}, {"#x": "pk", "#y": "b"}, {"#x": "b", "#y": "a"})
    ),
    {"UpdateExpression": "SET a = :v SET b = :v", "ExpressionAttributeValues": {":v": {"N": "1"}}},
    {"UpdateExpression": "SET a = :v SET b = :v", "ExpressionAttributeValues": {":v": {"N": "2"}}},
    # one condition text with other names and values, and with the same ones again (a parsed tree is reused)
    *(
        {
            "UpdateExpression": "ADD n :one",
            "ConditionExpression": "attribute_not_exists(#c) OR (#c < :w AND #c <> :z)",
            "ExpressionAttributeNames": {"#c": attribute},
            "ExpressionAttributeValues": {":one": {"N": "1"}, ":w": {"N": limit}, ":z": {"N": "0"}},
        }
        for attribute, limit in (("n", "100"), ("c", "1"), ("n", "2"), ("zz", "0"), ("n", "100"), ("n", "2"))
    ),
    {"UpdateExpression": "SET a = :v, b = :w", "ExpressionAttributeValues": {":v": {"N": "8"}, ":w": {"S": "z"}}},
]


def _outcomes(client: Any, table: str) -> list[Any]:
    """Each update's answer (the new item) or its error code, on two items (one new, one existing)."""
    from botocore.exceptions import ClientError

    client.put_item(TableName=table, Item={"pk": {"S": "old"}, "sk": {"N": "1"}, "a": {"N": "40"}})
    outcomes: list[Any] = []
    for pk in ("new", "old"):
        for request in UPDATES:
            try:
                answer = client.update_item(
                    TableName=table, Key={"pk": {"S": pk}, "sk": {"N": "1"}}, ReturnValues="ALL_NEW", **request
                )
                outcomes.append(answer.get("Attributes"))
            except ClientError as error:
                outcomes.append(error.response["Error"]["Code"])
    return outcomes


SHIPPED_MOTO = """
import json, boto3
from moto import mock_aws
from tests.integration.test_moto_dynamodb import TABLE, _outcomes
with mock_aws():
    client = boto3.client("dynamodb", region_name="us-east-1")
    client.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "N"}
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    print(json.dumps(_outcomes(client, TABLE)))
"""


def test_update_expressions_answer_as_unpatched_moto_does(dynamodb: Any) -> None:
    # GIVEN the stack's moto (parsed texts shared, copies from pickles, passes looked up by node type, static
    # checks made once per text and names, condition texts split into tokens once, and parsed once for the
    # same text, names and values)
    # and moto as it ships, in a process of its own (so nothing in this one can have patched it)
    import json
    import subprocess
    import sys

    # WHEN both take the same updates of every shape, each text more than once with other values
    patched = _outcomes(dynamodb, TABLE)
    shipped = json.loads(
        subprocess.run([sys.executable, "-c", SHIPPED_MOTO], capture_output=True, text=True, check=True).stdout
    )

    # THEN every answer and every refusal is the same
    assert patched == shipped
    assert shipped.count("ValidationException") >= 12 and shipped.count("ConditionalCheckFailedException") == 6
    assert {"a": {"N": "8"}}.items() <= shipped[-1].items()


def test_the_server_keeps_no_replaced_item_or_message(moto: MotoServer, dynamodb: Any) -> None:
    # GIVEN the stack's moto, where moto itself would keep every model instance it made in a list per class
    import json
    import urllib.request

    sqs = moto.client("sqs")
    queue = sqs.create_queue(QueueName="kept-messages")["QueueUrl"]

    # WHEN one item is written 200 times over and 50 messages are sent and deleted
    for version in range(200):
        _put(dynamodb, "one", 1, version={"N": str(version)})
    for index in range(50):
        sqs.send_message(QueueUrl=queue, MessageBody=f"message {index}")
    while received := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages"):
        sqs.delete_message_batch(
            QueueUrl=queue, Entries=[{"Id": m["MessageId"], "ReceiptHandle": m["ReceiptHandle"]} for m in received]
        )

    # THEN moto's own list of instances (its dashboard's data) holds none of them: replaced item versions
    # and deleted messages are garbage, not kept for as long as the server runs
    with urllib.request.urlopen(f"{moto.endpoint_url}/moto-api/data.json", timeout=10) as response:
        tracked = json.load(response)
    assert tracked["dynamodb"].get("Item", []) == []
    assert tracked["sqs"].get("Message", []) == []
    # AND the table still holds the last version
    item = dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": "one"}, "sk": {"N": "1"}})["Item"]
    assert item["version"] == {"N": "199"}


INDEXED = "indexed"


def _index_outcomes(client: Any) -> list[Any]:
    """Index queries of every shape the service makes and then some: each answer's items in order, its
    LastEvaluatedKey, and refusals by code."""
    from botocore.exceptions import ClientError

    client.create_table(
        TableName=INDEXED,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": name, "AttributeType": kind}
            for name, kind in (("pk", "S"), ("sk", "N"), ("owner", "S"), ("kind", "S"))
        ],
        GlobalSecondaryIndexes=[
            BY_OWNER,
            {
                "IndexName": "by-kind",
                "KeySchema": [{"AttributeName": "kind", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            },
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    for n in range(60):  # written out of key order, over six partitions; some rows outside either index
        item = {"pk": {"S": f"p{(n * 7) % 6}"}, "sk": {"N": str((n * 13) % 60)}}
        if n % 5:
            item["owner"] = {"S": f"o{n % 3}"}
        if n % 4:
            item["kind"] = {"S": "k" if n % 2 else "j"}
        client.put_item(TableName=INDEXED, Item=item)
    queries: list[dict[str, Any]] = [
        {"IndexName": "by-owner", "KeyConditionExpression": "#o = :o", "ExpressionAttributeNames": {"#o": "owner"}},
        {
            "IndexName": "by-owner",
            "KeyConditionExpression": "#o = :o AND sk BETWEEN :a AND :b",
            "ExpressionAttributeNames": {"#o": "owner"},
            "ScanIndexForward": False,
        },
        {
            "IndexName": "by-owner",
            "KeyConditionExpression": "#o = :o",
            "FilterExpression": "pk <> :p",
            "ExpressionAttributeNames": {"#o": "owner"},
            "Limit": 4,
        },
        {"IndexName": "by-kind", "KeyConditionExpression": "kind = :k"},
        {"IndexName": "by-kind", "KeyConditionExpression": "kind = :k", "Limit": 3},
        {"IndexName": "by-owner", "KeyConditionExpression": "#o = :o", "ExpressionAttributeNames": {"#o": "nobody"}},
        {"IndexName": "no-such-index", "KeyConditionExpression": "kind = :k"},
    ]
    values = {":o": {"S": "o1"}, ":a": {"N": "10"}, ":b": {"N": "45"}, ":p": {"S": "p2"}, ":k": {"S": "k"}}
    outcomes: list[Any] = []
    for query in queries:
        used = {name: value for name, value in values.items() if name in str(query)}
        pages: list[Any] = []
        start: dict[str, Any] | None = None
        try:
            for _ in range(30):  # every page, as a paginating caller reads them
                page = client.query(
                    TableName=INDEXED,
                    ExpressionAttributeValues=used,
                    **query,
                    **({"ExclusiveStartKey": start} if start else {}),
                )
                pages.append([[item["pk"]["S"], item["sk"]["N"]] for item in page["Items"]])
                start = page.get("LastEvaluatedKey")
                pages.append(start)
                if not start:
                    break
        except ClientError as error:
            pages.append(error.response["Error"]["Code"])
        outcomes.append(pages)
    return outcomes


def _here_and_as_moto_ships(moto: MotoServer, outcomes: Callable[[Any], Any], table: str) -> tuple[Any, Any]:
    """What `outcomes(client)` (a function of this module that creates `table`) returns against the stack's moto,
    and against moto as it ships, run in a process of its own (so nothing in this one can have patched it)."""
    import json
    import subprocess
    import sys

    client = moto.client("dynamodb")
    try:
        here = outcomes(client)
    finally:
        client.delete_table(TableName=table)
    script = "\n".join(
        [
            "import json, boto3",
            "from moto import mock_aws",
            f"from tests.integration.test_moto_dynamodb import {outcomes.__name__}",
            "with mock_aws():",
            f"    print(json.dumps({outcomes.__name__}(boto3.client('dynamodb', region_name='us-east-1'))))",
        ]
    )
    shipped = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return here, json.loads(shipped)


def test_index_queries_answer_as_unpatched_moto_does(moto: MotoServer) -> None:
    # GIVEN the stack's moto (an index Query picks its partition's items without sorting the table)
    # and moto as it ships, in a process of its own
    # WHEN both answer the same index queries, page by page
    patched, shipped = _here_and_as_moto_ships(moto, _index_outcomes, INDEXED)

    # THEN every item comes in the same order, with the same paging keys and refusals
    assert patched == shipped
    assert len(shipped[0][0]) >= 10 and shipped[-1] == ["ResourceNotFoundException"]
    assert any(len(pages) > 3 for pages in shipped)  # some queries took several pages


PROJECTED = "projected"
# Every attribute type, maps and lists nested, numbers as written (moto's own projection re-serialises them).
PROJECTED_ATTRIBUTES: dict[str, Any] = {
    "a_text": {"S": "text"},
    "a_num": {"N": "1.50"},
    "a_big": {"N": "12345678901234567890"},
    "a_flag": {"BOOL": False},
    "a_null": {"NULL": True},
    "a_bin": {"B": b"\x00\x01bytes"},
    "a_strings": {"SS": ["b", "a"]},
    "a_numbers": {"NS": ["2", "1"]},
    "filters": {"M": {}},
    "a_map": {"M": {"inner": {"M": {"deep": {"S": "x"}}}, "a_list": {"L": [{"N": "1"}, {"S": "two"}]}}},
    "a_list": {"L": [{"M": {"k": {"S": "v"}}}, {"BOOL": True}]},
}
PROJECTIONS: list[dict[str, Any]] = [
    {"ProjectionExpression": ", ".join(PROJECTED_ATTRIBUTES)},
    {"ProjectionExpression": "sk, #t, absent", "ExpressionAttributeNames": {"#t": "a_text"}},
    {"ProjectionExpression": "a_map"},
    {"ProjectionExpression": "absent"},
    {"ProjectionExpression": "a_map.inner.deep, a_list[0].k, a_text"},
    {"ProjectionExpression": "#m.a_list[1], a_numbers", "ExpressionAttributeNames": {"#m": "a_map"}},
]


def _normal(attribute: dict[str, Any]) -> Any:
    """An attribute value as JSON, sets sorted (their order is not part of DynamoDB's answer)."""
    kind, inner = next(iter(attribute.items()))
    if kind in ("SS", "NS"):
        return {kind: sorted(inner)}
    if kind == "M":
        return {kind: {key: _normal(member) for key, member in inner.items()}}
    if kind == "L":
        return {kind: [_normal(member) for member in inner]}
    if kind == "B":
        return {kind: inner.hex()}
    return attribute


def _projection_outcomes(client: Any) -> list[Any]:
    """Projected Query, GetItem and Scan answers (names, placeholders, absent attributes, keys, paths into
    maps and lists), on items that each lack some of the attributes."""
    client.create_table(
        TableName=PROJECTED,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    for n in range(5):
        attributes = dict(list(PROJECTED_ATTRIBUTES.items())[n:])
        client.put_item(TableName=PROJECTED, Item={"pk": {"S": "p"}, "sk": {"N": str(n)}, **attributes})
    outcomes: list[Any] = []
    for projection in PROJECTIONS:
        answers = [
            client.query(
                TableName=PROJECTED,
                KeyConditionExpression="pk = :p",
                ExpressionAttributeValues={":p": {"S": "p"}},
                ConsistentRead=True,
                **projection,
            )["Items"],
            [client.get_item(TableName=PROJECTED, Key={"pk": {"S": "p"}, "sk": {"N": "0"}}, **projection)["Item"]],
            client.scan(TableName=PROJECTED, **projection)["Items"],
        ]
        outcomes += [[{name: _normal(value) for name, value in item.items()} for item in items] for items in answers]
    return outcomes


def test_projected_reads_answer_as_unpatched_moto_does(moto: MotoServer) -> None:
    # GIVEN the stack's moto (a projection of top-level names picks the stored attributes directly)
    # and moto as it ships, in a process of its own
    # WHEN both answer the same projected Queries, GetItems and Scans
    patched, shipped = _here_and_as_moto_ships(moto, _projection_outcomes, PROJECTED)

    # THEN every item has the same attributes with the same values
    assert patched == shipped
    assert set(shipped[0][0]) == set(PROJECTED_ATTRIBUTES)  # the first item, every attribute projected
    assert shipped[3] == [
        {"sk": {"N": "0"}, "a_text": {"S": "text"}},
        {"sk": {"N": "1"}},
        *({"sk": {"N": str(n)}} for n in range(2, 5)),
    ]
    assert shipped[9] == [{}] * 5  # an absent attribute projects nothing


@pytest.mark.parametrize("interval", [0, -1.0])
def test_a_ttl_sweeper_needs_a_period_of_more_than_zero(interval: float) -> None:
    # A period of 0 or less would sweep in a loop, holding moto's lock
    from local.moto_dynamodb import start_ttl_sweeper

    with pytest.raises(ValueError, match="more than 0 seconds"):
        start_ttl_sweeper(interval)
