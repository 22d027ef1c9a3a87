"""One local Lambda execution environment: the part the runtime interface client (awslambdaric) plays on AWS.

`local.lambda_runtime` starts this file as `python -I -S lambda_worker.py <config>`
with exactly the function's environment. Isolated mode without `site` means
nothing of the repository, the virtualenv or the caller's PYTHON* variables
reaches the interpreter; this bootstrap then sets `sys.path` to what Lambda
gives a function: the code directory (/var/task), each layer's `python/`
(/opt/python), the runtime-provided packages (boto3), the standard library.
So this module may import the standard library only.

Protocol: length-prefixed JSON frames (4-byte big-endian length). Requests come
in on the original stdin, answers go out on the original stdout. Before any
user code runs, fd 0 is pointed at /dev/null and fd 1 at stderr, so whatever
the handler prints or logs ends up in the log stream (stderr, forwarded by the
parent) and can never corrupt a frame.

Frames out: first one init answer, `{"ready": true}` or an error; then per
request `{"id", "result"}` or `{"id", "errorType", "errorMessage", "stackTrace"}`.
Frames in: `{"id", "deadline_ms", "trace_id", "event"}`. EOF on the request
channel ends the environment.
"""

from __future__ import annotations

import decimal
import importlib
import json
import os
import struct
import sys
import time
import traceback
from typing import Any, BinaryIO

HEADER = struct.Struct(">I")


class LambdaContext:
    """The context object of the Python runtime (awslambdaric), attribute for attribute."""

    __slots__ = (
        "_deadline_ms",
        "aws_request_id",
        "client_context",
        "function_name",
        "function_version",
        "identity",
        "invoked_function_arn",
        "log_group_name",
        "log_stream_name",
        "memory_limit_in_mb",
        "tenant_id",
    )

    def __init__(
        self,
        *,
        function_name: str,
        function_version: str,
        invoked_function_arn: str,
        memory_limit_in_mb: int | str,
        aws_request_id: str,
        log_group_name: str,
        log_stream_name: str,
        deadline_ms: int,
    ) -> None:
        self.function_name = function_name
        self.function_version = function_version
        self.invoked_function_arn = invoked_function_arn
        # awslambdaric copies AWS_LAMBDA_FUNCTION_MEMORY_SIZE as is, so it is a string there too.
        self.memory_limit_in_mb = str(memory_limit_in_mb)
        self.aws_request_id = aws_request_id
        self.log_group_name = log_group_name
        self.log_stream_name = log_stream_name
        self.identity = None
        self.client_context = None
        self.tenant_id = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))

    def __repr__(self) -> str:
        return f"LambdaContext(function_name={self.function_name!r}, aws_request_id={self.aws_request_id!r})"


