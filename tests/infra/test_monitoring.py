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


def _function_alarms(synth: Synth, metric: str) -> dict[str, dict[str, Any]]:
    """Alarms on an AWS/Lambda metric, by the logical id of the function they watch."""
    return {_dimension(a, "FunctionName")["Ref"]: a for a in _alarms_on(synth, metric, "AWS/Lambda")}


def test_function_throttles_alarm_for_every_function(synth: Synth) -> None:
    watched = _function_alarms(synth, "Throttles")
    for declared in topology.FUNCTIONS:
        assert synth.function_id(declared) in watched, declared.name


def test_errors_alarm_for_every_function_but_the_authorizer(synth: Synth) -> None:
    # GIVEN the authorizer answers a refused token with a Deny (no Lambda error)
    watched = _function_alarms(synth, "Errors")
    # THEN every other function pages on its first error, and the authorizer has no Errors alarm at all
    for declared in topology.FUNCTIONS:
        assert (synth.function_id(declared) in watched) is (declared is not topology.AUTHORIZER), declared.name
    for alarm in watched.values():
        assert (alarm["Statistic"], alarm["Threshold"], alarm["Period"]) == ("Sum", 1, 300)


def test_unexpected_authorizer_failures_alarm_on_the_first_one(synth: Synth) -> None:
    # The metric the authorizer emits only when it is at fault, never for a refusal.
    (alarm,) = _alarms_on(synth, "AuthorizerFailures", "QuantTrade")
    assert alarm["Dimensions"] == [{"Name": "service", "Value": "quanttrade-websocket"}]
    assert (alarm["Statistic"], alarm["Threshold"]) == ("Sum", 1)
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert not _alarms_on(synth, "AuthorizerDenied", "QuantTrade")  # refusals never page


def test_p99_duration_alarms_at_80_percent_of_each_functions_timeout(synth: Synth) -> None:
    watched = _function_alarms(synth, "Duration")
    for declared in topology.FUNCTIONS:
        alarm = watched[synth.function_id(declared)]
        assert alarm["ExtendedStatistic"] == "p99"
        assert alarm["Threshold"] == 0.8 * declared.timeout_seconds * 1000  # milliseconds
        assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
        function = synth.json["Resources"][synth.function_id(declared)]["Properties"]
        assert function["Timeout"] == declared.timeout_seconds  # the threshold follows the deployed timeout


def test_every_table_alarms_on_read_and_write_throttles(synth: Synth) -> None:
    for metric in ("ReadThrottleEvents", "WriteThrottleEvents"):
        watched = {_dimension(a, "TableName")["Ref"]: a for a in _alarms_on(synth, metric, "AWS/DynamoDB")}
        for declared, table in synth.stack.tables.items():
            alarm = watched[synth.logical_id(table)]
            assert [d["Name"] for d in alarm["Dimensions"]] == ["TableName"], declared.logical_id
            assert (alarm["Statistic"], alarm["Threshold"], alarm["Period"]) == ("Sum", 1, 300)
            assert (alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (3, 2)  # sustained, not one retried blip


def test_websocket_execution_and_integration_errors_alarm_on_the_api_stage(synth: Synth) -> None:
    api_id = synth.logical_id(synth.stack.websocket.api)
    for metric, threshold in (("ExecutionError", 1), ("IntegrationError", 10)):
        (alarm,) = _alarms_on(synth, metric, "AWS/ApiGateway")
        assert sorted(alarm["Dimensions"], key=lambda d: d["Name"]) == [
            {"Name": "ApiId", "Value": {"Ref": api_id}},
            {"Name": "Stage", "Value": "prod"},
        ]
        assert (alarm["Statistic"], alarm["Threshold"]) == ("Sum", threshold)
    # ClientError holds every refused handshake and bad frame: shown, never alarmed on
    assert not _alarms_on(synth, "ClientError", "AWS/ApiGateway")


def test_every_alarm_is_named_for_its_stage(synth: Synth) -> None:
    names = [alarm["AlarmName"] for alarm in _alarms(synth)]
    assert len(set(names)) == len(names)
    assert all(name.startswith("QuantTrade-prod-") for name in names), names


def test_custom_delivery_metrics_are_alarmed(synth: Synth) -> None:
    for name in ("DeliveryFailed", "Throttled", "InternalErrors"):
        (alarm,) = _alarms_on(synth, name, "QuantTrade")
        assert alarm["Dimensions"] == [{"Name": "service", "Value": "quanttrade-websocket"}]
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


def _dashboard_widgets(synth: Synth) -> dict[str, str]:
    """The dashboard's graphs by title, each as the JSON text of its metrics (Fn::Join parts rejoined)."""
    (dashboard,) = synth.resources("AWS::CloudWatch::Dashboard").values()
    body = dashboard["Properties"]["DashboardBody"]
    parts = body["Fn::Join"][1] if isinstance(body, dict) else [body]
    text = "".join(part if isinstance(part, str) else "REF" for part in parts)
    widgets = json.loads(text)["widgets"]
    return {w["properties"].get("title", ""): json.dumps(w["properties"].get("metrics", [])) for w in widgets}


def test_dashboard_shows_connections_deliveries_per_second_lag_and_errors(synth: Synth) -> None:
    (dashboard,) = synth.resources("AWS::CloudWatch::Dashboard").values()
    assert dashboard["Properties"]["DashboardName"] == "QuantTrade-prod-WebSocket"
    widgets = _dashboard_widgets(synth)
    for metric in ("ConnectCount", "ConnectionsOpened", "ConnectionsClosed"):
        assert metric in widgets["Connections"], metric
    assert "PERIOD(delivered)" in widgets["Deliveries per second"]  # a rate, not a count per period
    assert all(f'"{stat}"' in widgets["DeliveryLag (ms)"] for stat in ("p50", "p99"))
    for metric in ("ExecutionError", "IntegrationError", "InternalErrors", "DeliveryFailed", "AuthorizerFailures"):
        assert metric in widgets["Errors"], metric
