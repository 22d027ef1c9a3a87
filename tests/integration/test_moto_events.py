"""The moto server the local stack runs delivers every event to its rule's queue, each with its own content
and the whole envelope (the account included), although each input path is parsed only once."""

from __future__ import annotations

import json

from moto.core import DEFAULT_ACCOUNT_ID

from local.moto_server import MotoServer


def test_events_reach_the_rules_queue_each_with_its_own_detail() -> None:
    # GIVEN a bus whose rule sends one source's events to a queue
    with MotoServer(port=0, ttl_sweep_seconds=None) as moto:
        events, sqs = moto.client("events"), moto.client("sqs")
        events.create_event_bus(Name="bus")
        url = sqs.create_queue(QueueName="target")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events.put_rule(Name="r", EventBusName="bus", EventPattern=json.dumps({"source": ["s"]}))
        events.put_targets(Rule="r", EventBusName="bus", Targets=[{"Id": "q", "Arn": arn}])

        # WHEN three events are put, one at a time
        for n in range(3):
            events.put_events(
                Entries=[{"Source": "s", "DetailType": "T", "Detail": json.dumps({"n": n}), "EventBusName": "bus"}]
            )

        # THEN the queue holds the three, each with its own detail and the envelope's fields
        bodies = []
        while len(bodies) < 3:
            received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            bodies += [json.loads(m["Body"]) for m in received.get("Messages", [])]
        assert sorted(body["detail"]["n"] for body in bodies) == [0, 1, 2]
        assert {(body["source"], body["detail-type"]) for body in bodies} == {("s", "T")}
        assert {body["account"] for body in bodies} == {DEFAULT_ACCOUNT_ID}
