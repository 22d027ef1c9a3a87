"""Cold-start every function before the stack serves anything, so a handler that cannot start fails at once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from local.lambda_runtime.function import LambdaFunction


async def preflight(functions: Iterable[LambdaFunction]) -> None:
    """Cold-start every function at once; raise one `LambdaInitError`-carrying error naming each that failed."""
    unique = list({id(function): function for function in functions}.values())
    results = await asyncio.gather(*(function.init() for function in unique), return_exceptions=True)
    failures: list[Exception] = []
    for result in results:
        if isinstance(result, Exception):
            failures.append(result)
        elif isinstance(result, BaseException):  # cancelled, interrupted: not a verdict on the function
            raise result
    if failures:
        raise PreflightError(failures)


class PreflightError(RuntimeError):
    """Some functions could not cold-start; `failures` holds each one's error."""

    def __init__(self, failures: list[Exception]) -> None:
        super().__init__(
            f"{len(failures)} function(s) failed to start:\n" + "\n".join(f"  {failure}" for failure in failures)
        )
        self.failures = failures
