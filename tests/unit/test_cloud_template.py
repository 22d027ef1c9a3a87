"""Intrinsic functions, physical names, generated secrets and template views, on small hand-written templates."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import pytest

from local.cloud.deployment import Deployment
from local.cloud.intrinsics import Resolver, UnresolvableError
from local.cloud.physical_names import physical_name
from local.cloud.provisioning import creation_order
from local.cloud.resources.resource import TemplateError, referenced_ids
from local.cloud.resources.secrets_manager import PUNCTUATION, GenerateSecretString
from local.cloud.template import Template

PSEUDO = {"AWS::Region": "eu-west-1", "AWS::AccountId": "123456789012", "AWS::Partition": "aws"}


def resolver(**attributes: dict[str, str]) -> Resolver:
    return Resolver(
        ref=lambda lid: attributes[lid]["Ref"],
        get_att=lambda lid, name: attributes[lid][name],
        pseudo={**PSEUDO, "AWS::URLSuffix": "amazonaws.com"},
        parameters={
            "Stage": {"Type": "String", "Default": "prod"},
            "Boot": {"Type": "AWS::SSM::Parameter::Value<String>"},
        },
    )


# ---------------------------------------------------------------- intrinsic functions


def test_ref_getatt_join_and_nested_values_resolve() -> None:
    r = resolver(Q={"Ref": "https://sqs/q", "Arn": "arn:aws:sqs:eu-west-1:123456789012:q"})
    value = {
        "url": {"Ref": "Q"},
        "arns": [{"Fn::GetAtt": ["Q", "Arn"]}, {"Fn::GetAtt": "Q.Arn"}],
        "joined": {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":x:", {"Ref": "AWS::Region"}]]},
        "stage": {"Ref": "Stage"},
    }
    assert r.resolve(value) == {
        "url": "https://sqs/q",
        "arns": ["arn:aws:sqs:eu-west-1:123456789012:q"] * 2,
        "joined": "arn:aws:x:eu-west-1",
        "stage": "prod",
    }


def test_sub_resolves_both_forms_and_keeps_escaped_literals() -> None:
    r = resolver(Api={"Ref": "abc123", "ApiEndpoint": "wss://abc123"})
    assert r.resolve({"Fn::Sub": "https://${Api}.execute-api.${AWS::Region}.${AWS::URLSuffix}/${!stage}"}) == (
        "https://abc123.execute-api.eu-west-1.amazonaws.com/${stage}"
    )
    assert r.resolve({"Fn::Sub": ["${Endpoint}/${Stage}", {"Endpoint": {"Fn::GetAtt": ["Api", "ApiEndpoint"]}}]}) == (
        "wss://abc123/prod"
    )
    assert r.resolve({"Fn::Sub": "${Api.ApiEndpoint}"}) == "wss://abc123"


def test_select_and_split_compose() -> None:
    r = resolver()
    arn = "arn:aws:sqs:eu-west-1:123456789012:my-queue"
    assert r.resolve({"Fn::Select": [5, {"Fn::Split": [":", arn]}]}) == "my-queue"
    with pytest.raises(UnresolvableError, match="out of range"):
        r.resolve({"Fn::Select": [9, {"Fn::Split": [":", arn]}]})


def test_what_cannot_be_resolved_locally_fails_loudly() -> None:
    r = resolver()
    with pytest.raises(UnresolvableError, match="Fn::ImportValue"):
        r.resolve({"Fn::ImportValue": "shared-vpc"})
    with pytest.raises(UnresolvableError, match="Boot"):
        r.resolve({"Ref": "Boot"})  # an SSM parameter has no local value
    with pytest.raises(UnresolvableError, match="AWS::NotificationARNs"):
        r.resolve({"Ref": "AWS::NotificationARNs"})


def test_referenced_ids_follow_ref_and_getatt_but_not_pseudo_parameters() -> None:
    value = {
        "Fn::Join": ["", [{"Ref": "AWS::Region"}, {"Ref": "A"}, {"Fn::GetAtt": ["B", "Arn"]}, {"Fn::GetAtt": "C.Arn"}]]
    }
    assert referenced_ids(value) == ["A", "B", "C"]


# ---------------------------------------------------------------- physical names


def test_generated_names_are_stable_fit_the_service_and_end_in_fifo_for_fifo_queues() -> None:
    name = physical_name("QuantTradeStack", "FanOutEventsQueue721A5F1C", "AWS::SQS::Queue", {"a": 1}, fifo=True)
    assert name.startswith("QuantTradeStack-FanOutEventsQueue721A5F1C-") and name.endswith(".fifo")
    assert name == physical_name("QuantTradeStack", "FanOutEventsQueue721A5F1C", "AWS::SQS::Queue", {"a": 1}, fifo=True)
    # another declaration of the same logical id is another resource
    assert name != physical_name("QuantTradeStack", "FanOutEventsQueue721A5F1C", "AWS::SQS::Queue", {"a": 2}, fifo=True)
    long_rule = physical_name("S" * 100, "L" * 100, "AWS::Events::Rule")
    assert len(long_rule) == 64 and long_rule.startswith("SSS") and "-LLL" in long_rule
    long_queue = physical_name("S" * 100, "L" * 100, "AWS::SQS::Queue", fifo=True)
    assert len(long_queue) == 80 and long_queue.endswith(".fifo")


# ---------------------------------------------------------------- generated secrets


@pytest.mark.parametrize(
    ("properties", "alphabet"),
    [
        ({"PasswordLength": 64, "ExcludePunctuation": True}, string.ascii_letters + string.digits),
        ({"PasswordLength": 20, "ExcludeCharacters": "aeiouAEIOU0/@\"'\\"}, None),
        ({"PasswordLength": 12, "ExcludeUppercase": True, "ExcludeNumbers": True, "IncludeSpace": True}, None),
    ],
)
def test_a_generated_secret_follows_its_spec(properties: dict[str, Any], alphabet: str | None) -> None:
    spec = GenerateSecretString.from_properties(properties)
    for _ in range(20):
        value = spec.generate()
        assert len(value) == properties["PasswordLength"]
        assert not set(value) & set(properties.get("ExcludeCharacters", ""))
        if alphabet is not None:
            assert set(value) <= set(alphabet)
        # RequireEachIncludedType (the default): one of each character type that is not excluded
        for chars in spec.character_classes():
            assert set(value) & set(chars)
        assert spec.admits(value)
    if properties.get("IncludeSpace"):
        assert not set(value) & set(string.ascii_uppercase + string.digits)
        assert set(value) & set(PUNCTUATION)


def test_a_secret_template_gets_the_password_under_its_key() -> None:
    spec = GenerateSecretString.from_properties(
        {"SecretStringTemplate": json.dumps({"username": "svc"}), "GenerateStringKey": "password"}
    )
    document = json.loads(spec.generate())
    assert document["username"] == "svc" and len(document["password"]) == 32


def test_an_impossible_secret_spec_is_refused() -> None:
    spec = GenerateSecretString.from_properties(
        {"ExcludeLowercase": True, "ExcludeUppercase": True, "ExcludeNumbers": True, "ExcludePunctuation": True}
    )
    with pytest.raises(TemplateError, match="every character"):
        spec.generate()


# ---------------------------------------------------------------- a template without moto


def small_template(resources: dict[str, Any]) -> Template:
    return Template({"Resources": resources}, assembly_dir=Path("/nonexistent"), stack_name="Small")


def test_provisioning_order_puts_every_referenced_resource_first() -> None:
    template = small_template(
        {
            "Rule": {
                "Type": "AWS::Events::Rule",
                "Properties": {
                    "EventBusName": {"Ref": "Bus"},
                    "Targets": [{"Id": "t", "Arn": {"Fn::GetAtt": ["Q", "Arn"]}}],
                },
            },
            "Q": {
                "Type": "AWS::SQS::Queue",
                "Properties": {
                    "RedrivePolicy": {"deadLetterTargetArn": {"Fn::GetAtt": ["Dlq", "Arn"]}, "maxReceiveCount": 3}
                },
            },
            "Bus": {"Type": "AWS::Events::EventBus", "Properties": {"Name": "b"}},
            "Dlq": {"Type": "AWS::SQS::Queue", "Properties": {}},
            "Fn": {"Type": "AWS::Lambda::Function", "Properties": {}},
        }
    )
    order = [r.logical_id for r in creation_order(template)]
    assert set(order) == {"Rule", "Q", "Bus", "Dlq"}
    assert order.index("Dlq") < order.index("Q") < order.index("Rule")
    assert order.index("Bus") < order.index("Rule")


def test_resources_that_are_not_created_locally_get_cloudformation_shaped_values() -> None:
    template = small_template(
        {
            "Fn": {"Type": "AWS::Lambda::Function", "Properties": {}},
            "Logs": {"Type": "AWS::Logs::LogGroup", "Properties": {"LogGroupName": "/aws/lambda/fn"}},
            "Api": {"Type": "AWS::ApiGatewayV2::Api", "Properties": {"ProtocolType": "WEBSOCKET"}},
            "Q": {"Type": "AWS::SQS::Queue", "Properties": {}},
        }
    )
    deployment = Deployment(template=template, region="eu-west-1")
    function_arn = deployment.get_att("Fn", "Arn")
    assert function_arn == f"arn:aws:lambda:eu-west-1:123456789012:function:{deployment.ref('Fn')}"
    assert deployment.get_att("Logs", "Arn") == "arn:aws:logs:eu-west-1:123456789012:log-group:/aws/lambda/fn:*"
    # a queue is real or nothing: before provisioning it does not resolve
    with pytest.raises(UnresolvableError, match="before it is provisioned"):
        deployment.ref("Q")
    with pytest.raises(UnresolvableError, match=r"Fn\.Nope"):
        deployment.get_att("Fn", "Nope")


def test_a_bound_api_endpoint_becomes_the_local_gateway() -> None:
    # GIVEN a WebSocket API whose management endpoint the template builds with Fn::Join
    template = small_template({"Api": {"Type": "AWS::ApiGatewayV2::Api", "Properties": {"ProtocolType": "WEBSOCKET"}}})
    deployment = Deployment(template=template, region="us-east-1")
    endpoint = {
        "Fn::Join": [
            "",
            [
                "https://",
                {"Ref": "Api"},
                ".execute-api.",
                {"Ref": "AWS::Region"},
                ".",
                {"Ref": "AWS::URLSuffix"},
                "/prod",
            ],
        ]
    }
    # WHEN the API is bound to the local gateway
    deployment.bind_api("Api", local_base_url="http://127.0.0.1:8081/", api_id="gw0001")
    # THEN the https and wss endpoints map to it, stage kept; the ARN of the API is left alone
    assert deployment.resolve(endpoint) == "https://gw0001.execute-api.us-east-1.amazonaws.com/prod"
    assert deployment.localize(deployment.resolve(endpoint)) == "http://127.0.0.1:8081/prod"
    assert deployment.localize("wss://gw0001.execute-api.us-east-1.amazonaws.com/prod") == "ws://127.0.0.1:8081/prod"
    arn = "arn:aws:execute-api:us-east-1:123456789012:gw0001/prod/*/@connections/*"
    assert deployment.localize(arn) == arn
    with pytest.raises(TemplateError, match="not a AWS::ApiGatewayV2::Api"):
        small = small_template({"Q": {"Type": "AWS::SQS::Queue", "Properties": {}}})
        Deployment(template=small, region="us-east-1").bind_api("Q", local_base_url="http://x")
