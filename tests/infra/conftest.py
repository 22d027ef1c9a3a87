"""One synthesis of the real app per test session, shared by every infra test.

The dependency layer is the real build (taken from the .build/ cache when it
is current). Only when it cannot be built, because PyPI is out of reach and
there is no cache, does the session fall back to an empty stand-in directory
through the `deps_layer_dir` context key, so the template can still be checked.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import Stack
from aws_cdk.assertions import Annotations, Template

from infra.application import create_app
from infra.layers_build import DepsLayerUnavailable, ensure_deps_layer
from infra.stack import QuantTradeStack
from quanttrade_ws import topology

# Set through context in the shared synthesis, to prove the plumbing from
# `-c settings.*` to the functions' environment end to end.
ROOMS_PER_CLIENT_OVERRIDE = "7"
CHUNK_SIZE_OVERRIDE = 250


@dataclass
class Synth:
    stack: QuantTradeStack
    template: Template
    json: dict[str, Any]
    template_path: Path
    annotations: Annotations
    deps_layer_stand_in: bool

    def resources(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {
            logical_id: resource
            for logical_id, resource in self.json["Resources"].items()
            if resource["Type"] == resource_type
        }

    def logical_id(self, construct: Any) -> str:
        """The template logical id of an L2 construct (or its default child)."""
        cfn = construct.node.default_child if construct.node.default_child is not None else construct
        return Stack.of(self.stack).get_logical_id(cfn)

    def function_id(self, declared: topology.Function) -> str:
        return self.logical_id(self.stack.functions[declared])

    def role_id(self, declared: topology.Function) -> str:
        return self.logical_id(self.stack.functions.roles[declared.name])

    def role_statements(self, declared: topology.Function) -> list[dict[str, Any]]:
        """The statements of every policy attached to the function's role."""
        role_ref = {"Ref": self.role_id(declared)}
        return [
            statement
            for policy in self.resources("AWS::IAM::Policy").values()
            if role_ref in policy["Properties"]["Roles"]
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        ]


def _synthesize(context: dict[str, Any], outdir: Path, *, stand_in: bool) -> Synth:
    _, stack = create_app(context=context, outdir=str(outdir))
    template = Template.from_stack(stack)
    as_json = dict(template.to_json())
    template_path = outdir / "template-for-lint.json"
    template_path.write_text(json.dumps(as_json, indent=1))
    return Synth(
        stack=stack,
        template=template,
        json=as_json,
        template_path=template_path,
        annotations=Annotations.from_stack(stack),
        deps_layer_stand_in=stand_in,
    )


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    context: dict[str, Any] = {
        "settings.limits.rooms_per_client": ROOMS_PER_CLIENT_OVERRIDE,
        "settings": json.dumps({"chunk_size": CHUNK_SIZE_OVERRIDE}),
    }
    stand_in = False
    try:
        ensure_deps_layer()
    except DepsLayerUnavailable:
        directory = tmp_path_factory.mktemp("deps-layer-stand-in")
        (directory / "python").mkdir()
        context["deps_layer_dir"] = str(directory)
        stand_in = True
    return _synthesize(context, tmp_path_factory.mktemp("cdk.out"), stand_in=stand_in)


# Every context variant that README.md and infra/context.py document, beyond the
# default (the `synth` fixture, which also carries settings overrides). Each is
# synthesized at most once per session, on demand.
CERTIFICATE_ARN = "arn:aws:acm:eu-west-1:123456789012:certificate/0f6c7d7e-1111-2222-3333-444455556666"
CONTEXT_VARIANTS: dict[str, dict[str, str]] = {
    "stage": {"stage": "dev", "owner": "team-x"},
    "stage_name": {"stage_name": "v1"},
    "destroy": {"removal_policy": "destroy"},
    "jwks_url": {"jwks_url": "https://auth.example.com/.well-known/jwks.json"},
    "custom_domain": {"domain_name": "ws.example.com", "certificate_arn": CERTIFICATE_ARN},
    "alarm_email": {"alarm_email": "oncall@example.com"},
    "no_account_logging_role": {"apigw_account_logging_role": "false"},
    "pinned_environment": {"account": "123456789012", "region": "eu-west-1"},
    "tuned": {
        "throttle_rate_limit": "500",
        "throttle_burst_limit": "1000",
        "log_retention_days": "90",
        "event_archive_retention_days": "7",
        "delivery_lag_threshold_ms": "500",
        "queue_age_threshold_seconds": "120",
    },
    "own_secret": {
        "jwt_secret_arn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:platform/jwt-key-AbC123",
        "jwt_secret_kms_key_arn": "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    },
    "oidc": {
        "jwks_url": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Abc123/.well-known/jwks.json",
        "settings.jwt_issuer": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Abc123",
        "settings.jwt_client_id": "3n4b5urk1ft4fl3mg5e62d9ado",
        "settings.jwt_token_use": "access",
        "settings.jwt_permissions_claim": "cognito:groups",
        "settings.jwt_permission_map": '{"traders": ["read:market_data"]}',
    },
    "cognito": {
        "cognito": "true",
        "cognito_domain_prefix": "quanttrade-test",
        "cognito_callback_urls": "https://app.example.com/callback",
    },
    "settings": {
        "settings": '{"chunk_size": 500, "limits": {"rooms_per_client": 5}}',
        "settings.history_seconds": "600",
        "settings.log_level": "DEBUG",
    },
}


@pytest.fixture(scope="session")
def variant(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Synth]:
    """`variant(name)`: the synthesis of one of CONTEXT_VARIANTS, with a stand-in dependency layer.

    The layer's content does not change the template's shape, and a stand-in
    keeps each variant to a couple of seconds.
    """
    layer = tmp_path_factory.mktemp("variant-deps-layer")
    (layer / "python").mkdir()
    done: dict[str, Synth] = {}

    def synthesized(name: str) -> Synth:
        if name not in done:
            context = {**CONTEXT_VARIANTS[name], "deps_layer_dir": str(layer)}
            done[name] = _synthesize(context, tmp_path_factory.mktemp(f"cdk.out-{name}"), stand_in=True)
        return done[name]

    return synthesized
