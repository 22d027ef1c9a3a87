"""The stack's moto picks a JSON-protocol request's operation as AWS does: from X-Amz-Target, never from the body."""

from __future__ import annotations

import json

from local.moto_server import MotoServer


def test_text_that_reads_like_a_query_string_is_stored_and_runs_nothing_else(moto: MotoServer) -> None:
    dynamodb, sqs, events, secrets = (moto.client(name) for name in ("dynamodb", "sqs", "events", "secretsmanager"))
    dynamodb.create_table(
        TableName="kept",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    queue = sqs.create_queue(QueueName="kept")["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody="first")
    events.create_event_bus(Name="kept")
    secrets.create_secret(Name="kept", SecretString="first")

    # WHEN each service is sent a value whose text names another operation, query-string style
    item = "x&Action=DeleteTable&TableName=kept&y=1"
    dynamodb.put_item(TableName="kept", Item={"pk": {"S": item}})
    sqs.send_message(QueueUrl=queue, MessageBody="x&Action=PurgeQueue&y=1")
    detail = json.dumps({"note": "x&Action=DeleteEventBus&Name=kept&y=1"})
    answer = events.put_events(Entries=[{"EventBusName": "kept", "Source": "s", "DetailType": "d", "Detail": detail}])
    secrets.put_secret_value(SecretId="kept", SecretString="x&Action=DeleteSecret&y=1")

    # THEN each did what its X-Amz-Target said, with the value as sent, and nothing else
    assert dynamodb.get_item(TableName="kept", Key={"pk": {"S": item}})["Item"] == {"pk": {"S": item}}
    received = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    assert [message["Body"] for message in received] == ["first", "x&Action=PurgeQueue&y=1"]
    assert answer["FailedEntryCount"] == 0
    assert "kept" in [bus["Name"] for bus in events.list_event_buses()["EventBuses"]]
    secret = secrets.describe_secret(SecretId="kept")
    assert "DeletedDate" not in secret
    assert secrets.get_secret_value(SecretId="kept")["SecretString"] == "x&Action=DeleteSecret&y=1"
