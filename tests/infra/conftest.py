"""One synthesis of the real app per test session, shared by every infra test.

The dependency layer is the real build (taken from the .build/ cache when it
is current). Only when it cannot be built, because PyPI is out of reach and
there is no cache, does the session fall back to an empty stand-in directory
through the `deps_layer_dir` context key, so the template can still be checked.
"""

from __future__ import annotations

import json
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

    outdir = tmp_path_factory.mktemp("cdk.out")
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
