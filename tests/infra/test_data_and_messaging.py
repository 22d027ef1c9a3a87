"""Tables, queues, the event bus and what feeds and drains them."""

from __future__ import annotations

import json
from collections.abc import Callable

from quanttrade_ws import topology
from tests.infra.conftest import Synth

FOURTEEN_DAYS = 14 * 24 * 3600


def _table(synth: Synth, declared: topology.Table) -> dict:
    return synth.json["Resources"][synth.logical_id(synth.stack.tables[declared])]["Properties"]


def test_every_table_expires_rows_and_recovers_to_a_point_in_time(synth: Synth) -> None:
    assert len(synth.resources("AWS::DynamoDB::Table")) == len(topology.TABLES)
    for declared in topology.TABLES:
        table = _table(synth, declared)
        assert table["TimeToLiveSpecification"] == {"AttributeName": declared.ttl_attribute, "Enabled": True}
        assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
        assert table["BillingMode"] == "PAY_PER_REQUEST"
        assert table["SSESpecification"]["SSEEnabled"] is True


def test_tables_have_the_declared_keys_and_indexes(synth: Synth) -> None:
    for declared in topology.TABLES:
        table = _table(synth, declared)
        keys = {key["AttributeName"]: key["KeyType"] for key in table["KeySchema"]}
        expected = {declared.partition_key: "HASH"}
        if declared.sort_key:
            expected[declared.sort_key] = "RANGE"
        assert keys == expected, declared.logical_id
        types = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}
        for name, kind in types.items():
            assert kind == declared.key_type(name), (declared.logical_id, name)
        indexes = {index["IndexName"]: index for index in table.get("GlobalSecondaryIndexes", [])}
        assert set(indexes) == {index.name for index in declared.indexes}
        for index in declared.indexes:
            schema = {key["AttributeName"]: key["KeyType"] for key in indexes[index.name]["KeySchema"]}
            assert schema[index.partition_key] == "HASH"
            if index.sort_key:
                assert schema[index.sort_key] == "RANGE"


def test_tables_survive_stack_deletion_by_default(synth: Synth) -> None:
    for declared in topology.TABLES:
        resource = synth.json["Resources"][synth.logical_id(synth.stack.tables[declared])]
        assert resource["DeletionPolicy"] == "Retain"


def test_a_destroy_stage_keeps_only_api_gateways_account_wide_logging_setting(
    synth: Synth, variant: Callable[[str], Synth]
) -> None:
    # GIVEN the default stage THEN the alarm topic's key is kept with the data it encrypted
    (default_key,) = synth.resources("AWS::KMS::Key").values()
    assert default_key["DeletionPolicy"] == "Retain"
    # GIVEN a throwaway stage (removal_policy=destroy)
    throwaway = variant("destroy")
    # THEN nothing outlives the stack but the account's API Gateway logging role and the setting that names it,
    # which other APIs in the account and region rely on
    retained = {
        resource["Type"]
        for resource in throwaway.json["Resources"].values()
        if resource.get("DeletionPolicy", "Delete") != "Delete"
    }
    assert retained == {"AWS::ApiGateway::Account", "AWS::IAM::Role"}
    # AND the key is scheduled for deletion after KMS's shortest waiting period
    (key,) = throwaway.resources("AWS::KMS::Key").values()
    assert (key["DeletionPolicy"], key["Properties"]["PendingWindowInDays"]) == ("Delete", 7)


def test_every_source_queue_has_a_matching_dead_letter_queue(synth: Synth) -> None:
    resources = synth.json["Resources"]
    for declared in topology.QUEUES:
        queue = resources[synth.logical_id(synth.stack.fanout.queue(declared))]["Properties"]
        redrive = queue["RedrivePolicy"]
        assert redrive["maxReceiveCount"] == declared.max_receive_count
        dlq_id = redrive["deadLetterTargetArn"]["Fn::GetAtt"][0]
        assert dlq_id == synth.logical_id(synth.stack.fanout.dead_letter_queue(declared))
        dlq = resources[dlq_id]["Properties"]
        assert dlq["MessageRetentionPeriod"] == FOURTEEN_DAYS
        assert bool(queue.get("FifoQueue")) == declared.fifo
        assert bool(dlq.get("FifoQueue")) == declared.fifo
        assert queue["VisibilityTimeout"] == declared.visibility_timeout_seconds


