"""One stage context names the stack and every physical name, and tags every resource: stages share an account."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cfnlint.schema import PROVIDER_SCHEMA_MANAGER

from tests.infra.conftest import Synth

# Properties that give a resource a name unique in its account and region; a
# resource of these types without the property gets a name CloudFormation makes
# from the stack name, which already differs per stage.
PHYSICAL_NAME_PROPERTIES = {
    "AWS::ApiGatewayV2::Api": "Name",
    "AWS::CloudWatch::Alarm": "AlarmName",
    "AWS::CloudWatch::Dashboard": "DashboardName",
    "AWS::DynamoDB::Table": "TableName",
    "AWS::Events::Archive": "ArchiveName",
    "AWS::Events::EventBus": "Name",
    "AWS::Events::Rule": "Name",
    "AWS::IAM::Role": "RoleName",
    "AWS::KMS::Alias": "AliasName",
    "AWS::Lambda::Function": "FunctionName",
    "AWS::Lambda::LayerVersion": "LayerName",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::SNS::Topic": "TopicName",
    "AWS::SQS::Queue": "QueueName",
    "AWS::SecretsManager::Secret": "Name",
}
TAGS = ("Project", "Stage", "Owner")


def physical_names(synth: Synth) -> dict[tuple[str, str], str]:
    """(type, name) -> logical id for every explicitly named resource."""
    names: dict[tuple[str, str], str] = {}
    for logical_id, resource in synth.json["Resources"].items():
        prop = PHYSICAL_NAME_PROPERTIES.get(resource["Type"])
        value = (resource.get("Properties") or {}).get(prop) if prop else None
        if value is not None:
            assert isinstance(value, str), f"{logical_id}: {prop} must be a literal name, got {value}"
            names[(resource["Type"], value)] = logical_id
    return names


def test_the_stage_names_the_stack(synth: Synth, variant: Callable[[str], Synth]) -> None:
    assert synth.stack.stack_name == "QuantTrade-prod"  # the default stage
    assert variant("stage").stack.stack_name == "QuantTrade-dev"


def test_two_stages_share_no_physical_name(synth: Synth, variant: Callable[[str], Synth]) -> None:
    # GIVEN the default stage (prod) and `-c stage=dev`
    prod, dev = physical_names(synth), physical_names(variant("stage"))
    # THEN the bus, the dashboard and each alarm are named, each name carries its stage, and none collides
    for names, stage in ((prod, "prod"), (dev, "dev")):
        kinds = {kind for kind, _ in names}
        assert {"AWS::Events::EventBus", "AWS::CloudWatch::Dashboard", "AWS::CloudWatch::Alarm"} <= kinds
        assert ("AWS::Events::EventBus", f"quanttrade-{stage}") in names
        assert all(stage in name.lower() for _, name in names), sorted(names)
    assert set(prod).isdisjoint(dev)


def test_the_bus_output_names_the_stages_bus(variant: Callable[[str], Synth]) -> None:
    # Upstream services, `python -m local publish` and the local stack read the bus from this output.
    dev = variant("stage")
    bus_id = dev.logical_id(dev.stack.fanout.bus)
    assert dev.json["Outputs"]["EventBusName"]["Value"] == {"Ref": bus_id}
    assert dev.json["Resources"][bus_id]["Properties"]["Name"] == "quanttrade-dev"


def test_the_stage_is_the_websocket_api_stage_unless_stage_name_says_otherwise(
    synth: Synth, variant: Callable[[str], Synth]
) -> None:
    def api_stage(synthesized: Synth) -> str:
        (stage,) = (
            s["Properties"]["StageName"]
            for s in synthesized.resources("AWS::ApiGatewayV2::Stage").values()
            if s["Properties"]["StageName"] != "$default"  # the admin HTTP API's
        )
        return str(stage)

    assert api_stage(synth) == "prod"
    assert api_stage(variant("stage")) == "dev"
    assert api_stage(variant("stage_name")) == "v1"
    assert variant("stage_name").stack.stack_name == "QuantTrade-prod"


def _tags(properties: dict[str, Any]) -> dict[str, Any]:
    tags = properties.get("Tags") or {}
    if isinstance(tags, list):  # most resources: [{"Key": ..., "Value": ...}]
        return {tag["Key"]: tag["Value"] for tag in tags}
    return dict(tags)  # API Gateway V2, SSM and a few others: a map


def _taggable(resource_type: str) -> bool:
    """Whether CloudFormation's schema for the type has a Tags property (cfn-lint ships the schemas)."""
    schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema("us-east-1", resource_type).schema
    return "Tags" in schema.get("properties", {})


def test_every_taggable_resource_carries_project_stage_and_owner(variant: Callable[[str], Synth]) -> None:
    # GIVEN `-c stage=dev -c owner=team-x`
    dev = variant("stage")
    checked = set()
    for logical_id, resource in dev.json["Resources"].items():
        if not _taggable(resource["Type"]):
            continue
        # THEN every resource that can carry tags carries all three
        tags = _tags(resource.get("Properties") or {})
        assert {key: tags.get(key) for key in TAGS} == {
            "Project": "QuantTrade",
            "Stage": "dev",
            "Owner": "team-x",
        }, logical_id
        checked.add(resource["Type"])
    # (and the check covered the kinds of resource the issue names, in both tag shapes)
    assert {
        "AWS::DynamoDB::Table",
        "AWS::SQS::Queue",
        "AWS::Lambda::Function",
        "AWS::Events::EventBus",
        "AWS::ApiGatewayV2::Api",
    } <= checked
