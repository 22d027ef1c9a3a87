"""A deployed stack as the commands' target: its outputs (an outputs file or DescribeStacks) and the session."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from typing import Any

# The outputs read are infra/stack.py's CfnOutputs: WebSocketUrl (listen), EventBusName (publish), AdminApiUrl,
# JwtSecretArn (token).
TOKEN_ENV = "QT_TOKEN"
SECRET_OUTPUT = "JwtSecretArn"
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class DeployedStack:
    """A deployed stack's CloudFormation outputs, from `cdk deploy --outputs-file` or DescribeStacks."""

    name: str
    outputs: dict[str, str]
    origin: str  # where the outputs came from, for error messages

    def output(self, key: str) -> str:
        value = self.outputs.get(key)
        if not value:
            known = ", ".join(sorted(self.outputs)) or "none"
            raise SystemExit(f"stack {self.name} has no {key} output in {self.origin} (it has: {known})")
        return value


def is_deployed(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "outputs", None) or getattr(args, "stack", None))


def read_outputs_file(path: str, stack: str | None = None) -> DeployedStack:
    """One stack's outputs from the file `cdk deploy --outputs-file` writes: {"<StackName>": {"<Output>": "..."}}."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except OSError as error:
        raise SystemExit(f"cannot read the outputs file {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise SystemExit(f"the outputs file {path} is not JSON: {error}") from None
    if not isinstance(document, dict) or not document or not all(isinstance(v, dict) for v in document.values()):
        raise SystemExit(
            f"{path} is not what `cdk deploy --outputs-file` writes: "
            '{"<StackName>": {"WebSocketUrl": "...", "EventBusName": "...", "AdminApiUrl": "..."}}'
        )
    names = ", ".join(sorted(document))
    if stack is None:
        if len(document) > 1:
            raise SystemExit(f"{path} holds several stacks ({names}): choose one with --stack NAME")
        (stack,) = document
    elif stack not in document:
        raise SystemExit(f"{path} has no stack {stack!r}; it holds: {names}")
    outputs = {str(key): str(value) for key, value in document[stack].items()}
    return DeployedStack(stack, outputs, path)


def describe_stack_outputs(session: Any, stack: str) -> DeployedStack:
    """A stack's outputs from CloudFormation DescribeStacks, with the session's credentials and region."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client = session.client("cloudformation")
        region = client.meta.region_name
        stacks = client.describe_stacks(StackName=stack)["Stacks"]
    except ClientError as error:
        raise SystemExit(f"cannot describe the stack {stack!r}: {aws_error(error)}") from None
    except BotoCoreError as error:
        raise SystemExit(f"cannot describe the stack {stack!r}: {error}") from None
    if not stacks:
        raise SystemExit(f"CloudFormation ({region}) has no stack {stack!r}")
    outputs = {item["OutputKey"]: item["OutputValue"] for item in stacks[0].get("Outputs") or []}
    return DeployedStack(stack, outputs, f"CloudFormation ({region})")


def aws_session(args: argparse.Namespace) -> Any:
    """A boto3 session for a deployed stack: --profile (or the default chain) and --region (or $AWS_REGION)."""
    import boto3
    from botocore.exceptions import BotoCoreError

    try:
        return boto3.Session(profile_name=args.profile, region_name=args.region or os.environ.get("AWS_REGION"))
    except BotoCoreError as error:  # ProfileNotFound above all
        raise SystemExit(f"{error} (`aws configure list-profiles` lists them)") from None


def deployed_stack(args: argparse.Namespace, session: Any = None) -> DeployedStack | None:
    """The stack --outputs/--stack name, or None for the local stack. CloudFormation is asked only without --outputs."""
    if args.outputs:
        return read_outputs_file(args.outputs, args.stack)
    if args.stack:
        return describe_stack_outputs(session if session is not None else aws_session(args), args.stack)
    return None


def aws_error(error: Any) -> str:
    details = error.response.get("Error", {})
    return f"{details.get('Code', 'Error')}: {details.get('Message', error)}"


def local_only_profile(args: argparse.Namespace, what: str) -> None:
    if args.profile:
        raise SystemExit(f"--profile is for a deployed stack's {what}: give --outputs FILE or --stack NAME with it")
