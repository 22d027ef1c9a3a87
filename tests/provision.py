"""The topology's tables, queues, bus and rules in moto, for the domain's integration tests.

The CDK stack is built from the same declarations, so these tests exercise the
keys, indexes and queues that deploy, without paying for a synthesis per test.
The local stack itself provisions from the synthesized template instead
(`local.cloud.provisioning.provision`), and tests/integration/test_assembly.py checks that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from quanttrade_ws import topology
from quanttrade_ws.config import Settings


@dataclass(frozen=True)
class QueueUrls:
    url: str
    arn: str
    dlq_url: str


def table_name(settings: Settings, table: topology.Table) -> str:
    return str(getattr(settings, table.env_var.lower()))


def create_tables(dynamodb: Any, settings: Settings) -> None:
    existing = set(dynamodb.list_tables().get("TableNames", []))
    for table in topology.TABLES:
        name = table_name(settings, table)
        if name in existing:
            continue
        keys = [table.partition_key] + ([table.sort_key] if table.sort_key else [])
        for index in table.indexes:
            keys += [index.partition_key] + ([index.sort_key] if index.sort_key else [])
        attributes = [{"AttributeName": k, "AttributeType": table.key_type(k)} for k in dict.fromkeys(keys)]
        schema = [{"AttributeName": table.partition_key, "KeyType": "HASH"}]
        if table.sort_key:
            schema.append({"AttributeName": table.sort_key, "KeyType": "RANGE"})
        request: dict[str, Any] = {
            "TableName": name,
            "AttributeDefinitions": attributes,
            "KeySchema": schema,
            "BillingMode": "PAY_PER_REQUEST",
        }
        if table.indexes:
            request["GlobalSecondaryIndexes"] = [
                {
                    "IndexName": index.name,
                    "KeySchema": [{"AttributeName": index.partition_key, "KeyType": "HASH"}]
                    + ([{"AttributeName": index.sort_key, "KeyType": "RANGE"}] if index.sort_key else []),
                    "Projection": {"ProjectionType": index.projection},
                }
                for index in table.indexes
            ]
        dynamodb.create_table(**request)
        dynamodb.update_time_to_live(
            TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": table.ttl_attribute}
        )


def queue_name(queue: topology.Queue, prefix: str = "quanttrade") -> str:
    base = f"{prefix}-{queue.logical_id}"
    return f"{base}.fifo" if queue.fifo else base


def create_queues(sqs: Any, prefix: str = "quanttrade") -> dict[str, QueueUrls]:
    """Each queue with its DLQ and redrive policy; returns urls by queue logical id."""
    out: dict[str, QueueUrls] = {}
    for queue in topology.QUEUES:
        fifo_attributes = {"FifoQueue": "true"} if queue.fifo else {}
        dlq_name = queue_name(queue, prefix).replace(queue.logical_id, queue.dlq_logical_id)
        dlq_url = sqs.create_queue(QueueName=dlq_name, Attributes=fifo_attributes)["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        attributes = {
            **fifo_attributes,
            "VisibilityTimeout": str(queue.visibility_timeout_seconds),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": queue.max_receive_count}),
        }
        if queue.fifo:
            # EventBridge needs content-based deduplication to target a FIFO queue.
            attributes["ContentBasedDeduplication"] = "true"
        url = sqs.create_queue(QueueName=queue_name(queue, prefix), Attributes=attributes)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        out[queue.logical_id] = QueueUrls(url, arn, dlq_url)
    return out


def create_bus_and_rules(events: Any, events_queue_arn: str) -> None:
    names = {bus["Name"] for bus in events.list_event_buses().get("EventBuses", [])}
    if topology.EVENT_BUS_NAME not in names:
        events.create_event_bus(Name=topology.EVENT_BUS_NAME)
    for source in topology.SOURCES:
        events.put_rule(
            Name=source.rule_logical_id,
            EventBusName=topology.EVENT_BUS_NAME,
            EventPattern=json.dumps({"source": [source.source], "detail-type": [source.detail_type]}),
        )
        events.put_targets(
            Rule=source.rule_logical_id,
            EventBusName=topology.EVENT_BUS_NAME,
            Targets=[
                {
                    "Id": "events-queue",
                    "Arn": events_queue_arn,
                    "SqsParameters": {"MessageGroupId": source.message_group},
                }
            ],
        )


def provision(dynamodb: Any, sqs: Any, events: Any, settings: Settings) -> tuple[Settings, dict[str, QueueUrls]]:
    """Create everything; returns the settings with the queue urls filled in, and the queues by logical id."""
    create_tables(dynamodb, settings)
    queues = create_queues(sqs)
    create_bus_and_rules(events, queues[topology.EVENTS_QUEUE.logical_id].arn)
    settings = settings.model_copy(
        update={
            "delivery_queue_url": queues[topology.DELIVERY_QUEUE.logical_id].url,
            "events_dlq_url": queues[topology.EVENTS_QUEUE.logical_id].dlq_url,
        }
    )
    return settings, queues
