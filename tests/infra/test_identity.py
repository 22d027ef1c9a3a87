"""Identity at synth time: the access-token key (generated, brought, or none with RS256), its output, and the
optional Cognito user pool whose tokens the stack then verifies.

Each variant is synthesized once per module, with an empty stand-in for the dependency layer (its content is
not what these tests look at).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Annotations, Match, Template
from cfnlint.api import ManualArgs, lint

from infra.application import create_app
from infra.context import ContextError
from quanttrade_ws import topology
from quanttrade_ws.auth import ALL_PERMISSIONS
from quanttrade_ws.config import Settings
from tests.infra.conftest import Synth

COMPLETE_ARN = "arn:aws:secretsmanager:eu-west-1:111111111111:secret:platform/quanttrade-jwt-AbC123"
PARTIAL_ARN = "arn:aws:secretsmanager:eu-west-1:111111111111:secret:platform/quanttrade-jwt"
KEY_READERS = {topology.AUTHORIZER.name, topology.MESSAGE.name}
COGNITO_SUPPRESSIONS = {"AwsSolutions-COG2", "AwsSolutions-COG3", "AwsSolutions-COG8"}


@pytest.fixture(scope="module")
def stand_in_layer(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("deps-layer-stand-in")
    (directory / "python").mkdir()
    return str(directory)


def synthesize(context: dict[str, Any], stand_in_layer: str, outdir: Path) -> Synth:
    _, stack = create_app(context={**context, "deps_layer_dir": stand_in_layer}, outdir=str(outdir))
    template = Template.from_stack(stack)
    as_json = dict(template.to_json())
    path = outdir / "template-for-lint.json"
    path.write_text(json.dumps(as_json))
    return Synth(stack, template, as_json, path, Annotations.from_stack(stack), deps_layer_stand_in=True)


@pytest.fixture(scope="module")
def variant(tmp_path_factory: pytest.TempPathFactory, stand_in_layer: str) -> Any:
    cache: dict[str, Synth] = {}

    def get(**context: Any) -> Synth:
        key = json.dumps(context, sort_keys=True)
        if key not in cache:
            cache[key] = synthesize(context, stand_in_layer, tmp_path_factory.mktemp("cdk.out"))
        return cache[key]

    return get


def env_of(synth: Synth, declared: topology.Function) -> dict[str, Any]:
    function = synth.json["Resources"][synth.function_id(declared)]
    return dict(function["Properties"]["Environment"]["Variables"])


def secret_readers(synth: Synth, needle: str) -> set[str]:
    """The functions whose role may read a secret whose ARN (or Ref) contains `needle`."""
    readers = set()
    for declared in topology.FUNCTIONS:
        for statement in synth.role_statements(declared):
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            if "secretsmanager:GetSecretValue" in actions and needle in json.dumps(statement["Resource"]):
                readers.add(declared.name)
    return readers


def nag_findings(synth: Synth) -> list[str]:
    errors = synth.annotations.find_error("*", Match.string_like_regexp("AwsSolutions-.*"))
    warnings = synth.annotations.find_warning("*", Match.any_value())
    return [f"{m.id}: {m.entry.data}" for m in errors + warnings]


def lint_findings(synth: Synth) -> list[str]:
    matches = lint(synth.template_path.read_text(), config=ManualArgs(regions=["us-east-1", "eu-west-1"]))
    return [f"{m.rule.id} {m.message}" for m in matches if not m.rule.id.startswith("I")]


def settings_of(synth: Synth, declared: topology.Function) -> Settings:
    """The function's settings, with references standing in as strings (as test_functions does)."""
    env = {
        key: value if isinstance(value, str) else f"resolved:{key}" for key, value in env_of(synth, declared).items()
    }
    return Settings.from_env(env)


# ---------------------------------------------------------------- HS256: generated or brought


