"""Assemble the CDK app: context, the dependency layer, the stack, cdk-nag.

Shared by `app.py` (what `cdk synth` and `python app.py` run) and the infra
tests, so the tests synthesise exactly what gets deployed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aws_cdk import App, Aspects, Environment, Tags
from cdk_nag import AwsSolutionsChecks

from infra.context import infra_config
from infra.functions import DepsLayerSource
from infra.layers_build import ensure_deps_layer
from infra.stack import QuantTradeStack

REPO_ROOT = Path(__file__).resolve().parent.parent
CDK_JSON = REPO_ROOT / "cdk.json"


def cdk_json_context(path: Path = CDK_JSON) -> dict[str, Any]:
    """The context defaults in cdk.json; the CDK CLI passes them itself, `python app.py` needs them read."""
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text(encoding="utf-8")).get("context", {}))


def create_app(*, context: Mapping[str, Any] | None = None, outdir: str | None = None) -> tuple[App, QuantTradeStack]:
    """Build the app; `context` acts like `-c` and wins over cdk.json and the CLI's context."""
    app = App(
        context=cdk_json_context(),
        post_cli_context=dict(context or {}),
        outdir=outdir or os.environ.get("CDK_OUTDIR") or str(REPO_ROOT / "cdk.out"),
    )
    config = infra_config(app.node)
    if config.deps_layer_dir:
        deps_layer = DepsLayerSource(Path(config.deps_layer_dir).resolve(), content_hash=None)
    else:
        built = ensure_deps_layer()
        deps_layer = DepsLayerSource(built.path, built.content_hash)

    # Without account and region the stack is environment-agnostic: ARNs and
    # URLs use AWS::AccountId / AWS::Region, so synth needs no credentials.
    env = Environment(account=config.account, region=config.region) if config.account or config.region else None
    # The stack's name is its construct id: `QuantTrade-<stage>`, one stack per stage.
    stack = QuantTradeStack(
        app,
        config.stack_name,
        env=env,
        config=config,
        deps_layer=deps_layer,
        description="QuantTrade real-time WebSocket backend (API Gateway, Lambda, DynamoDB, EventBridge, SQS)",
    )
    # On the app, so every resource of every stack carries them; CloudFormation
    # also propagates stack tags to what it creates on the stack's behalf.
    for key, value in config.tags.items():
        Tags.of(app).add(key, value)
    Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    return app, stack