class InitError(Exception):
    """Why the handler could not be loaded, in the runtime's own terms (errorType, errorMessage)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


def load_handler(spec: str) -> Any:
    """Resolve `_HANDLER` the way awslambdaric does, with its error types and messages."""
    try:
        module_name, attribute = spec.rsplit(".", 1)
    except ValueError as error:
        raise InitError("Runtime.MalformedHandlerName", f"Bad handler '{spec}': {error}") from None
    if module_name.split(".")[0] in sys.builtin_module_names:
        raise InitError(
            "Runtime.BuiltInModuleConflict", f"Cannot use built-in module {module_name} as a handler module"
        )
    try:
        module = importlib.import_module(module_name.replace("/", "."))
    except ImportError as error:
        raise InitError("Runtime.ImportModuleError", f"Unable to import module '{module_name}': {error}") from None
    except SyntaxError as error:
        raise InitError("Runtime.UserCodeSyntaxError", f"Syntax error in module '{module_name}': {error}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise InitError("Runtime.HandlerNotFound", f"Handler '{attribute}' missing on module '{module_name}'") from None


def error_frame(error: BaseException, error_type: str | None = None) -> dict[str, Any]:
    return {
        "errorType": error_type or type(error).__name__,
        "errorMessage": str(error),
        "stackTrace": traceback.format_tb(error.__traceback__),
    }


def _decimal_as_number(value: Any) -> Any:
    # awslambdaric's marshaller writes Decimals (DynamoDB numbers) as JSON numbers.
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def encode(frame: dict[str, Any]) -> bytes:
    body = json.dumps(frame, default=_decimal_as_number, ensure_ascii=False, separators=(",", ":")).encode()
    return HEADER.pack(len(body)) + body


def read_frame(channel: BinaryIO) -> dict[str, Any] | None:
    header = channel.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (length,) = HEADER.unpack(header)
    body = channel.read(length)
    if len(body) < length:
        return None
    frame: dict[str, Any] = json.loads(body)
    return frame


def write_frame(fd: int, frame: dict[str, Any]) -> None:
    try:
        data = encode(frame)
    except (TypeError, ValueError) as error:
        # The handler returned something JSON cannot carry: Lambda fails the invocation, not the environment.
        data = encode(
            {"id": frame.get("id"), **error_frame(error, "Runtime.MarshalError")}
            | {"errorMessage": f"Unable to marshal response: {error}"}
        )
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def log_error(error_type: str, message: str, stack: list[str]) -> None:
    # The runtime logs every unhandled error to the function's log stream, with its stack trace.
    sys.stderr.write(f"[ERROR] {error_type}: {message}\nTraceback (most recent call last):\n{''.join(stack)}")
    sys.stderr.flush()


def main() -> int:
    config = json.loads(sys.argv[1])
    requests = os.fdopen(os.dup(0), "rb")
    responses = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    # Lambda's log stream receives each line as it is written; a block-buffered pipe would hold them back.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.path[:] = [*config["path"], *sys.path]
    # The interpreter may have added variables of its own (LC_CTYPE when it coerces a C locale, PEP 538);
    # the function sees exactly the environment it was given.
    for key in set(os.environ) - set(config["environment"]):
        del os.environ[key]

    try:
        handler = load_handler(os.environ["_HANDLER"])
    except InitError as error:
        write_frame(responses, {"errorType": error.error_type, "errorMessage": str(error), "stackTrace": []})
        return 1
    except Exception as error:  # whatever the module raised at import time is the init error
        frame = error_frame(error)
        log_error(frame["errorType"], frame["errorMessage"], frame["stackTrace"])
        write_frame(responses, frame)
        return 1
    write_frame(responses, {"ready": True})

    environ = os.environ
    function_name = environ["AWS_LAMBDA_FUNCTION_NAME"]
    version = environ["AWS_LAMBDA_FUNCTION_VERSION"]
    memory = environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]
    log_group = environ["AWS_LAMBDA_LOG_GROUP_NAME"]
    log_stream = environ["AWS_LAMBDA_LOG_STREAM_NAME"]
    arn = config["function_arn"]
    while True:
        request = read_frame(requests)
        if request is None:
            return 0
        request_id = request["id"]
        # As awslambdaric: the X-Ray trace header of the invocation is published through the environment.
        trace_id = request.get("trace_id")
        if trace_id:
            environ["_X_AMZN_TRACE_ID"] = trace_id
        else:
            environ.pop("_X_AMZN_TRACE_ID", None)
        context = LambdaContext(
            function_name=function_name,
            function_version=version,
            invoked_function_arn=arn,
            memory_limit_in_mb=memory,
            aws_request_id=request_id,
            log_group_name=log_group,
            log_stream_name=log_stream,
            deadline_ms=request["deadline_ms"],
        )
        try:
            result = handler(request["event"], context)
        except Exception as error:
            frame = error_frame(error)
            log_error(frame["errorType"], frame["errorMessage"], frame["stackTrace"])
            write_frame(responses, {"id": request_id, **frame})
        else:
            write_frame(responses, {"id": request_id, "result": result})


if __name__ == "__main__":
    sys.exit(main())