def test_the_generated_key_is_an_output_for_the_token_issuer(synth: Synth) -> None:
    # GIVEN the default stack (HS256, generated key)
    secret_id = synth.logical_id(synth.stack.token_key.secret)
    # THEN the JwtSecretArn output names it: the secret the functions read
    assert synth.json["Outputs"]["JwtSecretArn"]["Value"] == {"Ref": secret_id}
    assert env_of(synth, topology.AUTHORIZER)["QT_JWT_SECRET_ARN"] == {"Ref": secret_id}
    # AND no Cognito resource or output is there
    assert not synth.resources("AWS::Cognito::UserPool")
    assert "UserPoolId" not in synth.json["Outputs"]


@pytest.mark.parametrize(("arn", "granted"), [(COMPLETE_ARN, COMPLETE_ARN), (PARTIAL_ARN, PARTIAL_ARN + "-??????")])
def test_an_operators_secret_replaces_the_generated_key(variant: Any, arn: str, granted: str) -> None:
    # GIVEN an existing secret's ARN, complete or partial
    synth = variant(jwt_secret_arn=arn)
    # THEN no access-token key is generated: the only secret created is the session key
    (session_id,) = synth.resources("AWS::SecretsManager::Secret")
    assert session_id == synth.logical_id(synth.stack.token_key.session_secret)
    # AND functions are told the ARN, the output gives it, and only the key readers may read it
    assert env_of(synth, topology.AUTHORIZER)["QT_JWT_SECRET_ARN"] == arn
    assert synth.json["Outputs"]["JwtSecretArn"]["Value"] == arn
    assert secret_readers(synth, json.dumps(granted)[1:-1]) == KEY_READERS
    # AND the template stays lint- and nag-clean
    assert nag_findings(synth) == []
    assert lint_findings(synth) == []


KMS_KEY = "arn:aws:kms:eu-west-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def test_an_operators_key_may_decrypt_its_secret_for_the_key_readers_only(variant: Any) -> None:
    # GIVEN the operator's secret and the customer managed key that encrypts it
    synth = variant(jwt_secret_arn=COMPLETE_ARN, jwt_secret_kms_key_arn=KMS_KEY)
    # THEN exactly the key readers may decrypt with that key, and only through Secrets Manager
    decrypters = set()
    for declared in topology.FUNCTIONS:
        for statement in synth.role_statements(declared):
            if statement["Action"] == "kms:Decrypt" or "kms:Decrypt" in statement["Action"]:
                assert statement["Resource"] == KMS_KEY
                assert "kms:ViaService" in json.dumps(statement["Condition"])
                decrypters.add(declared.name)
    assert decrypters == KEY_READERS
    assert nag_findings(synth) == []


# ---------------------------------------------------------------- RS256: no access-token secret


def test_rs256_creates_no_access_token_secret(variant: Any) -> None:
    # GIVEN an external RS256 issuer
    synth = variant(jwks_url="https://idp.example.com/.well-known/jwks.json")
    # THEN only the session key exists, no function is told of an access-token secret, and there is no output
    (session_id,) = synth.resources("AWS::SecretsManager::Secret")
    assert synth.stack.token_key.secret is None
    for declared in topology.FUNCTIONS:
        assert "QT_JWT_SECRET_ARN" not in env_of(synth, declared), declared.name
        assert env_of(synth, declared)["QT_SESSION_SECRET_ARN"] == {"Ref": session_id}
    assert "JwtSecretArn" not in synth.json["Outputs"]
    assert secret_readers(synth, session_id) == {topology.MESSAGE.name}


def test_oidc_settings_reach_the_functions(variant: Any) -> None:
    # GIVEN an OIDC issuer with two issuers, an audience and scopes
    synth = variant(
        jwks_url="https://idp.example.com/.well-known/jwks.json",
        **{
            "settings.jwt_issuer": "https://idp.example.com/,https://idp2.example.com/",
            "settings.jwt_audience": "api://quanttrade",
            "settings.jwt_permissions_claim": "scope",
        },
    )
    # THEN the authorizer checks exactly those
    settings = settings_of(synth, topology.AUTHORIZER)
    assert settings.jwt_issuer == ("https://idp.example.com/", "https://idp2.example.com/")
    assert settings.access_token_audience() == ("api://quanttrade",)
    assert settings.jwt_permissions_claim == "scope"


# ---------------------------------------------------------------- Cognito


