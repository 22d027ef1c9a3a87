"""Context keys: parsed, validated, and refused when they would be unsafe. No synthesis needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, CfnElement

from infra.application import create_app
from infra.context import ContextError, infra_config, settings_overrides
from quanttrade_ws import topology


def _app(context: dict[str, Any]) -> App:
    return App(post_cli_context=context)


@pytest.fixture
def stand_in_layer(tmp_path: Path) -> str:
    (tmp_path / "python").mkdir()
    return str(tmp_path)


def test_settings_json_and_single_keys_combine_with_single_keys_winning() -> None:
    # GIVEN a JSON object and dotted keys, as `-c` delivers them (strings)
    app = _app(
        {
            "settings": '{"chunk_size": 500, "log_level": "DEBUG", "limits": {"rooms_per_client": 5}}',
            "settings.chunk_size": "800",
            "settings.limits.clients_per_room": "20",
        }
    )
    # WHEN they are read
    overrides = settings_overrides(app.node)
    # THEN both forms count and the single key wins
    assert overrides == {
        "chunk_size": "800",
        "log_level": "DEBUG",
        "limits": {"rooms_per_client": 5, "clients_per_room": "20"},
    }


def test_settings_from_cdk_json_may_be_an_object() -> None:
    assert settings_overrides(_app({"settings": {"history_seconds": 60}}).node) == {"history_seconds": 60}


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"settings.jwt_secret": "hunter2"}, "written into the template"),
        ({"settings": '{"jwt_secret": "hunter2"}'}, "written into the template"),
        ({"settings.session_secret": "hunter2"}, "written into the template"),
        ({"settings.session_secret_arn": "arn:x"}, "set by the stack"),
        ({"settings.connections_table": "other"}, "set by the stack"),
        ({"settings.events_dlq_url": "https://x"}, "set by the stack"),
        ({"settings.no_such_field": "1"}, "unknown settings"),
        ({"settings": "{not json"}, "not valid JSON"),
        ({"settings": "[1, 2]"}, "must be a JSON object"),
        ({"settings.limits.a.b": "1"}, "does not name a settings field"),
    ],
)
def test_unsafe_or_unknown_settings_are_refused(context: dict[str, Any], message: str) -> None:
    with pytest.raises(ContextError, match=message):
        settings_overrides(_app(context).node)


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"log_retention_days": "31"}, "log_retention_days"),
        ({"removal_policy": "keep"}, "removal_policy"),
        ({"domain_name": "ws.example.com"}, "give both or neither"),
        ({"throttle_rate_limit": "-1"}, "throttle_rate_limit"),
        ({"stage_name": "bad stage"}, "stage_name"),
        ({"stage": "dev_1"}, "stage"),  # no underscore: the stage goes into the stack name
        ({"stage": "x" * 33}, "stage"),
        ({"owner": "team<x>"}, "owner"),
        ({"removal_policy": "snapshot"}, "no Snapshot deletion policy"),
    ],
)
def test_bad_infrastructure_context_is_refused(context: dict[str, Any], message: str) -> None:
    with pytest.raises(ContextError, match=message):
        infra_config(_app(context).node)


def test_the_stage_names_the_stack_the_bus_and_the_api_stage() -> None:
    # GIVEN only a stage
    config = infra_config(_app({"stage": "dev", "owner": "team-x"}).node)
    # THEN every name derives from it, and the WebSocket API stage follows it
    assert config.stack_name == "QuantTrade-dev"
    assert config.event_bus_name == "quanttrade-dev"
    assert config.physical_name("WebSocket") == "QuantTrade-dev-WebSocket"
    assert config.api_stage_name == "dev"
    assert config.tags == {"Project": "QuantTrade", "Stage": "dev", "Owner": "team-x"}


def test_stage_name_still_sets_the_api_stage_alone() -> None:
    # GIVEN the older key, which only ever named the WebSocket API stage
    config = infra_config(_app({"stage": "dev", "stage_name": "v1"}).node)
    # THEN it keeps that meaning, and the deployment's names follow the stage
    assert (config.api_stage_name, config.stack_name) == ("v1", "QuantTrade-dev")


def test_without_context_the_stage_is_prod() -> None:
    config = infra_config(_app({}).node)
    assert (config.stage, config.api_stage_name, config.stack_name) == ("prod", "prod", "QuantTrade-prod")
    assert config.owner == "quanttrade-platform"


def test_infrastructure_context_strings_are_coerced() -> None:
    config = infra_config(_app({"log_retention_days": "90", "apigw_account_logging_role": "false"}).node)
    assert config.log_retention_days == 90
    assert config.apigw_account_logging_role is False


@pytest.mark.parametrize(
    "context",
    [
        {"settings.limits.rooms_per_client": "0"},
        {"settings.token_expiry_hours": "soon"},
        {"settings.jwt_algorithm": "RS256"},  # RS256 without a JWKS URL
        {"settings.jwt_algorithm": "HS256", "jwks_url": "https://auth.example.com/jwks.json"},
        {"settings.log_level": "CHATTY"},
    ],
)
def test_bad_setting_values_fail_synth(context: dict[str, Any], stand_in_layer: str) -> None:
    with pytest.raises(ContextError):
        create_app(context={**context, "deps_layer_dir": stand_in_layer})


def test_jwks_url_switches_access_tokens_to_rs256(stand_in_layer: str) -> None:
    # GIVEN a JWKS URL in context
    _, stack = create_app(
        context={"jwks_url": "https://auth.example.com/.well-known/jwks.json", "deps_layer_dir": stand_in_layer}
    )
    # WHEN the authorizer's environment is resolved
    env = stack.resolve(stack.functions.environments[topology.AUTHORIZER.name])
    # THEN it verifies RS256 against the URL, with no access-token secret (none is created), and session
    # tokens keep their generated key (by ARN only)
    assert env["QT_JWT_ALGORITHM"] == "RS256"
    assert env["QT_JWKS_URL"] == "https://auth.example.com/.well-known/jwks.json"
    assert stack.token_key.secret is None and "QT_JWT_SECRET_ARN" not in env
    secret = stack.token_key.session_secret.node.default_child
    assert isinstance(secret, CfnElement)
    assert env["QT_SESSION_SECRET_ARN"] == {"Ref": stack.get_logical_id(secret)}


def test_custom_domain_fronts_the_websocket_api(stand_in_layer: str) -> None:
    _, stack = create_app(
        context={
            "domain_name": "ws.example.com",
            "certificate_arn": "arn:aws:acm:us-east-1:111111111111:certificate/abc",
            "deps_layer_dir": stand_in_layer,
        }
    )
    assert stack.websocket.domain is not None
    assert stack.websocket.url == "wss://ws.example.com"
