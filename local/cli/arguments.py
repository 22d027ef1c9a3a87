"""Argument types and options more than one command takes."""

from __future__ import annotations

import argparse
from typing import Any


def positive(kind: type, *, or_zero: bool = False) -> Any:
    """An argument type: a number of `kind` more than 0 (or 0 too, with `or_zero`: an option's "never")."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < 0 or (value == 0 and not or_zero):
            raise argparse.ArgumentTypeError(f"must be {'0 or more' if or_zero else 'more than 0'}: {text!r}")
        return value

    return parse


def add_deployed_options(parser: argparse.ArgumentParser, credentials: str) -> None:
    group = parser.add_argument_group(
        "deployed stack", "Without these the local stack is the target; with --outputs or --stack, a deployed one."
    )
    group.add_argument(
        "--outputs",
        metavar="FILE",
        help="the JSON that `cdk deploy --outputs-file FILE` writes; if it holds several stacks, pick one with --stack",
    )
    group.add_argument(
        "--stack",
        metavar="NAME",
        help="the deployed stack: picked from --outputs, or its outputs read with CloudFormation DescribeStacks",
    )
    group.add_argument("--profile", help=f"AWS profile {credentials} (default: the default credential chain)")
    group.add_argument("--region", help="AWS region (default: $AWS_REGION, else the profile's region)")