def test_cognito_creates_a_pool_a_client_and_a_resource_server_of_the_permissions(variant: Any) -> None:
    synth = variant(cognito="true", cognito_domain_prefix="quanttrade-test")
    # THEN one pool, closed to sign-up, with a public client
    (pool,) = synth.resources("AWS::Cognito::UserPool").values()
    assert pool["Properties"]["AdminCreateUserConfig"]["AllowAdminCreateUserOnly"] is True
    (client,) = synth.resources("AWS::Cognito::UserPoolClient").values()
    assert client["Properties"]["GenerateSecret"] is False
    # AND the resource server's scopes are the product's permissions, all of which the client may ask for
    (server,) = synth.resources("AWS::Cognito::UserPoolResourceServer").values()
    assert server["Properties"]["Identifier"] == "quanttrade"
    assert sorted(scope["ScopeName"] for scope in server["Properties"]["Scopes"]) == sorted(ALL_PERMISSIONS)
    allowed = json.dumps(client["Properties"]["AllowedOAuthScopes"])
    for permission in ALL_PERMISSIONS:
        assert f"/{permission}" in allowed, permission
    assert client["Properties"]["AllowedOAuthFlows"] == ["code"]
    # AND no access-token secret: the pool signs the tokens
    assert synth.stack.token_key.secret is None
    assert "JwtSecretArn" not in synth.json["Outputs"]


def test_cognito_identifiers_are_outputs(variant: Any) -> None:
    synth = variant(cognito="true", cognito_domain_prefix="quanttrade-test")
    outputs = {key: value["Value"] for key, value in synth.json["Outputs"].items()}
    pool_id = synth.logical_id(synth.stack.cognito.user_pool)
    client_id = synth.logical_id(synth.stack.cognito.client)
    assert outputs["UserPoolId"] == {"Ref": pool_id}
    assert outputs["UserPoolClientId"] == {"Ref": client_id}
    assert outputs["CognitoResourceServer"] == "quanttrade"
    provider = {"Fn::GetAtt": [pool_id, "ProviderURL"]}
    assert outputs["CognitoIssuer"] == {"Fn::Join": ["", ["https://", provider]]}
    assert outputs["CognitoJwksUrl"] == {"Fn::Join": ["", ["https://", provider, "/.well-known/jwks.json"]]}
    assert "CognitoDomainUrl" in outputs


def test_cognito_tokens_are_what_the_authorizer_verifies(variant: Any) -> None:
    synth = variant(cognito="true", cognito_domain_prefix="quanttrade-test")
    pool_id = synth.logical_id(synth.stack.cognito.user_pool)
    env = env_of(synth, topology.AUTHORIZER)
    # THEN RS256 against the pool's keys, its issuer, its app client, access tokens, scopes without the prefix
    provider = {"Fn::GetAtt": [pool_id, "ProviderURL"]}
    assert env["QT_JWT_ALGORITHM"] == "RS256"
    assert env["QT_JWKS_URL"] == {"Fn::Join": ["", ["https://", provider, "/.well-known/jwks.json"]]}
    assert env["QT_JWT_ISSUER"] == {"Fn::Join": ["", ["https://", provider]]}
    assert env["QT_JWT_CLIENT_ID"] == {"Ref": synth.logical_id(synth.stack.cognito.client)}
    assert (env["QT_JWT_TOKEN_USE"], env["QT_JWT_PERMISSIONS_CLAIM"], env["QT_JWT_SCOPE_PREFIX"]) == (
        "access",
        "scope",
        "quanttrade/",
    )
    assert "QT_JWT_AUDIENCE" not in env
    settings = settings_of(synth, topology.AUTHORIZER)
    assert settings.access_token_audience() is None and settings.jwt_client_id == ("resolved:QT_JWT_CLIENT_ID",)


def test_cognito_stays_nag_and_lint_clean_with_reasoned_suppressions(variant: Any) -> None:
    synth = variant(cognito="true", cognito_domain_prefix="quanttrade-test")
    assert nag_findings(synth) == []
    assert lint_findings(synth) == []
    pool_id = synth.logical_id(synth.stack.cognito.user_pool)
    suppressions = synth.json["Resources"][pool_id]["Metadata"]["cdk_nag"]["rules_to_suppress"]
    assert {s["id"] for s in suppressions} == COGNITO_SUPPRESSIONS
    assert all(len(s["reason"]) >= 60 for s in suppressions)


