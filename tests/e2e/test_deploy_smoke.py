"""The deploy smoke on the synthesized template, and four deliberately broken copies of it.

What runs locally is what deploys: each broken copy is a defect that would
break the deployed stack (a variable the template forgot, a permission the
role lacks, a wrong handler string, a module missing from the layer), and the
local stack must refuse to start, naming the function and the cause.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from local.cloud.assembly import CloudAssembly
from local.smoke import run_smoke
from local.stack.config import StackConfig, StackStartError
from local.stack.in_thread import BackgroundStack
from tests.e2e.conftest import E2E_SECRET

pytestmark = pytest.mark.e2e


def config(assembly: CloudAssembly, **changes: Any) -> StackConfig:
    return StackConfig(
        gateway_port=0,
        moto_port=0,
        jwt_secret=E2E_SECRET,
        sweep_interval=None,
        connect_rate_per_second=None,
        dashboard=False,
        assembly=assembly,
        **changes,
    )


def function_id(assembly: CloudAssembly, handler: str) -> str:
    return next(lid for lid, f in assembly.template.functions.items() if f.handler == handler)


def broken_copy(
    assembly: CloudAssembly, tmp_path: Path, edit: Callable[[dict[str, Any]], None], copy_assets: bool = False
) -> CloudAssembly:
    """The assembly with its template edited; assets are linked (or copied when the edit changes one)."""
    target = tmp_path / "assembly"
    target.mkdir()
    for entry in assembly.directory.iterdir():
        if entry.is_dir() and copy_assets:
            shutil.copytree(entry, target / entry.name, symlinks=True)
        elif entry.is_dir():
            (target / entry.name).symlink_to(entry)
        else:
            shutil.copy2(entry, target / entry.name)
    template_file = target / f"{assembly.template.stack_name}.template.json"
    document = json.loads(template_file.read_text(encoding="utf-8"))
    edit(document)
    template_file.write_text(json.dumps(document), encoding="utf-8")
    return CloudAssembly.load(target)


def start_fails(assembly: CloudAssembly) -> str:
    background = BackgroundStack(config(assembly))
    with pytest.raises(StackStartError) as refused:
        background.start(timeout=180)
    background.stop()
    return str(refused.value)


def test_every_function_of_the_template_answers_its_samples(assembly: CloudAssembly) -> None:
    # GIVEN the stack running the synthesized template
    background = BackgroundStack(config(assembly, smoke=False))
    stack = background.start(timeout=180)
    try:
        # WHEN the smoke invokes every function with its samples
        report = background.run(run_smoke(stack), timeout=120)
    finally:
        background.stop()

    # THEN every function answered every sample, and none was left out
    assert report.failures == []
    assert set(report.invoked) == set(assembly.template.functions)
    assert sum(len(samples) for samples in report.invoked.values()) >= 25


def test_a_variable_missing_from_a_function_environment_fails_the_start(
    assembly: CloudAssembly, tmp_path: Path
) -> None:
    message_function = function_id(assembly, "message.handler")

    def drop_endpoint(document: dict[str, Any]) -> None:
        del document["Resources"][message_function]["Properties"]["Environment"]["Variables"]["QT_MANAGEMENT_ENDPOINT"]

    reason = start_fails(broken_copy(assembly, tmp_path, drop_endpoint))
    assert message_function in reason
    assert "QT_MANAGEMENT_ENDPOINT" in reason


def test_an_action_removed_from_a_role_fails_the_start(assembly: CloudAssembly, tmp_path: Path) -> None:
    connect_function = function_id(assembly, "connect.handler")
    role = assembly.template.functions[connect_function].role_logical_id

    def drop_put_item(document: dict[str, Any]) -> None:
        for resource in document["Resources"].values():
            if resource["Type"] != "AWS::IAM::Policy" or {"Ref": role} not in resource["Properties"]["Roles"]:
                continue
            for statement in resource["Properties"]["PolicyDocument"]["Statement"]:
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                statement["Action"] = [action for action in actions if action != "dynamodb:PutItem"]

    reason = start_fails(broken_copy(assembly, tmp_path, drop_put_item))
    assert connect_function in reason
    assert "dynamodb:PutItem" in reason
    assert "AccessDenied" in reason


def test_a_wrong_handler_string_fails_the_start(assembly: CloudAssembly, tmp_path: Path) -> None:
    connect_function = function_id(assembly, "connect.handler")

    def misname(document: dict[str, Any]) -> None:
        document["Resources"][connect_function]["Properties"]["Handler"] = "connect.handle"

    reason = start_fails(broken_copy(assembly, tmp_path, misname))
    assert connect_function in reason
    assert "Runtime.HandlerNotFound: Handler 'handle' missing on module 'connect'" in reason


def test_a_module_missing_from_the_dependency_layer_fails_the_start(assembly: CloudAssembly, tmp_path: Path) -> None:
    authorizer = function_id(assembly, "authorizer.handler")
    deps_layer = assembly.template.functions[authorizer].layer_dirs[-1]
    broken = broken_copy(assembly, tmp_path, lambda document: None)
    # The layer as a build that lost PyJWT would package it: its module gone, everything else in place.
    copied = tmp_path / "assembly" / deps_layer.name
    copied.unlink()
    shutil.copytree(deps_layer, copied, symlinks=True)
    shutil.rmtree(copied / "python" / "jwt")

    reason = start_fails(CloudAssembly.load(broken.directory))
    assert authorizer in reason
    assert "No module named 'jwt'" in reason
