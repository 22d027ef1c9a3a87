"""Runs Lambda functions locally the way the Lambda service runs them: each in its own worker processes.

A `LambdaFunction` is a handler (`module.attribute`), its code directory, its
layers, its environment and its limits. Every execution environment is a fresh
interpreter (`local.lambda_worker`) started with exactly what Lambda would give
it:

* import path: the code directory (/var/task), each layer's `python/`
  (/opt/python), the packages the Python runtime ships (boto3 and its closure),
  the standard library; nothing from the repository or the virtualenv;
* environment: the function's own variables plus the ones the Lambda runtime
  sets (AWS_REGION, AWS_LAMBDA_FUNCTION_NAME, _HANDLER, TZ, the role's
  credentials, ...); nothing inherited from the process that runs the stack;
* lifecycle: a cold start imports the handler (an import failure is an init
  error naming the function and the cause), warm environments are reused, an
  invocation that overruns its timeout kills its environment and the next one
  starts cold; at most `concurrency` environments exist at once.

The third-party dependency layer of the assembly is built for arm64 Lambda and
cannot run here: `local.deps_layer` makes the stand-in that the local stack
passes as that layer, and provides the runtime's own packages (boto3).

Python callables are also accepted as handlers: they run in threads of this
process. That mode exists for the gateway's and the pumps' own tests, whose
test doubles record calls in the test process; the local stack never uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local.deps_layer import runtime_provided
from local.lambda_worker import HEADER, LambdaContext

__all__ = [
    "DEFAULT_ACCOUNT",
    "DEFAULT_REGION",
    "Credentials",
    "LambdaContext",
    "LambdaError",
    "LambdaFunction",
    "LambdaFunctionError",
    "LambdaInitError",
    "LambdaShutdownError",
    "LambdaTimeoutError",
    "PreflightError",
    "preflight",
]

logger = logging.getLogger("quanttrade.local.lambda")
function_logger = logging.getLogger("quanttrade.local.lambda.log")  # the functions' own log streams

Handler = Callable[[Any, Any], Any]

DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT = "123456789012"  # moto's default account, so ARNs line up with the local AWS resources

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO_ROOT / "requirements.txt"
LOCAL_DEPS_ROOT = REPO_ROOT / ".build" / "local-deps"
WORKER_SCRIPT = Path(__file__).resolve().parent / "lambda_worker.py"
HANDLERS_DIR = REPO_ROOT / "handlers"
SHARED_LAYER_DIR = REPO_ROOT / "layers" / "shared"

# Lambda gives the init phase of an on-demand environment 10 seconds, whatever the function's timeout.
INIT_TIMEOUT_SECONDS = 10.0
# Variables the Lambda service sets itself; a function's configuration may not (CloudFormation rejects them).
RESERVED_VARIABLES = frozenset(
    {
        "_HANDLER",
        "_X_AMZN_TRACE_ID",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_EXECUTION_ENV",
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_INITIALIZATION_TYPE",
        "AWS_LAMBDA_LOG_GROUP_NAME",
        "AWS_LAMBDA_LOG_STREAM_NAME",
        "AWS_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_LAMBDA_RUNTIME_API",
        "LAMBDA_TASK_ROOT",
        "LAMBDA_RUNTIME_DIR",
    }
)
_LOG_LEVELS = {
    "TRACE": logging.DEBUG,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
    "FATAL": logging.CRITICAL,
}


# ---------------------------------------------------------------- errors


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


# ---------------------------------------------------------------- local dependencies


@dataclass(frozen=True)
class Credentials:
    """The keys of the function's execution role, as Lambda hands them to the runtime."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def to_env(self) -> dict[str, str]:
        env = {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key}
        if self.session_token:
            env["AWS_SESSION_TOKEN"] = self.session_token
        return env


