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

Frames out: first one init answer, `{"ready": true, "modules"}` or an error;
then per request `{"id", "result"}` or `{"id", "errorType", "errorMessage",
"stackTrace"}`. `modules` (in the init answer and the first invocation's) names
what the environment imported outside its code directories, for its template.
Frames in: `{"id", "deadline_ms", "trace_id", "event"}`. EOF on the request
channel ends the environment.

Started with `"template": true` in its configuration, the same bootstrap makes a
template instead (`ForkServer`): it serves a control socket on stdin and forks
one environment per order, and each child goes on as above.
"""

from __future__ import annotations

import array
import contextlib
import decimal
import gc
import importlib
import json
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback
from typing import Any, BinaryIO

HEADER = struct.Struct(">I")
FD_SIZE = array.array("i").itemsize
PR_SET_PDEATHSIG = 1  # linux/prctl.h


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


def complete_frames(buffer: bytes) -> tuple[list[dict[str, Any]], bytes]:
    """The whole frames at the head of `buffer`, decoded, and the start of one still arriving."""
    frames = []
    while len(buffer) >= HEADER.size:
        (length,) = HEADER.unpack_from(buffer)
        if len(buffer) < HEADER.size + length:
            break
        frames.append(json.loads(buffer[HEADER.size : HEADER.size + length]))
        buffer = buffer[HEADER.size + length :]
    return frames, buffer


def receive_with_descriptors(control: socket.socket) -> tuple[bytes, list[int]]:
    """One read of a template's control socket: the bytes, and the descriptors that came with them."""
    data, ancillary, _, _ = control.recvmsg(1 << 16, socket.CMSG_SPACE(16 * FD_SIZE))
    descriptors: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % FD_SIZE  # a truncated last descriptor is no descriptor
            descriptors.extend(array.array("i", payload[:usable]))
    return data, descriptors


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


def layer_modules(code_dirs: list[str]) -> list[str]:
    """The modules imported so far that are not the function's own code, in the order they were first imported.

    What a template (see `ForkServer`) preloads for the environments it forks: the
    runtime's and the layers' packages and the standard library; never a module of
    a code directory, whose import is the init phase each environment runs itself.
    """
    roots = tuple(os.path.join(directory, "") for directory in code_dirs)
    names = []
    for name, module in list(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        if spec is None or name == "__main__":
            continue
        places = [spec.origin or "", *(spec.submodule_search_locations or ())]
        if not any(place.startswith(roots) for place in places):
            names.append(name)
    return names


def bootstrap(config: dict[str, Any]) -> int:
    """Make this interpreter an execution environment's: stdio, import path and environment; return a copy of
    stdin (where requests, or a template's orders, come in), which is then pointed at /dev/null."""
    channel = os.dup(0)
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
    return channel


def main() -> int:
    config = json.loads(sys.argv[1])
    if config.get("template"):
        control = bootstrap(config)
        environment = ForkServer(control, os.getpid()).serve()
        if environment is None:
            return 0  # the template's orders ended: its environments go with it (see ForkServer)
        requests_fd, responses_fd = environment
        return run_environment(config, os.fdopen(requests_fd, "rb"), responses_fd)
    responses = os.dup(1)
    requests = bootstrap(config)
    return run_environment(config, os.fdopen(requests, "rb"), responses)


def run_environment(config: dict[str, Any], requests: BinaryIO, responses: int) -> int:
    """The init phase (import the handler), then one invocation per request until the requests end."""
    code_dirs = config["code_dirs"]
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
    # What the init phase imported tells the runtime what a template may preload for the next environments.
    write_frame(responses, {"ready": True, "modules": layer_modules(code_dirs)})

    environ = os.environ
    function_name = environ["AWS_LAMBDA_FUNCTION_NAME"]
    version = environ["AWS_LAMBDA_FUNCTION_VERSION"]
    memory = environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]
    log_group = environ["AWS_LAMBDA_LOG_GROUP_NAME"]
    log_stream = environ["AWS_LAMBDA_LOG_STREAM_NAME"]
    arn = config["function_arn"]
    first = True
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
            answer = {"id": request_id, **frame}
        else:
            answer = {"id": request_id, "result": result}
        if first:
            # The first invocation imports what handlers import lazily (boto3's clients, typically).
            answer["modules"] = layer_modules(code_dirs)
            first = False
        write_frame(responses, answer)


class ForkServer:
    """A template interpreter: started as an environment is, it forks one child per cold start of its configuration.

    Orders come in on the control socket (a stream socket, the template's
    stdin): a frame `{"environment": {...}, "modules": [...]}` carrying three
    descriptors (SCM_RIGHTS): the new environment's request pipe, its answer
    pipe and its log pipe. The template imports the modules it does not have
    yet (what earlier environments of the configuration imported), checks that it
    is still single-threaded and holds no socket but its control socket, and
    forks. It answers `{"forked": pid}` with a pidfd of the child (SCM_RIGHTS),
    or `{"error": why}` when it cannot fork safely; and reports each child's end
    as `{"exited": pid, "status": code}` (negative: the signal), since it is the
    parent that reaps them.

    The child makes itself a new environment: its own session, killed if the
    template dies (PR_SET_PDEATHSIG, so no environment outlives the runtime that
    accounts for it), its log pipe as stdout and stderr, exactly the environment
    it was given; then it returns to `main`, which runs the init phase.
    """

    def __init__(self, control_fd: int, own_pid: int) -> None:
        self.control = socket.socket(fileno=control_fd)
        self.own_pid = own_pid
        self.buffer = b""
        self.descriptors: list[int] = []
        self.wakeup_read, self.wakeup_write = os.pipe()
        os.set_blocking(self.wakeup_read, False)
        os.set_blocking(self.wakeup_write, False)
        signal.set_wakeup_fd(self.wakeup_write)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes the select below through the fd
        import ctypes  # only a template needs it (prctl), so a plain environment does not import it

        self.prctl = ctypes.CDLL(None, use_errno=True).prctl

    def serve(self) -> tuple[int, int] | None:
        """Serve orders until the control socket closes (None); in a forked child, its (requests, answers) fds."""
        while True:
            ready, _, _ = select.select([self.control.fileno(), self.wakeup_read], [], [])
            if self.wakeup_read in ready:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self.wakeup_read, 512):
                        pass
                self.reap()
            if self.control.fileno() not in ready:
                continue
            try:
                data, descriptors = receive_with_descriptors(self.control)
            except ConnectionError:  # the runtime closed its end with reports still unread: it is gone all the same
                return None
            self.descriptors.extend(descriptors)
            if not data:
                return None
            orders, self.buffer = complete_frames(self.buffer + data)
            for order in orders:
                descriptors, self.descriptors = self.descriptors[:3], self.descriptors[3:]
                child = self.fork(order, descriptors)
                if child is not None:
                    return child  # in the child: the orders after this one are the template's

    def fork(self, order: dict[str, Any], descriptors: list[int]) -> tuple[int, int] | None:
        for name in order["modules"]:
            if name not in sys.modules:
                # A module that fails here is imported again by the environment, which then fails as it would.
                with contextlib.suppress(Exception):
                    importlib.import_module(name)
        unsafe = self.unsafe_to_fork()
        if unsafe is not None:
            for fd in descriptors:
                os.close(fd)
            self.send({"error": unsafe})
            return None
        sys.stdout.flush()
        sys.stderr.flush()
        # The template's objects go to the collector's permanent generation: a collection in an environment
        # never walks them, so it never writes to (and copies) the pages they share with the template.
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            try:
                return self.become_environment(order["environment"], descriptors)
            except BaseException:
                traceback.print_exc()
                os._exit(70)
        # Opened before this process can reap the child, so it names that child and no other.
        pidfd = os.pidfd_open(pid)
        try:
            self.send({"forked": pid}, [pidfd])
        finally:
            os.close(pidfd)
            for fd in descriptors:
                os.close(fd)
        return None

    def unsafe_to_fork(self) -> str | None:
        """Why a fork would not give a clean environment: a thread (it would not exist in the child, its locks
        might be held) or a socket (a connection shared by every environment), or None."""
        tasks = os.listdir("/proc/self/task")
        if len(tasks) > 1:
            return f"the template runs {len(tasks)} threads after importing what its environments import"
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:") and int(fd) != self.control.fileno():
                    return f"the template holds a socket (fd {fd}) after importing what its environments import"
        return None

    def become_environment(self, environment: dict[str, str], descriptors: list[int]) -> tuple[int, int]:
        requests, responses, log = descriptors
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(self.wakeup_read)
        os.close(self.wakeup_write)
        self.control.close()
        # Its own session: a Ctrl-C meant for the stack must not interrupt handlers mid-invocation.
        os.setsid()
        if self.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != self.own_pid:
            os._exit(71)  # the template died before this child could follow it: nobody would reap or account it
        os.dup2(log, 2)
        os.dup2(2, 1)
        os.close(log)
        os.environ.clear()
        os.environ.update(environment)
        return requests, responses

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.send({"exited": pid, "status": os.waitstatus_to_exitcode(status)})

    def send(self, frame: dict[str, Any], descriptors: list[int] | None = None) -> None:
        data = encode(frame)
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", descriptors))] if descriptors else []
        try:
            sent = self.control.sendmsg([data], ancillary)
            self.control.sendall(data[sent:])
        except OSError:
            pass  # the runtime is gone; the next read of the control socket ends this template


if __name__ == "__main__":
    sys.exit(main())
