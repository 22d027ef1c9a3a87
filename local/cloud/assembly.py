"""A synthesized cloud assembly directory (what `cdk synth` writes to cdk.out) and its stack templates."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from local.cloud.resources.resource import TemplateError
from local.cloud.template import Template

STACK_ARTIFACT = "aws:cloudformation:stack"


@dataclass(frozen=True)
class CloudAssembly:
    """A synthesized cloud assembly directory (what `cdk synth` writes to cdk.out) and its stack templates."""

    directory: Path
    templates: dict[str, Template]  # by stack (artifact) name
    cached: bool = False  # True when synthesize() reused the directory instead of running the app
    context: dict[str, str] = field(default_factory=dict)  # the context synthesize() was given

    @classmethod
    def load(cls, directory: Path, *, cached: bool = False, context: dict[str, str] | None = None) -> CloudAssembly:
        manifest_path = directory / "manifest.json"
        if not manifest_path.is_file():
            raise TemplateError(f"{directory} is not a cloud assembly: no manifest.json")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        templates = {}
        for name, artifact in manifest.get("artifacts", {}).items():
            if artifact.get("type") != STACK_ARTIFACT:
                continue
            template_file = directory / artifact["properties"]["templateFile"]
            document = json.loads(template_file.read_text(encoding="utf-8"))
            templates[name] = Template(document, assembly_dir=directory, stack_name=name)
        if not templates:
            raise TemplateError(f"the cloud assembly in {directory} holds no stack")
        return cls(directory=directory, templates=templates, cached=cached, context=dict(context or {}))

    @property
    def template(self) -> Template:
        """The one stack's template; the app synthesizes one stack."""
        if len(self.templates) != 1:
            raise TemplateError(f"the assembly holds stacks {sorted(self.templates)}; pick one from .templates")
        return next(iter(self.templates.values()))