def _validated_environment(name: str, environment: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(environment or {})
    reserved = sorted(RESERVED_VARIABLES & env.keys())
    if reserved:
        raise ValueError(f"{name}: reserved Lambda environment variables cannot be configured: {reserved}")
    not_strings = sorted(key for key, value in env.items() if not isinstance(value, str))
    if not_strings:
        raise ValueError(f"{name}: environment values must be strings: {not_strings}")
    return env


# ---------------------------------------------------------------- execution environments (worker processes)


class _WorkerExited(Exception):
    pass


class _Worker:
    """One execution environment: an interpreter, its request/response pipes, its log forwarder."""

    __slots__ = ("finished", "process", "retired", "stop_reason")

    def __init__(self, process: asyncio.subprocess.Process, function_name: str) -> None:
        self.process = process
        self.stop_reason: str | None = None  # why the parent killed it: "timeout", "shutdown", ...
        self.retired = False  # the configuration changed: not to be reused after the invocation in hand
        assert process.stderr is not None
        # Done once the process has exited and its last log line is forwarded.
        self.finished = asyncio.ensure_future(self._finish(_forward_log(process.stderr, function_name)))

    async def _finish(self, forward_log: Coroutine[Any, Any, None]) -> None:
        await forward_log
        await self.process.wait()

    async def exchange(self, frame: bytes | None) -> dict[str, Any]:
        """Send a request frame (None: just read, for the init answer) and read the answer."""
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        try:
            if frame is not None:
                stdin.write(frame)
                await stdin.drain()
            header = await stdout.readexactly(HEADER.size)
            (length,) = HEADER.unpack(header)
            body = await stdout.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError) as error:
            raise _WorkerExited() from error
        answer: dict[str, Any] = json.loads(body)
        return answer

    def kill(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    async def exit_status(self) -> int:
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self.process.wait(), timeout=5)
        return -1


async def _forward_log(stream: asyncio.StreamReader, function_name: str) -> None:
    """Each line the environment writes becomes a log record named after the function (what CloudWatch shows)."""
    while True:
        try:
            line = await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as error:  # the process ended: its last line has no newline
            line = error.partial
        except asyncio.LimitOverrunError as error:  # a line longer than the reader's limit: forward it in pieces
            line = await stream.readexactly(error.consumed)
        except Exception:  # the pipe went away with the process
            return
        if not line:
            return
        text = line.decode(errors="replace").rstrip("\n")
        if not text:
            continue
        function_logger.log(_level_of(text), "[%s] %s", function_name, text)


def _level_of(line: str) -> int:
    # Powertools writes one JSON document per record; its "level" decides how loudly to repeat it here.
    if line.startswith("{"):
        try:
            level = json.loads(line).get("level")
        except (ValueError, AttributeError):
            return logging.INFO
        return _LOG_LEVELS.get(str(level).upper(), logging.INFO)
    if line.startswith("[ERROR]") or line.startswith("Traceback"):
        return logging.ERROR
    return logging.INFO


class _Pool:
    """The execution environments of one function on one event loop; replaced whole on shutdown."""

    def __init__(self, concurrency: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.slots = asyncio.Semaphore(concurrency)
        self.idle: list[_Worker] = []
        self.workers: set[_Worker] = set()  # alive and usable (idle or busy)
        self.processes: set[_Worker] = set()  # every process not yet exited, usable or not
        self.closed = False

    def add(self, worker: _Worker) -> None:
        self.workers.add(worker)
        self.processes.add(worker)
        worker.finished.add_done_callback(lambda _: self.processes.discard(worker))

    def close(self) -> None:
        self.closed = True
        for worker in list(self.workers):
            worker.kill("shutdown")
        self.idle.clear()


# ---------------------------------------------------------------- in-process mode (test doubles)


class _InProcess:
    """A Python callable run in threads of this process, with the same timeout accounting."""

    def __init__(self, handler: Handler, name: str, concurrency: int) -> None:
        self.handler = handler
        self.name = name
        self.concurrency = concurrency
        self.log_streams = threading.local()
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"lambda-{name}")

    def restart(self) -> ThreadPoolExecutor:
        stopped, self.pool = self.pool, ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"lambda-{self.name}")
        return stopped


class _Started:
    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at: float | None = None


