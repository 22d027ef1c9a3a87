"""Deploying: the pinned CDK CLI agrees with aws-cdk-lib, and `make deploy` passes the stage, the context and an
outputs file without approving IAM changes on anyone's behalf."""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from aws_cdk import cloud_assembly_schema

REPO_ROOT = Path(__file__).resolve().parents[2]


def _version(text: str) -> tuple[int, ...]:
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", text)
    assert match, f"{text!r} is not an exact x.y.z version"
    return tuple(int(part) for part in match.groups())


def test_the_cdk_cli_is_pinned_exactly_and_the_lock_agrees() -> None:
    package = json.loads((REPO_ROOT / "package.json").read_text())
    lock = json.loads((REPO_ROOT / "package-lock.json").read_text())
    pinned = package["devDependencies"]["aws-cdk"]
    _version(pinned)
    assert lock["packages"]["node_modules/aws-cdk"]["version"] == pinned
    assert lock["packages"][""]["devDependencies"]["aws-cdk"] == pinned


def test_the_libraries_that_synthesize_a_deploy_are_pinned_exactly() -> None:
    # A range would let a fresh environment pick a newer aws-cdk-lib than the pinned CLI reads
    requirements = (REPO_ROOT / "requirements-dev.txt").read_text()
    pins = dict(re.findall(r"^(aws-cdk-lib|constructs|cdk-nag)==(\S+)$", requirements, flags=re.MULTILINE))
    assert sorted(pins) == ["aws-cdk-lib", "cdk-nag", "constructs"]
    for version in pins.values():
        _version(version)


def test_the_pinned_cli_reads_the_cloud_assembly_this_aws_cdk_lib_writes() -> None:
    # GIVEN the CLI release that the installed library's cloud assembly schema names as the first to support it
    # (since 2025 the CLI, 2.1xxx.y, is versioned apart from aws-cdk-lib, 2.2xx.y: the schema links the two)
    required = cloud_assembly_schema.Manifest.cli_version()
    assert required, "aws-cdk-lib's cloud assembly schema names no CLI version"
    pinned = json.loads((REPO_ROOT / "package.json").read_text())["devDependencies"]["aws-cdk"]
    # THEN the pinned CLI is that release or a later one
    assert _version(pinned) >= _version(required), (
        f"aws-cdk {pinned} is older than {required}, the first CLI that reads cloud assembly schema "
        f"{cloud_assembly_schema.Manifest.version()}: bump package.json and run `npm install --package-lock-only`"
    )


def _make_dry_run(*args: str) -> list[list[str]]:
    """The recipe lines `make -n` would run, as argument lists; prerequisites are taken as built."""
    completed = subprocess.run(
        [
            "make",
            "-n",
            "--always-make",
            *("-o", ".venv/.installed", "-o", ".venv/.dev-paths", "-o", "node_modules/.package-lock.json"),
            *args,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [shlex.split(line) for line in completed.stdout.splitlines() if line.strip()]


def _cdk_command(lines: list[list[str]], command: str) -> list[str]:
    (line,) = [line for line in lines if line[:3] == ["npx", "--no-install", "cdk"] and command in line]
    return line


def _context(line: list[str]) -> list[str]:
    return [line[i + 1] for i, arg in enumerate(line) if arg == "-c"]


def test_deploy_passes_stage_and_context_and_writes_outputs_without_approving_iam() -> None:
    # WHEN a stage is deployed with two context items, one of them JSON
    lines = _make_dry_run("deploy", "STAGE=qa", 'CONTEXT=owner=platform settings={"chunk_size":250,"a":1}')
    line = _cdk_command(lines, "deploy")
    # THEN the pinned CLI runs the venv's app with the stage and each item as its own -c, verbatim
    assert line[line.index("--app") + 1] == ".venv/bin/python app.py"
    assert _context(line) == ["stage=qa", "owner=platform", 'settings={"chunk_size":250,"a":1}']
    # AND the stack's outputs land in a file per stage
    assert line[line.index("--outputs-file") + 1] == ".build/outputs-qa.json"
    # AND IAM changes are left for the operator to approve
    assert "--require-approval" not in line


def test_a_pipeline_opts_in_to_unattended_approval_explicitly() -> None:
    line = _cdk_command(_make_dry_run("deploy", "CDK_FLAGS=--require-approval never"), "deploy")
    assert line[-2:] == ["--require-approval", "never"]
    assert _context(line) == ["stage=dev"]


@pytest.mark.parametrize("target", ["destroy", "diff", "bootstrap"])
def test_the_other_cli_targets_name_the_same_stage_and_force_nothing(target: str) -> None:
    line = _cdk_command(_make_dry_run(target, "STAGE=qa", "CONTEXT=owner=platform"), target)
    assert _context(line) == ["stage=qa", "owner=platform"]
    assert "--force" not in line
    assert "--require-approval" not in line


# ------------------------------------------------------------------ the README's walkthrough


def _deploying_section() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    start = readme.index("\n## Deploying\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end != -1 else len(readme)]


def _publish_calls(section: str) -> list[tuple[str, str, dict[str, object]]]:
    """The literal arguments of every `publish(source, detail_type, detail)` in the README's Python example."""
    (block,) = [
        block for block in re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL) if "def publish" in block
    ]
    calls = []
    for node in ast.walk(ast.parse(block)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "publish":
            source, detail_type, detail = (ast.literal_eval(argument) for argument in node.args)
            calls.append((source, detail_type, detail))
    return calls


def _as_received(source: str, detail_type: str, detail: object) -> dict[str, object]:
    """What the fan-out reads from SQS for an entry that PutEvents accepted."""
    return {
        "version": "0",
        "id": "readme",
        "source": source,
        "detail-type": detail_type,
        "account": "123456789012",
        "time": "2026-03-02T14:30:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": detail,
    }


def test_the_readme_publishes_every_detail_type_the_service_accepts_and_each_example_validates() -> None:
    from quanttrade_ws import topology
    from quanttrade_ws.upstream import DETAILS_BY_TYPE, parse_upstream_event

    # GIVEN the README's publish examples
    section = _deploying_section()
    examples = _publish_calls(section)
    # THEN there is one per detail-type the code accepts, each from the source whose rule routes it
    assert sorted(detail_type for _, detail_type, _ in examples) == sorted(DETAILS_BY_TYPE)
    routed = {(declared.source, declared.detail_type) for declared in topology.SOURCES}
    assert {(source, detail_type) for source, detail_type, _ in examples} == routed
    # AND each detail passes the edge validation as it is written there
    for source, detail_type, detail in examples:
        parse_upstream_event(_as_received(source, detail_type, detail))


def test_the_readme_cli_example_is_a_valid_put_events_call() -> None:
    from quanttrade_ws.upstream import parse_upstream_event

    section = _deploying_section()
    (entries_json,) = re.findall(r"aws events put-events --entries '(\[.*\])'", section)
    (entry,) = json.loads(entries_json)
    assert set(entry) == {"EventBusName", "Source", "DetailType", "Detail"}
    parse_upstream_event(_as_received(entry["Source"], entry["DetailType"], json.loads(entry["Detail"])))


def test_the_readme_walks_a_newcomer_through_the_first_deploy() -> None:
    section = _deploying_section()
    for step in (
        "npm ci",
        "npx cdk bootstrap",
        "make deploy STAGE=dev",
        ".build/outputs-dev.json",
        "python -m local token",
        'wscat -c "$URL?token=$QT_TOKEN"',
        '"Action": "events:PutEvents"',
        "make destroy STAGE=dev",
    ):
        assert step in section, step
