#!/usr/bin/env python3
"""CDK entry point for QuantTrade.

    npx cdk synth                               # through the pinned CDK CLI (cdk.json runs this file in .venv)
    python app.py                               # offline, no credentials; writes $CDK_OUTDIR or ./cdk.out
    python app.py -c stage=dev -c owner=team-x -c settings.chunk_size=500

Context keys are documented in infra/context.py. The third-party dependency
layer is built from requirements.lock (or taken from the .build/ cache) before
synthesis, and each function's unzipped size is checked against Lambda's quota; see
infra/layers_build.py.
"""

from __future__ import annotations

import sys

# The stack reads the service topology and settings model from the shared layer's package, the
# same code the functions run: the development environment has it on its path (make's venv).
from infra.application import create_app
from infra.context import ContextError
from infra.layers_build import DepsLayerUnavailable
from infra.package_size import PackageTooLarge, report


def _cli_context(argv: list[str]) -> dict[str, str]:
    """`-c key=value` pairs, so a direct `python app.py` takes context like `cdk synth` does."""
    context: dict[str, str] = {}
    args = iter(argv)
    for arg in args:
        if arg in ("-c", "--context"):
            pair = next(args, None)
        elif arg.startswith("--context="):
            pair = arg.split("=", 1)[1]
        else:
            raise SystemExit(f"unexpected argument {arg!r}; usage: python app.py [-c key=value ...]")
        if pair is None or "=" not in pair:
            raise SystemExit(f"context must be key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        context[key] = value
    return context


def main(argv: list[str]) -> int:
    try:
        app, stack = create_app(context=_cli_context(argv))
        # stderr: the CDK CLI reads the assembly, not this output, and shows it.
        print(report(stack.functions.package_sizes), file=sys.stderr)
        app.synth()
    except (ContextError, DepsLayerUnavailable, PackageTooLarge) as error:
        print(f"synth failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
