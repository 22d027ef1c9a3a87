"""EventBridge Pipes locally: JSON paths and target parameters on SQS records, and the template's pipes read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from local.cloud.pipe_paths import (
    InputTemplate,
    JsonPath,
    PipeParameter,
    PipePathError,
    UnresolvedPath,
    sqs_source_event,
)
from local.cloud.resources.resource import TemplateError
from local.cloud.template import Template

EVENT = {
    "id": "evt-1",
    "detail-type": "MarketData",
    "detail": {"symbol": "AAPL", "price": 101.5, "volume": 3, "legs": [{"venue": "XNAS"}], "closed": False},
}


def sqs_message(body: str) -> dict[str, Any]:
    return {"MessageId": "m-1", "ReceiptHandle": "rh-1", "Body": body, "Attributes": {"SentTimestamp": "1"}}


def source_event(body: str = json.dumps(EVENT)) -> dict[str, Any]:
    return sqs_source_event(
        sqs_message(body), source_arn="arn:aws:sqs:us-east-1:123456789012:ingest", region="us-east-1"
    )


# ---------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("$.body.detail.symbol", "AAPL"),
        ("$.body.detail-type", "MarketData"),
        ("$.body.detail.legs[0].venue", "XNAS"),
        ("$.messageId", "m-1"),
        ("$.attributes.SentTimestamp", "1"),
    ],
)
def test_a_path_finds_its_value_in_the_sqs_record_with_the_body_read_as_json(path: str, value: str) -> None:
    # GIVEN an SQS record whose body is an EventBridge event WHEN a path is evaluated THEN it reaches into the body
    assert JsonPath.parse(path).find(source_event()) == value


@pytest.mark.parametrize("path", ["$.body.detail.bid", "$.body.detail.legs[3].venue", "$.body.detail.symbol.x"])
def test_a_path_that_finds_nothing_is_unresolved(path: str) -> None:
    with pytest.raises(UnresolvedPath):
        JsonPath.parse(path).find(source_event())


def test_a_body_that_is_not_json_stays_text_and_paths_into_it_find_nothing() -> None:
    event = source_event("not json {")
    assert event["body"] == "not json {"
    with pytest.raises(UnresolvedPath):
        JsonPath.parse("$.body.detail").find(event)


@pytest.mark.parametrize("text", ["body.detail", "$..detail", "$.body['detail']", "$.body.detail[*]", "$.a b"])
def test_paths_outside_the_pipes_syntax_or_with_wildcards_are_refused(text: str) -> None:
    with pytest.raises(PipePathError):
        JsonPath.parse(text)


# ---------------------------------------------------------------- parameters and templates


def test_a_parameter_is_fixed_text_or_the_whole_value_is_a_path() -> None:
    event = source_event()
    assert PipeParameter.parse("market-data").render(event) == "market-data"
    assert PipeParameter.parse("$.body.detail.symbol").render(event) == "AAPL"
    assert PipeParameter.parse("$.body.detail.volume").render(event) == "3"  # a number becomes its text


@pytest.mark.parametrize("path", ["$.body.detail", "$.body.detail.legs", "$.body.detail.closed"])
def test_a_parameter_that_finds_a_structure_or_a_boolean_is_unresolved(path: str) -> None:
    with pytest.raises(UnresolvedPath, match="not a string"):
        PipeParameter.parse(path).render(source_event())


def test_the_body_template_gives_the_target_the_event_itself() -> None:
    # GIVEN `<$.body>` WHEN rendered THEN the target's body is the EventBridge event, not the SQS record
    rendered = InputTemplate.parse("<$.body>").render(source_event())
    assert json.loads(rendered) == EVENT
    assert InputTemplate.parse("<$.body.detail.symbol>").render(source_event()) == "AAPL"


@pytest.mark.parametrize("text", ['{"e": <$.body>}', "Hello, <$.body.id>", "<aws.pipes.pipe-arn>", ""])
def test_templates_other_than_one_path_are_refused(text: str) -> None:
    with pytest.raises(PipePathError):
        InputTemplate.parse(text)


# ---------------------------------------------------------------- the template's pipes


def template_with(pipe: dict[str, Any], *, fifo: bool = True, content_dedup: bool = True) -> Template:
    target = {"FifoQueue": True, "ContentBasedDeduplication": content_dedup} if fifo else {}
    properties = {
        "RoleArn": {"Fn::GetAtt": ["PipeRole", "Arn"]},
        "Source": {"Fn::GetAtt": ["Ingest", "Arn"]},
        "Target": {"Fn::GetAtt": ["Events", "Arn"]},
        **pipe,
    }
    resources = {
        "Ingest": {"Type": "AWS::SQS::Queue", "Properties": {}},
        "Events": {"Type": "AWS::SQS::Queue", "Properties": target},
        "PipeRole": {"Type": "AWS::IAM::Role", "Properties": {}},
        "Pipe": {"Type": "AWS::Pipes::Pipe", "Properties": properties},
    }
    return Template({"Resources": resources}, assembly_dir=Path("/nonexistent"), stack_name="Small")


GROUPED = {
    "SourceParameters": {"SqsQueueParameters": {"BatchSize": 10, "MaximumBatchingWindowInSeconds": 0}},
    "TargetParameters": {
        "InputTemplate": "<$.body>",
        "SqsQueueParameters": {"MessageGroupId": "$.body.detail.symbol", "MessageDeduplicationId": "$.body.id"},
    },
}


def test_a_pipe_is_read_with_its_queues_role_and_target_parameters() -> None:
    # GIVEN the stack's kind of pipe WHEN the template is read
    (pipe,) = template_with(GROUPED).pipes.values()

    # THEN it names its queues and role, and its target message carries the symbol's group and the event id
    assert (pipe.source_logical_id, pipe.target_logical_id, pipe.role_logical_id) == ("Ingest", "Events", "PipeRole")
    assert pipe.batch_size == 10 and pipe.running
    message = pipe.target_message(source_event())
    assert message["MessageGroupId"] == "AAPL"
    assert message["MessageDeduplicationId"] == "evt-1"
    assert json.loads(message["MessageBody"]) == EVENT


def test_a_pipe_without_an_input_template_sends_the_sqs_record() -> None:
    (pipe,) = template_with({"TargetParameters": {"SqsQueueParameters": {"MessageGroupId": "g"}}}).pipes.values()
    body = json.loads(pipe.target_message(source_event())["MessageBody"])
    assert body["messageId"] == "m-1" and json.loads(body["body"]) == EVENT


@pytest.mark.parametrize(
    ("pipe", "refusal"),
    [
        ({**GROUPED, "Enrichment": "arn:aws:lambda:us-east-1:1:function:f"}, "Enrichment"),
        ({**GROUPED, "SourceParameters": {"FilterCriteria": {"Filters": []}}}, "FilterCriteria"),
        ({**GROUPED, "LogConfiguration": {"Level": "ERROR"}}, "LogConfiguration"),
        ({"TargetParameters": {"SqsQueueParameters": {"MessageGroupId": "$.body.legs[*]"}}}, "wildcard"),
        ({"TargetParameters": {**GROUPED["TargetParameters"], "InputTemplate": '{"e": <$.body>}'}}, "one JSON path"),
        ({**GROUPED, "SourceParameters": {"SqsQueueParameters": {"BatchSize": 100}}}, "BatchSize 100"),
        ({"TargetParameters": {"InputTemplate": "<$.body>"}}, "sets no MessageGroupId"),
    ],
)
def test_what_the_local_stack_cannot_run_fails_the_read_by_name(pipe: dict[str, Any], refusal: str) -> None:
    with pytest.raises(TemplateError, match=refusal):
        _ = template_with(pipe).pipes


def test_a_fifo_target_without_a_deduplication_id_needs_content_based_deduplication() -> None:
    pipe = {"TargetParameters": {"SqsQueueParameters": {"MessageGroupId": "g"}}}
    with pytest.raises(TemplateError, match="MessageDeduplicationId"):
        _ = template_with(pipe, content_dedup=False).pipes
