"""Query answers reach the store as DynamoDB sent them, and read exactly as botocore would have parsed them."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from quanttrade_ws.config import Settings
from quanttrade_ws.store.tables import DynamoTables, items_as_sent
from tests.provision import provision

# Every attribute type the store writes, nested as a map and a list would be.
ITEM = {
    "stream_key": {"S": "market_data:AAPL"},
    "connection_id": {"S": "c1="},
    "token_expires_at": {"N": "1700000000"},
    "interval": {"N": "0.5"},
    "latest_only": {"BOOL": True},
    "gone": {"NULL": True},
    "filters": {"M": {"exchange": {"S": "NASDAQ"}, "depth": {"M": {"levels": {"N": "5"}}}}},
    "history": {"L": [{"S": "a"}, {"N": "1"}, {"BOOL": False}]},
    "conns": {"SS": ["c1=", "c2="]},
    "seqs": {"NS": ["1", "2"]},
}


@pytest.fixture
def tables(settings: Settings, aws: dict[str, Any]) -> DynamoTables:
    provision(aws["dynamodb"], aws["sqs"], aws["events"], settings)
    return DynamoTables(settings, aws["dynamodb"])


def query(client: Any, table: str) -> list[dict[str, Any]]:
    answer = client.query(
        TableName=table,
        KeyConditionExpression="stream_key = :k",
        ExpressionAttributeValues={":k": {"S": "market_data:AAPL"}},
        ConsistentRead=True,
    )
    return answer["Items"]  # type: ignore[no-any-return]


def test_query_items_read_as_botocore_parses_them_for_every_type_the_store_writes(
    tables: DynamoTables, aws: dict[str, Any]
) -> None:
    # GIVEN a row holding every attribute type the store writes
    aws["dynamodb"].put_item(TableName=tables.subscriptions_table, Item=ITEM)
    left_to_parse: list[bool] = []

    def given_to_botocore(response_dict: dict[str, Any], **_: Any) -> None:
        # Registered after the store's hook, so it sees what botocore's parser is then given.
        left_to_parse.append(b'"Items"' in response_dict["body"])

    aws["dynamodb"].meta.events.register("before-parse.dynamodb.Query", given_to_botocore)

    # WHEN the store's client, which skips botocore's parse of Query items, and a plain client query it
    fast = query(aws["dynamodb"], tables.subscriptions_table)
    plain = query(boto3.client("dynamodb", region_name="us-east-1"), tables.subscriptions_table)

    # THEN both read the same row, typed alike, and the store's client never gave the items to botocore's parser
    assert fast == plain == [ITEM]
    assert left_to_parse == [False]


def test_an_answer_with_a_binary_value_is_left_to_botocore(tables: DynamoTables, aws: dict[str, Any]) -> None:
    # GIVEN a row with a binary attribute (base64 on the wire, bytes once parsed)
    aws["dynamodb"].put_item(TableName=tables.subscriptions_table, Item={**ITEM, "blob": {"B": b"\x00\xffraw"}})

    # WHEN the store's client queries it; THEN botocore decoded the value, as without the shortcut
    (row,) = query(aws["dynamodb"], tables.subscriptions_table)
    assert row["blob"] == {"B": b"\x00\xffraw"}


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, b'{"__type": "ValidationException", "Items": []}'),
        (200, b'{"Items": [{"k": {"B": "AAE="}}], "Count": 1}'),
        (200, b'{"Items": [{"k": {"BS": ["AAE="]}}], "Count": 1}'),
        (200, b'{"Count": 0}'),
    ],
    ids=["an error", "binary", "a binary set", "no items (Select=COUNT)"],
)
def test_answers_the_shortcut_cannot_take_are_left_whole(status: int, body: bytes) -> None:
    # GIVEN an answer that is not a success with items in it, or may hold binary values
    response = {"status_code": status, "headers": {}, "body": body}
    customized: dict[str, Any] = {}

    # WHEN the hook sees it; THEN it changes nothing, and botocore parses the answer as it came
    items_as_sent(response_dict=response, customized_response_dict=customized)
    assert response["body"] == body and customized == {}


def test_items_are_taken_out_of_the_body_and_the_rest_is_left_to_botocore() -> None:
    # GIVEN a page of a Query's answer
    page = {"Items": [{"k": {"S": "a"}}], "Count": 1, "LastEvaluatedKey": {"k": {"S": "a"}}}
    response = {"status_code": 200, "headers": {}, "body": json.dumps(page).encode()}
    customized: dict[str, Any] = {}

    # WHEN the hook sees it
    items_as_sent(response_dict=response, customized_response_dict=customized)

    # THEN the items are handed over as sent, and everything else is still botocore's to parse
    assert customized == {"Items": [{"k": {"S": "a"}}]}
    assert json.loads(response["body"]) == {"Count": 1, "LastEvaluatedKey": {"k": {"S": "a"}}}


def test_stores_sharing_a_client_take_the_items_once(
    settings: Settings, aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN two stores built over one client, as a warm function's parts and the tests may build them
    from quanttrade_ws.store import tables as tables_module

    runs: list[int] = []

    def counted(**kwargs: Any) -> None:
        runs.append(1)
        items_as_sent(**kwargs)

    monkeypatch.setattr(tables_module, "items_as_sent", counted)
    provision(aws["dynamodb"], aws["sqs"], aws["events"], settings)
    first, _second = DynamoTables(settings, aws["dynamodb"]), DynamoTables(settings, aws["dynamodb"])
    aws["dynamodb"].put_item(TableName=first.subscriptions_table, Item=ITEM)

    # WHEN one Query is answered; THEN the hook ran once for it, not once per store
    assert query(aws["dynamodb"], first.subscriptions_table) == [ITEM]
    assert runs == [1]
