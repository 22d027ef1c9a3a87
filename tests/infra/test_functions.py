"""The Lambda functions: runtime, layers, logs, and the environment they are given."""

from __future__ import annotations

import json
from typing import Any

from quanttrade_ws import topology
from quanttrade_ws.config import Settings
from tests.infra.conftest import CHUNK_SIZE_OVERRIDE, ROOMS_PER_CLIENT_OVERRIDE, Synth


def _function(synth: Synth, declared: topology.Function) -> dict[str, Any]:
    return synth.json["Resources"][synth.function_id(declared)]["Properties"]


def _env(synth: Synth, declared: topology.Function) -> dict[str, Any]:
    return _function(synth, declared)["Environment"]["Variables"]


def test_one_function_per_declaration(synth: Synth) -> None:
    assert len(synth.resources("AWS::Lambda::Function")) == len(topology.FUNCTIONS)


def test_every_function_is_arm64_python313_with_its_declared_shape(synth: Synth) -> None:
    for declared in topology.FUNCTIONS:
        function = _function(synth, declared)
        assert function["Architectures"] == ["arm64"], declared.name
        assert function["Runtime"] == "python3.13", declared.name
        assert function["Handler"] == declared.handler
        assert function["MemorySize"] == declared.memory_mb
        assert function["Timeout"] == declared.timeout_seconds
        assert function["TracingConfig"] == {"Mode": "Active"}


def test_every_function_gets_the_shared_and_dependency_layers(synth: Synth) -> None:
    layers = synth.resources("AWS::Lambda::LayerVersion")
    assert len(layers) == 2
    for layer in layers.values():
        assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
        assert layer["Properties"]["CompatibleRuntimes"] == ["python3.13"]
    for declared in topology.FUNCTIONS:
        assert sorted(ref["Ref"] for ref in _function(synth, declared)["Layers"]) == sorted(layers)


def test_every_function_logs_json_to_its_own_log_group(synth: Synth) -> None:
    log_groups = synth.resources("AWS::Logs::LogGroup")
    seen = set()
    for declared in topology.FUNCTIONS:
        logging = _function(synth, declared)["LoggingConfig"]
        assert logging["LogFormat"] == "JSON"
        log_group_id = logging["LogGroup"]["Ref"]
        assert log_group_id in log_groups
        seen.add(log_group_id)
    assert len(seen) == len(topology.FUNCTIONS)


def test_every_log_group_has_a_retention(synth: Synth) -> None:
    for logical_id, log_group in synth.resources("AWS::Logs::LogGroup").items():
        assert log_group["Properties"].get("RetentionInDays", 0) > 0, logical_id


def test_every_function_has_its_own_role(synth: Synth) -> None:
    roles = [json.dumps(_function(synth, declared)["Role"]) for declared in topology.FUNCTIONS]
    assert len(set(roles)) == len(roles)


def test_environment_carries_powertools_and_the_functions_resources(synth: Synth) -> None:
    for declared in topology.FUNCTIONS:
        env = _env(synth, declared)
        assert env["POWERTOOLS_SERVICE_NAME"] == "quanttrade-websocket"
        assert env["POWERTOOLS_METRICS_NAMESPACE"] == "QuantTrade"
        assert env["POWERTOOLS_LOG_LEVEL"] == "INFO"
        # the shared package sets nothing at import: the cold-start setting travels in the environment
        assert env["PYDANTIC_DISABLE_PLUGINS"] == "1"
        for table in topology.TABLES:
            assert env[table.env_var] == {"Ref": synth.logical_id(synth.stack.tables[table])}
        for queue in declared.sends_to:
            assert env[queue.env_var] == {"Ref": synth.logical_id(synth.stack.fanout.queue(queue))}
        if declared.dead_letters_of is not None:
            dlq = synth.stack.fanout.dead_letter_queue(declared.dead_letters_of)
            assert env[declared.dead_letters_of.dlq_env_var] == {"Ref": synth.logical_id(dlq)}


def test_context_settings_reach_every_function(synth: Synth) -> None:
    for declared in topology.FUNCTIONS:
        env = _env(synth, declared)
        assert env["QT_LIMIT_ROOMS_PER_CLIENT"] == ROOMS_PER_CLIENT_OVERRIDE
        assert env["QT_CHUNK_SIZE"] == str(CHUNK_SIZE_OVERRIDE)


def test_each_environment_rebuilds_valid_settings(synth: Synth) -> None:
    # GIVEN a function's environment, with CloudFormation references standing in as strings
    for declared in topology.FUNCTIONS:
        env = {k: v if isinstance(v, str) else f"resolved:{k}" for k, v in _env(synth, declared).items()}
        # WHEN the handler's settings model reads it
        settings = Settings.from_env(env)
        # THEN it validates and points at the stack's resources
        assert settings.connections_table == "resolved:CONNECTIONS_TABLE"
        assert settings.jwt_secret is None
        assert settings.jwt_secret_arn == "resolved:QT_JWT_SECRET_ARN"
        assert settings.session_secret is None
        assert settings.session_secret_arn == "resolved:QT_SESSION_SECRET_ARN"


def test_the_keys_are_never_in_an_environment_or_the_template(synth: Synth) -> None:
    # GIVEN the stack's two generated keys: one for access tokens, one of its own for session tokens
    secrets = synth.resources("AWS::SecretsManager::Secret")
    access_id = synth.logical_id(synth.stack.token_key.secret)
    session_id = synth.logical_id(synth.stack.token_key.session_secret)
    assert set(secrets) == {access_id, session_id}
    for secret in secrets.values():
        assert "GenerateSecretString" in secret["Properties"]
        assert "SecretString" not in secret["Properties"]
    # THEN functions get their ARNs only
    for declared in topology.FUNCTIONS:
        env = _env(synth, declared)
        secret_keys = {key for key in env if "SECRET" in key}
        assert secret_keys == {"QT_JWT_SECRET_ARN", "QT_SESSION_SECRET_ARN"}, declared.name
        assert env["QT_JWT_SECRET_ARN"] == {"Ref": access_id}
        assert env["QT_SESSION_SECRET_ARN"] == {"Ref": session_id}


def test_code_comes_from_the_handlers_directory_asset(synth: Synth) -> None:
    keys = {json.dumps(_function(synth, declared)["Code"]) for declared in topology.FUNCTIONS}
    assert len(keys) == 1, "all functions share one handlers/ asset"