def _discard_outcome(future: asyncio.Future[Any]) -> None:
    # Whatever an overrun handler ends with has no one waiting for it; retrieving it keeps asyncio quiet.
    if not future.cancelled():
        future.exception()


# ---------------------------------------------------------------- the function


class LambdaFunction:
    """One Lambda function: its handler, code, layers, environment and limits, and its execution environments.

    `handler` is `module.attribute` resolved in `code_dirs` + layers (a worker
    process per execution environment), or a Python callable run in threads of
    this process (test doubles only; no code or layers then).

    Counters, as CloudWatch's metrics: `invocations`, `errors` (handler errors,
    init failures, runtime exits), `timeouts`, and `cold_starts`.
    """

    def __init__(
        self,
        name: str,
        handler: str | Handler,
        *,
        code_dirs: Iterable[Path | str] = (),
        layer_dirs: Iterable[Path | str] = (),
        runtime_dir: Path | str | None = None,
        environment: Mapping[str, str] | None = None,
        credentials: Credentials | None = None,
        endpoint_url: str | None = None,
        timeout_seconds: float = 10.0,
        memory_mb: int = 256,
        concurrency: int = 8,
        region: str = DEFAULT_REGION,
        account: str = DEFAULT_ACCOUNT,
        version: str = "$LATEST",
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self.name = name
        self.timeout_seconds = float(timeout_seconds)
        self.memory_mb = int(memory_mb)
        self.concurrency = concurrency
        self.version = version
        self.region = region
        self.arn = f"arn:aws:lambda:{region}:{account}:function:{name}"
        self.log_group_name = f"/aws/lambda/{name}"
        self.invocations = 0
        self.errors = 0
        self.timeouts = 0
        self.cold_starts = 0
        self.code_dirs = tuple(Path(d).resolve() for d in code_dirs)
        self.layer_dirs = tuple(Path(d).resolve() for d in layer_dirs)
        self._runtime_dir = None if runtime_dir is None else Path(runtime_dir).resolve()
        self._environment: dict[str, str] = {}
        self._credentials: Credentials | None = None
        self._endpoint_url: str | None = None
        self._pool: _Pool | None = None
        if isinstance(handler, str):
            if not self.code_dirs:
                raise ValueError(f"{name}: a handler named {handler!r} needs code_dirs to import it from")
            for directory in (*self.code_dirs, *self.layer_dirs):
                if not directory.is_dir():
                    raise ValueError(f"{name}: {directory} is not a directory")
            self.handler_spec: str | None = handler
            self._in_process: _InProcess | None = None
        else:
            if self.code_dirs or self.layer_dirs or runtime_dir is not None:
                raise ValueError(f"{name}: a Python callable runs in this process; it takes no code or layers")
            self.handler_spec = None
            self._in_process = _InProcess(handler, name, concurrency)
        self.configure(environment=environment, credentials=credentials, endpoint_url=endpoint_url)

    def configure(
        self,
        *,
        environment: Mapping[str, str] | None = None,
        credentials: Credentials | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        """Set the function's environment, role credentials and AWS endpoint.

        As an UpdateFunctionConfiguration on Lambda: warm environments are
        retired (idle ones now, busy ones when their invocation ends) so every
        later invocation sees the new configuration from a cold start.
        """
        environment = _validated_environment(self.name, environment)
        if endpoint_url is not None and "AWS_ENDPOINT_URL" in environment:
            raise ValueError(f"{self.name}: AWS_ENDPOINT_URL given both in the environment and as endpoint_url")
        self._environment = environment
        self._credentials = credentials
        self._endpoint_url = endpoint_url
        pool = self._pool
        if pool is not None and not pool.closed:
            for worker in pool.idle:
                pool.workers.discard(worker)
                worker.kill("reconfigured")
            pool.idle.clear()
            for worker in pool.workers:
                worker.retired = True

    @property
    def environment(self) -> dict[str, str]:
        """The function's configured environment (without what the runtime adds per environment)."""
        return dict(self._environment)

    def runtime_environment(self, log_stream_name: str, runtime_dir: Path) -> dict[str, str]:
        """Exactly what an execution environment's process gets: the function's variables plus Lambda's own."""
        python = f"python{sys.version_info.major}.{sys.version_info.minor}"
        env = dict(self._environment)
        if self._endpoint_url is not None:
            env["AWS_ENDPOINT_URL"] = self._endpoint_url
        env.update(
            {
                "AWS_REGION": self.region,
                "AWS_DEFAULT_REGION": self.region,
                "AWS_LAMBDA_FUNCTION_NAME": self.name,
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
                "AWS_LAMBDA_FUNCTION_VERSION": self.version,
                "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
                "AWS_LAMBDA_LOG_GROUP_NAME": self.log_group_name,
                "AWS_LAMBDA_LOG_STREAM_NAME": log_stream_name,
                "AWS_EXECUTION_ENV": f"AWS_Lambda_{python}",
                "LAMBDA_TASK_ROOT": str(self.code_dirs[0]),
                "LAMBDA_RUNTIME_DIR": str(runtime_dir),
                "LANG": "en_US.UTF-8",
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "TZ": ":UTC",
                "_HANDLER": self.handler_spec or "",
            }
        )
        if self._credentials is not None:
            env.update(self._credentials.to_env())
        return env

    # ------------------------------------------------------------ invoking

    async def invoke(self, event: Any, *, trace_id: str | None = None) -> Any:
        """Run one invocation and return what the handler returns (JSON round-tripped, as Lambda does).

        Raises `LambdaFunctionError` (the handler raised, or its environment
        died), `LambdaTimeoutError`, `LambdaInitError` (the cold start failed)
        or `LambdaShutdownError`. Waiting for a free environment does not count
        toward the timeout: it stands in for Lambda scaling out.
        """
        self.invocations += 1
        if self._in_process is not None:
            return await self._invoke_in_process(self._in_process, event)
        try:
            return await self._invoke_in_worker(event, trace_id)
        except LambdaTimeoutError:
            self.timeouts += 1
            logger.warning("%s: Task timed out after %.2f seconds", self.name, self.timeout_seconds)
            raise
        except LambdaShutdownError:
            raise
        except LambdaError:
            self.errors += 1
            raise

    async def init(self) -> None:
        """Cold-start one execution environment now and keep it warm; raise `LambdaInitError` if it cannot start.

        The stack calls this for every function at start-up, so a handler that
        cannot be imported fails `make dev` at once instead of its first request.
        """
        if self._in_process is not None:
            return
        pool = self._current_pool()
        async with pool.slots:
            if pool.closed:
                raise LambdaShutdownError(self.name)
            pool.idle.append(self._warm_worker(pool) or await self._cold_start(pool))

    async def _invoke_in_worker(self, event: Any, trace_id: str | None) -> Any:
        try:
            payload = json.dumps(event, separators=(",", ":"))
        except (TypeError, ValueError) as error:
            # Lambda refuses a payload that is not JSON before any environment sees it.
            raise ValueError(f"{self.name}: the event is not JSON: {error}") from None
        pool = self._current_pool()
        async with pool.slots:
            if pool.closed:
                raise LambdaShutdownError(self.name)
            worker = self._warm_worker(pool) or await self._cold_start(pool)
            request_id = str(uuid.uuid4())
            deadline_ms = int(time.time() * 1000 + self.timeout_seconds * 1000)
            # Lambda gives every invocation a trace header, an unsampled one when the caller sent none.
            trace_id = trace_id or _unsampled_trace_id()
            header = json.dumps({"id": request_id, "deadline_ms": deadline_ms, "trace_id": trace_id})
            body = f'{header[:-1]},"event":{payload}}}'.encode()
            frame = HEADER.pack(len(body)) + body
            timer = pool.loop.call_later(self.timeout_seconds, worker.kill, "timeout")
            answered = False
            try:
                answer = await worker.exchange(frame)
                answered = True
            except _WorkerExited:
                if worker.stop_reason == "timeout":
                    raise LambdaTimeoutError(self.name, self.timeout_seconds) from None
                if worker.stop_reason == "shutdown":
                    raise LambdaShutdownError(self.name) from None
                status = _exit_description(await worker.exit_status())
                raise LambdaFunctionError(
                    self.name,
                    "Runtime.ExitError",
                    f"RequestId: {request_id} Error: Runtime exited with error: {status}",
                ) from None
            finally:
                timer.cancel()
                if answered and worker.stop_reason is None and not worker.retired and not pool.closed:
                    pool.idle.append(worker)
                else:
                    # Killed, dead, reconfigured, or abandoned mid-invocation (the caller was cancelled): an
                    # environment whose state is unknown is never reused.
                    pool.workers.discard(worker)
                    worker.kill(worker.stop_reason or "abandoned")
        if "result" in answer:
            return answer["result"]
        raise LambdaFunctionError(self.name, answer["errorType"], answer["errorMessage"])

    @staticmethod
    def _warm_worker(pool: _Pool) -> _Worker | None:
        while pool.idle:
            worker = pool.idle.pop()
            if worker.process.returncode is None:
                return worker
            # Died while idle (killed from outside, out of memory): Lambda would just start another.
            pool.workers.discard(worker)
        return None

    async def _cold_start(self, pool: _Pool) -> _Worker:
        self.cold_starts += 1
        runtime_dir = self._runtime_dir
        if runtime_dir is None:
            runtime_dir = await pool.loop.run_in_executor(None, runtime_provided)
        path = [str(d) for d in self.code_dirs]
        path += [str(layer / "python") for layer in self.layer_dirs]
        path.append(str(runtime_dir))
        day = time.strftime("%Y/%m/%d", time.gmtime())
        stream = f"{day}/[{self.version}]{uuid.uuid4().hex}"
        env = self.runtime_environment(stream, runtime_dir)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-S",
            str(WORKER_SCRIPT),
            json.dumps({"path": path, "function_arn": self.arn, "environment": sorted(env)}),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=self.code_dirs[0],
            # Its own session: a Ctrl-C meant for the stack must not interrupt handlers mid-invocation.
            start_new_session=True,
            limit=1 << 20,
        )
        worker = _Worker(process, self.name)
        pool.add(worker)
        if pool.closed:
            worker.kill("shutdown")
        timer = pool.loop.call_later(INIT_TIMEOUT_SECONDS, worker.kill, "timeout")
        try:
            answer = await worker.exchange(None)
        except _WorkerExited:
            pool.workers.discard(worker)
            if worker.stop_reason == "shutdown":
                raise LambdaShutdownError(self.name) from None
            if worker.stop_reason == "timeout":
                raise LambdaInitError(
                    self.name, "Sandbox.Timedout", f"Init phase timed out after {INIT_TIMEOUT_SECONDS:.2f} seconds"
                ) from None
            status = _exit_description(await worker.exit_status())
            raise LambdaInitError(
                self.name, "Runtime.ExitError", f"Runtime exited during init with error: {status}"
            ) from None
        except BaseException:
            pool.workers.discard(worker)
            worker.kill("abandoned")
            raise
        finally:
            timer.cancel()
        if not answer.get("ready"):
            pool.workers.discard(worker)
            worker.kill("init failed")
            error = LambdaInitError(self.name, answer["errorType"], answer["errorMessage"])
            logger.error("%s", error)
            raise error
        return worker

    def _current_pool(self) -> _Pool:
        pool = self._pool
        loop = asyncio.get_running_loop()
        if pool is None or pool.closed or pool.loop is not loop:
            if pool is not None:
                pool.close()  # environments of a loop that is gone cannot be driven from this one
            pool = self._pool = _Pool(self.concurrency)
        return pool

    async def _invoke_in_process(self, in_process: _InProcess, event: Any) -> Any:
        started = _Started()
        future = asyncio.get_running_loop().run_in_executor(in_process.pool, self._run_in_thread, event, started)
        wait = self.timeout_seconds
        while True:
            done, _ = await asyncio.wait((future,), timeout=wait)
            if done:
                break
            if started.at is None:
                continue
            wait = started.at + self.timeout_seconds - time.monotonic()
            if wait <= 0:
                # A thread cannot be killed: it runs on, and whatever it ends with is discarded.
                future.add_done_callback(_discard_outcome)
                self.timeouts += 1
                raise LambdaTimeoutError(self.name, self.timeout_seconds)
        try:
            return future.result()
        except LambdaTimeoutError:
            self.timeouts += 1
            raise
        except Exception:
            self.errors += 1
            raise

    def _run_in_thread(self, event: Any, started: _Started) -> Any:
        assert self._in_process is not None
        started.at = time.monotonic()
        streams = self._in_process.log_streams
        if getattr(streams, "name", None) is None:
            streams.name = f"{time.strftime('%Y/%m/%d', time.gmtime())}/[{self.version}]{uuid.uuid4().hex}"
        context = LambdaContext(
            function_name=self.name,
            function_version=self.version,
            invoked_function_arn=self.arn,
            memory_limit_in_mb=self.memory_mb,
            aws_request_id=str(uuid.uuid4()),
            log_group_name=self.log_group_name,
            log_stream_name=streams.name,
            deadline_ms=int(time.time() * 1000 + self.timeout_seconds * 1000),
        )
        result = self._in_process.handler(event, context)
        if time.monotonic() - started.at > self.timeout_seconds:
            raise LambdaTimeoutError(self.name, self.timeout_seconds)
        return result

    # ------------------------------------------------------------ lifecycle

    @property
    def warm_environments(self) -> int:
        """Execution environments alive now (idle or busy)."""
        if self._pool is None or self._pool.closed:
            return 0
        return sum(1 for worker in self._pool.workers if worker.process.returncode is None)

    def kill_busy_environments(self) -> int:
        """SIGKILL every execution environment that is running an invocation now; how many there were.

        What an out-of-memory kill or a crash of the runtime does on Lambda: each
        of those invocations fails with Runtime.ExitError (an SQS batch comes back
        whole) and the next one starts cold. Safe to call from any thread (tests
        drive the stack from their own): it only sends signals.
        """
        pool = self._pool
        if pool is None or pool.closed:
            return 0
        idle = {id(worker) for worker in list(pool.idle)}
        busy = [w for w in list(pool.workers) if id(w) not in idle and w.process.returncode is None]
        for worker in busy:
            if worker.stop_reason is None:
                worker.stop_reason = "killed"
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.process.pid, signal.SIGKILL)
        if busy:
            logger.warning("%s: killed %d busy execution environment(s)", self.name, len(busy))
        return len(busy)

    def shutdown(self, wait: bool = True) -> None:
        """Kill every execution environment now; queued and running invocations fail with `LambdaShutdownError`.

        The function stays invocable: the next invocation cold-starts, as a
        Lambda function does after its sandboxes are recycled (a restarted
        gateway reuses it). `wait` applies to the in-process mode only, whose
        threads cannot be killed.
        """
        if self._pool is not None:
            self._pool.close()
        if self._in_process is not None:
            self._in_process.restart().shutdown(wait=wait, cancel_futures=True)

    async def aclose(self) -> None:
        """`shutdown()`, then wait until every environment's process has exited and its log is drained."""
        pool = self._pool
        self.shutdown(wait=False)
        if pool is None or pool.loop is not asyncio.get_running_loop() or not pool.processes:
            return
        await asyncio.wait([worker.finished for worker in pool.processes], timeout=5)

    def __repr__(self) -> str:
        return f"LambdaFunction({self.name!r}, concurrency={self.concurrency})"


def _exit_description(status: int) -> str:
    # Lambda's wording: "exit status 1", or the signal that ended the runtime.
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"signal: {signal.Signals(-status).name}"
    return f"exit status {status}"


def _unsampled_trace_id() -> str:
    # X-Ray's header format: Root=1-<epoch seconds, hex>-<96 random bits>; not sampled, so nothing is sent.
    return f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]};Sampled=0"


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
