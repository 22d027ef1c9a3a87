"""The template's functions as local Lambda functions: code, layers, limits, and each one's role."""

from __future__ import annotations

from pathlib import Path

from local.cloud.deployment import Deployment
from local.cloud.template import Template
from local.deps_layer import local_layer
from local.lambda_runtime.environment import DEFAULT_ACCOUNT, Credentials
from local.lambda_runtime.function import LambdaFunction
from local.principals import Principal, Principals

# Lambda's default concurrency is the account's (1,000); two cores cannot hold that many interpreters.
# Functions without reserved concurrency get this many execution environments locally. Four keep both
# cores busy while invocations wait on DynamoDB and the gateway; more only add cold starts and switching:
# 1,000 clients connecting and subscribing in waves of 250 cost the stack 27.7 and 30.3 CPU-s with 4
# against 32.6 and 34.2 with 8 (alternated, `bench.stack_server`, the 2-core development machine).
DEFAULT_LOCAL_CONCURRENCY = 4


def local_layers(template: Template) -> dict[Path, Path]:
    """Each layer directory of the assembly -> what stands in for it on this machine (see local.deps_layer)."""
    layer_dirs = {d for f in template.functions.values() for d in f.layer_dirs}
    return {layer_dir: local_layer(layer_dir) for layer_dir in sorted(layer_dirs)}


def local_function(
    template: Template,
    deployment: Deployment,
    logical_id: str,
    layers: dict[Path, Path],
    runtime_dir: Path,
    region: str,
    idle_limit_seconds: float,
) -> LambdaFunction:
    """The function `logical_id` declares: its handler, code asset, layers, timeout, memory and concurrency; its
    environments shut down after `idle_limit_seconds` idle (0: never)."""
    declared = template.functions[logical_id]
    return LambdaFunction(
        deployment.ref(logical_id),
        declared.handler,
        code_dirs=[declared.code_dir],
        layer_dirs=[layers[layer_dir] for layer_dir in declared.layer_dirs],
        runtime_dir=runtime_dir,
        timeout_seconds=declared.timeout,
        memory_mb=declared.memory_size,
        concurrency=declared.reserved_concurrency or DEFAULT_LOCAL_CONCURRENCY,
        idle_limit_seconds=idle_limit_seconds,
        region=region,
        account=DEFAULT_ACCOUNT,
    )


def register_role(principals: Principals, template: Template, deployment: Deployment, logical_id: str) -> Principal:
    """The function's role as the front door and the gateway check it: the template's policies, resolved."""
    declared = template.functions[logical_id]
    return principals.register_function(
        deployment.ref(logical_id), deployment.ref(declared.role_logical_id), deployment.role_policies(logical_id)
    )


def credentials_of(principal: Principal) -> Credentials:
    """The role's temporary keys, as the function's runtime receives them."""
    keys = principal.credentials
    return Credentials(keys.access_key_id, keys.secret_key, keys.session_token)
