"""How an invocation fails, as Lambda reports it: an error type and an error message."""

from __future__ import annotations


class LambdaError(Exception):
    """An invocation failed the way Lambda reports it: an error type and an error message."""

    def __init__(self, function_name: str, error_type: str, error_message: str) -> None:
        super().__init__(error_message)
        self.function_name = function_name
        self.error_type = error_type
        self.error_message = error_message


class LambdaFunctionError(LambdaError):
    """The handler raised (or the runtime failed it: Runtime.ExitError, Runtime.MarshalError).

    `str()` is the error message alone, as Lambda returns it to its caller
    (API Gateway reads an authorizer's "Unauthorized" from it); the stack trace
    went to the function's log, never to the caller.
    """


class LambdaTimeoutError(LambdaError):
    """The handler ran past its timeout; its environment was killed, as Lambda does."""

    def __init__(self, function_name: str, timeout_seconds: float) -> None:
        super().__init__(function_name, "Sandbox.Timedout", f"Task timed out after {timeout_seconds:.2f} seconds")


class LambdaInitError(LambdaError):
    """A cold start failed: the handler module could not be imported, or raised while importing."""

    def __str__(self) -> str:
        return f"{self.function_name}: {self.error_type}: {self.error_message}"


class LambdaShutdownError(LambdaError):
    """The invocation was queued or running when its function was shut down."""

    def __init__(self, function_name: str) -> None:
        super().__init__(function_name, "Runtime.Shutdown", "the function was shut down")
