"""Alarms, the topic they notify, and the dashboard."""

from __future__ import annotations

import json
from typing import Any

from quanttrade_ws import topology
from tests.infra.conftest import Synth


def _alarms(synth: Synth) -> list[dict[str, Any]]:
    return [alarm["Properties"] for alarm in synth.resources("AWS::CloudWatch::Alarm").values()]


def _alarms_on(synth: Synth, metric_name: str, namespace: str) -> list[dict[str, Any]]:
    return [a for a in _alarms(synth) if a.get("MetricName") == metric_name and a.get("Namespace") == namespace]


def _dimension(alarm: dict[str, Any], name: str) -> Any:
    return next(d["Value"] for d in alarm["Dimensions"] if d["Name"] == name)


def test_every_dead_letter_queue_alarms_on_its_first_message(synth: Synth) -> None:
    dlqs = [synth.stack.fanout.dead_letter_queue(q) for q in topology.QUEUES] + [synth.stack.fanout.event_delivery_dlq]
    alarms = _alarms_on(synth, "ApproximateNumberOfMessagesVisible", "AWS/SQS")
    watched = {json.dumps(_dimension(alarm, "QueueName")): alarm for alarm in alarms}
    for dlq in dlqs:
        alarm = watched[json.dumps({"Fn::GetAtt": [synth.logical_id(dlq), "QueueName"]})]
        assert alarm["Threshold"] == 0
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold"


def test_function_errors_and_throttles_alarm_for_every_function(synth: Synth) -> None:
    for metric in ("Errors", "Throttles"):
        watched = {json.dumps(_dimension(a, "FunctionName")) for a in _alarms_on(synth, metric, "AWS/Lambda")}
        for declared in topology.FUNCTIONS:
            assert json.dumps({"Ref": synth.function_id(declared)}) in watched, (metric, declared.name)


def test_authorizer_and_fanout_errors_are_alarmed(synth: Synth) -> None:
    watched = {json.dumps(_dimension(a, "FunctionName")) for a in _alarms_on(synth, "Errors", "AWS/Lambda")}
    for declared in (topology.AUTHORIZER, topology.FANOUT, topology.DELIVERY):
        assert json.dumps({"Ref": synth.function_id(declared)}) in watched


def test_custom_delivery_metrics_are_alarmed(synth: Synth) -> None:
    for name in ("DeliveryFailed", "Throttled", "InternalErrors"):
        (alarm,) = _alarms_on(synth, name, "QuantTrade")
        assert alarm["Dimensions"] == [{"Name": "service", "Value": "websocket"}]
        assert alarm["Statistic"] == "Sum"


def test_delivery_lag_p99_is_alarmed_against_the_threshold(synth: Synth) -> None:
    (alarm,) = _alarms_on(synth, "DeliveryLag", "QuantTrade")
    assert alarm["ExtendedStatistic"] == "p99"
    assert alarm["Threshold"] == 2000
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"


def test_source_queue_age_is_alarmed(synth: Synth) -> None:
    watched = {
        json.dumps(_dimension(a, "QueueName")) for a in _alarms_on(synth, "ApproximateAgeOfOldestMessage", "AWS/SQS")
    }
    for declared in topology.QUEUES:
        queue_id = synth.logical_id(synth.stack.fanout.queue(declared))
        assert json.dumps({"Fn::GetAtt": [queue_id, "QueueName"]}) in watched


def test_every_alarm_notifies_the_encrypted_topic(synth: Synth) -> None:
    (topic_id, topic), *others = synth.resources("AWS::SNS::Topic").items()
    assert not others
    assert "KmsMasterKeyId" in topic["Properties"]
    for alarm in _alarms(synth):
        assert alarm["AlarmActions"] == [{"Ref": topic_id}], alarm.get("AlarmDescription")
        assert alarm["TreatMissingData"] == "notBreaching"
    (policy,) = synth.resources("AWS::SNS::TopicPolicy").values()
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    assert any(s["Effect"] == "Deny" and "aws:SecureTransport" in json.dumps(s.get("Condition")) for s in statements)
    assert any(s["Effect"] == "Allow" and s["Principal"] == {"Service": "cloudwatch.amazonaws.com"} for s in statements)


def test_dashboard_shows_connections_deliveries_and_lag(synth: Synth) -> None:
    (dashboard,) = synth.resources("AWS::CloudWatch::Dashboard").values()
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    for metric in (
        "ConnectionsOpened",
        "ConnectionsClosed",
        "Delivered",
        "DeliveryLag",
        "DeliveryFailed",
        "InternalErrors",
    ):
        assert metric in body, metric
