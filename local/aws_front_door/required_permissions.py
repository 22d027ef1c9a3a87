"""The IAM action(s) and resource ARN(s) a request needs on AWS, derived from its body.

Per table, index, queue and bus; per item of a batch or transaction. An
operation whose resources cannot be derived raises `Unplaceable`: the door
refuses it rather than guess.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from local.aws_front_door.parsed_request import ParsedRequest

_SQS_BATCH_ACTIONS = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
}
_TRANSACT_WRITE_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}


class Unplaceable(Exception):
    """An operation whose resources the door cannot derive: refused, never guessed."""

    def __init__(self, action: str) -> None:
        super().__init__(action)
        self.action = action


def _table_arn(name: Any, region: str, account: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError("TableName is required")
    if name.startswith("arn:"):
        return name
    return f"arn:aws:dynamodb:{region}:{account}:table/{name}"


def dynamodb_needs(parsed: ParsedRequest, region: str, account: str) -> list[tuple[str, str]]:
    params, operation = parsed.params, parsed.operation
    if params.get("__malformed__"):
        raise ValueError("the request body is not a JSON object")
    if operation in ("BatchGetItem", "BatchWriteItem"):
        items = params.get("RequestItems")
        if not isinstance(items, dict) or not items:
            raise ValueError("RequestItems is required")
        return [(f"dynamodb:{operation}", _table_arn(table, region, account)) for table in items]
    if operation in ("TransactWriteItems", "TransactGetItems"):
        entries = params.get("TransactItems")
        if not isinstance(entries, list) or not entries:
            raise ValueError("TransactItems is required")
        needs = []
        for entry in entries:
            if not isinstance(entry, dict) or len(entry) != 1:
                raise ValueError("each TransactItems entry holds exactly one operation")
            ((kind, item),) = entry.items()
            if operation == "TransactGetItems":
                action = "GetItem" if kind == "Get" else None
            else:
                action = _TRANSACT_WRITE_ACTIONS.get(kind)
            if action is None or not isinstance(item, dict):
                raise ValueError(f"unknown transaction operation {kind!r}")
            needs.append((f"dynamodb:{action}", _table_arn(item.get("TableName"), region, account)))
        return needs
    if operation in ("ListTables", "DescribeLimits", "DescribeEndpoints"):
        return [(f"dynamodb:{operation}", "*")]
    if "TableName" not in params and "TableArn" not in params and "ResourceArn" not in params:
        raise Unplaceable(f"dynamodb:{operation}")
    arn = _table_arn(params.get("TableName") or params.get("TableArn") or params.get("ResourceArn"), region, account)
    index = params.get("IndexName")
    if isinstance(index, str) and index:
        arn = f"{arn}/index/{index}"
    return [(f"dynamodb:{operation}", arn)]


def _queue_arn(queue_url: Any, region: str, account: str) -> str:
    if not isinstance(queue_url, str) or not queue_url:
        raise ValueError("QueueUrl is required")
    parts = [part for part in urlsplit(queue_url).path.split("/") if part]
    if len(parts) != 2:
        raise ValueError(f"{queue_url!r} is not a queue URL")
    owner, name = parts
    return f"arn:aws:sqs:{region}:{owner}:{name}"


def sqs_needs(parsed: ParsedRequest, region: str, account: str) -> list[tuple[str, str]]:
    params, operation = parsed.params, parsed.operation
    if params.get("__malformed__"):
        raise ValueError("the request body is not a JSON object")
    action = f"sqs:{_SQS_BATCH_ACTIONS.get(operation, operation)}"
    if operation == "ListQueues":
        return [(action, "*")]
    if operation in ("GetQueueUrl", "CreateQueue"):
        name = params.get("QueueName")
        if not isinstance(name, str) or not name:
            raise ValueError("QueueName is required")
        owner = params.get("QueueOwnerAWSAccountId") or account
        return [(action, f"arn:aws:sqs:{region}:{owner}:{name}")]
    if "QueueUrl" not in params:
        raise Unplaceable(f"sqs:{operation}")
    return [(action, _queue_arn(params["QueueUrl"], region, account))]


def events_needs(parsed: ParsedRequest, region: str, account: str) -> list[tuple[str, str]]:
    params, operation = parsed.params, parsed.operation
    if params.get("__malformed__"):
        raise ValueError("the request body is not a JSON object")

    def bus_arn(name: Any) -> str:
        if name is None or name == "":
            name = "default"
        if not isinstance(name, str):
            raise ValueError("EventBusName must be a string")
        return name if name.startswith("arn:") else f"arn:aws:events:{region}:{account}:event-bus/{name}"

    if operation == "PutEvents":
        entries = params.get("Entries")
        if not isinstance(entries, list) or not entries:
            raise ValueError("Entries is required")
        arns = dict.fromkeys(
            bus_arn(entry.get("EventBusName") if isinstance(entry, dict) else None) for entry in entries
        )
        return [("events:PutEvents", arn) for arn in arns]
    if operation == "DescribeEventBus":
        return [("events:DescribeEventBus", bus_arn(params.get("Name")))]
    raise Unplaceable(f"events:{operation}")