def test_events_queue_deduplicates_by_content_for_eventbridge(synth: Synth) -> None:
    queue = synth.json["Resources"][synth.logical_id(synth.stack.fanout.queue(topology.EVENTS_QUEUE))]
    assert queue["Properties"]["ContentBasedDeduplication"] is True


def test_every_queue_is_encrypted_and_refuses_plain_http(synth: Synth) -> None:
    queues = synth.resources("AWS::SQS::Queue")
    policies = json.dumps(synth.resources("AWS::SQS::QueuePolicy"))
    for logical_id, queue in queues.items():
        props = queue["Properties"]
        assert props.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in props, logical_id
        assert logical_id in policies, f"{logical_id} has no queue policy (enforceSSL)"
    for policy in synth.resources("AWS::SQS::QueuePolicy").values():
        statements = policy["Properties"]["PolicyDocument"]["Statement"]
        assert any(
            s["Effect"] == "Deny" and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
            for s in statements
        )


def test_one_rule_per_source_on_the_bus_to_the_events_queue(synth: Synth) -> None:
    bus_id = synth.logical_id(synth.stack.fanout.bus)
    bus = synth.json["Resources"][bus_id]["Properties"]
    assert bus["Name"] == f"{topology.EVENT_BUS_NAME}-prod"  # the default stage's bus
    events_queue_id = synth.logical_id(synth.stack.fanout.queue(topology.EVENTS_QUEUE))
    rules = {
        json.dumps(rule["Properties"]["EventPattern"]["source"]): rule["Properties"]
        for rule in synth.resources("AWS::Events::Rule").values()
        if rule["Properties"].get("EventBusName") == {"Ref": bus_id}
    }
    assert len(rules) == len(topology.SOURCES)
    for source in topology.SOURCES:
        rule = rules[json.dumps([source.source])]
        assert rule["EventPattern"]["detail-type"] == [source.detail_type]
        (target,) = rule["Targets"]
        assert "Arn" in target["DeadLetterConfig"]
        if source.pipe is None:
            assert target["Arn"] == {"Fn::GetAtt": [events_queue_id, "Arn"]}
            assert target["SqsParameters"] == {"MessageGroupId": source.message_group}
        else:
            # A rule's group id is static: a piped source's rule feeds the pipe's standard ingest queue.
            ingest_id = synth.logical_id(synth.stack.fanout.queue(source.pipe.source))
            assert target["Arn"] == {"Fn::GetAtt": [ingest_id, "Arn"]}
            assert "SqsParameters" not in target


def test_the_events_queue_is_high_throughput_fifo_so_each_group_has_its_own_quota(synth: Synth) -> None:
    queue = synth.json["Resources"][synth.logical_id(synth.stack.fanout.queue(topology.EVENTS_QUEUE))]["Properties"]
    assert queue["FifoQueue"] is True
    assert queue["DeduplicationScope"] == "messageGroup"
    assert queue["FifoThroughputLimit"] == "perMessageGroupId"


def test_market_data_is_piped_into_one_message_group_per_symbol(synth: Synth) -> None:
    declared = topology.MARKET_DATA_PIPE
    ingest_id = synth.logical_id(synth.stack.fanout.queue(declared.source))
    events_queue_id = synth.logical_id(synth.stack.fanout.queue(declared.target))
    (pipe,) = synth.resources("AWS::Pipes::Pipe").values()
    props = pipe["Properties"]
    assert props["Source"] == {"Fn::GetAtt": [ingest_id, "Arn"]}
    assert props["Target"] == {"Fn::GetAtt": [events_queue_id, "Arn"]}
    assert props["SourceParameters"]["SqsQueueParameters"] == {"BatchSize": 10, "MaximumBatchingWindowInSeconds": 0}
    assert props["TargetParameters"] == {
        "InputTemplate": "<$.body>",  # the event itself, as a rule would put it, not the pipe's SQS record
        "SqsQueueParameters": {"MessageGroupId": "$.body.detail.symbol", "MessageDeduplicationId": "$.body.id"},
    }
    ingest = synth.json["Resources"][ingest_id]["Properties"]
    assert "FifoQueue" not in ingest and ingest["RedrivePolicy"]["maxReceiveCount"] == declared.source.max_receive_count