def test_cognito_groups_may_carry_the_permissions_instead(variant: Any) -> None:
    # GIVEN Cognito with permissions from groups (users who sign in with SRP get no custom scopes)
    synth = variant(
        cognito="true",
        **{
            "settings.jwt_permissions_claim": "cognito:groups",
            "settings.jwt_permission_map": '{"traders": ["read:market_data"], "ops": ["admin"]}',
        },
    )
    settings = settings_of(synth, topology.AUTHORIZER)
    assert settings.jwt_permissions_claim == "cognito:groups"
    assert settings.jwt_permission_map == {"traders": ("read:market_data",), "ops": ("admin",)}
    # AND the scope prefix, which only scopes carry, is not applied to group names
    assert (settings.jwt_token_use, settings.jwt_scope_prefix) == ("access", "")


# ---------------------------------------------------------------- combinations that fail synth


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"settings.jwt_secret_arn": COMPLETE_ARN}, r"-c jwt_secret_arn=arn:aws:secretsmanager"),
        ({"jwt_secret_arn": "my-secret"}, r"jwt_secret_arn"),
        ({"jwt_secret_arn": COMPLETE_ARN, "jwks_url": "https://idp.example.com/jwks"}, r"give one"),
        ({"jwt_secret_arn": COMPLETE_ARN, "settings.jwks_url": "https://idp.example.com/jwks"}, r"HS256 key"),
        ({"cognito": "true", "jwks_url": "https://idp.example.com/jwks"}, r"give one"),
        ({"cognito": "true", "settings.jwt_issuer": "https://other"}, r"\['jwt_issuer'\] would contradict"),
        ({"cognito": "true", "settings.jwks_url": "https://idp.example.com/jwks"}, r"would contradict"),
        ({"cognito_domain_prefix": "quanttrade"}, r"needs cognito=true"),
        ({"jwt_secret_kms_key_arn": KMS_KEY}, r"needs jwt_secret_arn"),
        ({"cognito": "true", "cognito_domain_prefix": "Not_Valid"}, r"cognito_domain_prefix"),
        ({"cognito": "true", "cognito_callback_urls": "http://app.example.com/cb"}, r"http:// only for localhost"),
        ({"settings.jwt_client_id": "abc", "jwks_url": "https://idp.example.com/jwks"}, r"needs jwt_token_use"),
        ({"settings.jwt_permission_map": '{"traders": ["trade:everything"]}'}, r"unknown permissions"),
    ],
)
def test_contradictory_identity_context_fails_synth(context: dict[str, Any], message: str, stand_in_layer: str) -> None:
    with pytest.raises(ContextError, match=message):
        create_app(context={**context, "deps_layer_dir": stand_in_layer})


# ---------------------------------------------------------------- the local stack runs the default only


def test_the_local_stack_finds_the_generated_key_and_says_why_it_cannot_run_without_one(variant: Any) -> None:
    from local.cloud.template import Template as LocalTemplate
    from local.stack.config import StackStartError
    from local.stack.signing_key import signing_key_secret

    # The local stack reads function assets through their metadata, as local.cloud.synth.synthesize asks for it.
    with_assets = {"aws:cdk:enable-asset-metadata": True}

    def local(template: Synth) -> LocalTemplate:
        return LocalTemplate(template.json, assembly_dir=template.template_path.parent, stack_name="QuantTradeStack")

    # GIVEN the default template: the local stack signs development tokens with the generated key
    default = variant(**with_assets)
    assert signing_key_secret(local(default)) == default.logical_id(default.stack.token_key.secret)
    # THEN templates whose access-token key is not the stack's own are refused with the reason
    for context in ({"jwks_url": "https://idp.example.com/jwks"}, {"jwt_secret_arn": COMPLETE_ARN}):
        with pytest.raises(StackStartError, match=r"without a key it generates .* run it without those context keys"):
            signing_key_secret(local(variant(**context, **with_assets)))
