"""The AWS samples' send-message pattern, the baseline the fan-out is compared with: Scan, then post one by one."""

from __future__ import annotations

import time
from typing import Any

_SAMPLES_CLIENTS: dict[str, Any] = {}


def samples_broadcast(aws_endpoint: str, management_endpoint: str, table: str, frame: str) -> tuple[float, int, int]:
    """What the AWS samples' send-message function does with one event: Scan the connections table, then
    `post_to_connection` to each connection, one after another, deleting those that are gone.

    Runs in a worker process, as a Lambda function would, so its CPU is not the clients'. Returns
    (the time it started, posts that succeeded, connections gone).
    """
    import boto3

    started = time.time()
    if not _SAMPLES_CLIENTS:
        credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        _SAMPLES_CLIENTS["dynamodb"] = boto3.client(
            "dynamodb", region_name="us-east-1", endpoint_url=aws_endpoint, **credentials
        )
        _SAMPLES_CLIENTS["management"] = boto3.client(
            "apigatewaymanagementapi", region_name="us-east-1", endpoint_url=management_endpoint, **credentials
        )
    dynamodb, management = _SAMPLES_CLIENTS["dynamodb"], _SAMPLES_CLIENTS["management"]
    posted = gone = 0
    # The table also holds per-connection counters; the samples' table holds only connection rows.
    kwargs: dict[str, Any] = {
        "TableName": table,
        "ProjectionExpression": "pk",
        "FilterExpression": "kind = :connection",
        "ExpressionAttributeValues": {":connection": {"S": "connection"}},
    }
    while True:
        page = dynamodb.scan(**kwargs)
        for item in page.get("Items", []):
            try:
                management.post_to_connection(ConnectionId=item["pk"]["S"], Data=frame.encode())
                posted += 1
            except management.exceptions.GoneException:
                gone += 1
        if "LastEvaluatedKey" not in page:
            return started, posted, gone
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