def test_the_pipe_role_reads_only_its_source_and_sends_only_to_its_target(synth: Synth) -> None:
    declared = topology.MARKET_DATA_PIPE
    (pipe,) = synth.resources("AWS::Pipes::Pipe").values()
    role_id = pipe["Properties"]["RoleArn"]["Fn::GetAtt"][0]
    role = synth.json["Resources"][role_id]["Properties"]
    (statement,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "pipes.amazonaws.com"}
    assert statement["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    grants = {
        json.dumps(s["Resource"]): sorted([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
        for policy in role["Policies"]
        for s in policy["PolicyDocument"]["Statement"]
    }
    ingest_arn = {"Fn::GetAtt": [synth.logical_id(synth.stack.fanout.queue(declared.source)), "Arn"]}
    target_arn = {"Fn::GetAtt": [synth.logical_id(synth.stack.fanout.queue(declared.target)), "Arn"]}
    assert grants == {
        json.dumps(ingest_arn): ["sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ReceiveMessage"],
        json.dumps(target_arn): ["sqs:SendMessage"],
    }
    assert "ManagedPolicyArns" not in role


def test_bus_events_are_archived_for_replay(synth: Synth) -> None:
    (archive,) = synth.resources("AWS::Events::Archive").values()
    props = archive["Properties"]
    assert props["RetentionDays"] >= 1
    assert props["EventPattern"] == {"source": [{"prefix": "quanttrade."}]}
    assert synth.logical_id(synth.stack.fanout.bus) in json.dumps(props["SourceArn"])


def test_queue_consumers_report_partial_batch_failures(synth: Synth) -> None:
    mappings = list(synth.resources("AWS::Lambda::EventSourceMapping").values())
    consumers = [declared for declared in topology.FUNCTIONS if declared.consumes is not None]
    assert len(mappings) == len(consumers)
    for declared in consumers:
        assert declared.consumes is not None
        queue_id = synth.logical_id(synth.stack.fanout.queue(declared.consumes))
        (mapping,) = [
            m["Properties"] for m in mappings if m["Properties"]["FunctionName"] == {"Ref": synth.function_id(declared)}
        ]
        assert mapping["EventSourceArn"] == {"Fn::GetAtt": [queue_id, "Arn"]}
        assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert mapping["BatchSize"] == declared.batch_size
        assert mapping.get("ScalingConfig", {}).get("MaximumConcurrency") == declared.max_concurrency


def test_delivery_functions_are_capped_where_the_management_api_quota_stays_full(synth: Synth) -> None:
    # Five functions of 64 posts in flight each are about the account's 10,000 calls/s; eight keep it full
    # while some wait on their next batch, their 429s retried to the deadline rather than failed (the AWS
    # model, before it charged the fan-out's CPU per row: 100,000 subscribers in 11.0 s with 8, 12.1 s with 5,
    # 12.4 s with 10; bench/README.md).
    (mapping,) = [
        m["Properties"]
        for m in synth.resources("AWS::Lambda::EventSourceMapping").values()
        if m["Properties"]["FunctionName"] == {"Ref": synth.function_id(topology.DELIVERY)}
    ]
    assert mapping["ScalingConfig"] == {"MaximumConcurrency": 8}


def test_sweeper_runs_every_five_minutes(synth: Synth) -> None:
    sweeper_id = synth.function_id(topology.SWEEPER)
    (rule,) = [
        r["Properties"]
        for r in synth.resources("AWS::Events::Rule").values()
        if "ScheduleExpression" in r["Properties"]
    ]
    assert rule["ScheduleExpression"] == "rate(5 minutes)"
    assert rule["Targets"][0]["Arn"] == {"Fn::GetAtt": [sweeper_id, "Arn"]}
