"""Runs Lambda handlers in-process the way the Lambda service runs them.

Each `LambdaFunction` owns a thread pool sized like the function's concurrency,
so invocations of one function run in parallel with each other and with every
other function, and a slow handler never blocks the event loop that called it.
Every invocation gets a context object with the attributes the Python runtime
provides. The gateway emulator and the SQS pollers of the local stack share
this one wrapper, so a handler behaves the same whichever trigger invokes it.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from quanttrade_ws import topology

logger = logging.getLogger("quanttrade.local.lambda")

Handler = Callable[[Any, Any], Any]

DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT = "123456789012"  # moto's default account, so ARNs line up with the local AWS resources


class LambdaTimeoutError(Exception):
    """The handler ran past its timeout. Lambda reports this and discards whatever the handler returns later."""


class LambdaContext:
    """The context object of the Python runtime (awslambdaric), attribute for attribute."""

    __slots__ = (
        "_deadline",
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
        memory_limit_in_mb: int,
        aws_request_id: str,
        log_group_name: str,
        log_stream_name: str,
        timeout_seconds: float,
    ) -> None:
        self.function_name = function_name
        self.function_version = function_version
        self.invoked_function_arn = invoked_function_arn
        # The real runtime copies AWS_LAMBDA_FUNCTION_MEMORY_SIZE as is, so it is a string there too.
        self.memory_limit_in_mb = str(memory_limit_in_mb)
        self.aws_request_id = aws_request_id
        self.log_group_name = log_group_name
        self.log_stream_name = log_stream_name
        self.identity = None
        self.client_context = None
        self.tenant_id = None
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    def __repr__(self) -> str:
        return f"LambdaContext(function_name={self.function_name!r}, aws_request_id={self.aws_request_id!r})"


def _discard_outcome(future: asyncio.Future[Any]) -> None:
    # Whatever an overrun handler ends with has no one waiting for it; retrieving it keeps asyncio quiet.
    if not future.cancelled():
        future.exception()


class _Invocation:
    """What the loop side needs to know about one invocation running (or queued) in the pool."""

    __slots__ = ("started", "timed_out")

    def __init__(self) -> None:
        self.started: float | None = None
        self.timed_out = False


class LambdaFunction:
    """One Lambda function: a handler, its configuration, and a pool of execution environments.

    `handler` is the callable itself or a `module.attribute` string resolved under
    `package` on first invocation, inside a worker thread, as a cold start would
    import it. A failed import is retried on the next invocation rather than
    remembered, so a module fixed while the local stack runs is picked up.
    """

    def __init__(
        self,
        name: str,
        handler: Handler | str,
        *,
        package: str = "handlers",
        timeout_seconds: float = 10.0,
        memory_mb: int = 256,
        concurrency: int = 8,
        region: str = DEFAULT_REGION,
        account: str = DEFAULT_ACCOUNT,
        version: str = "$LATEST",
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.name = name
        self.timeout_seconds = float(timeout_seconds)
        self.memory_mb = memory_mb
        self.concurrency = concurrency
        self.version = version
        self.arn = f"arn:aws:lambda:{region}:{account}:function:{name}"
        self.log_group_name = f"/aws/lambda/{name}"
        self.invocations = 0
        self.errors = 0
        self.timeouts = 0
        self._package = package
        self._spec = handler if isinstance(handler, str) else None
        self._handler: Handler | None = None if isinstance(handler, str) else handler
        self._resolve_lock = threading.Lock()
        self._environment = threading.local()  # one log stream per worker thread, as per execution environment
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"lambda-{name}")

    @classmethod
    def from_topology(
        cls,
        function: topology.Function,
        *,
        package: str = "handlers",
        name_prefix: str = "quanttrade-",
        concurrency: int | None = None,
        region: str = DEFAULT_REGION,
        account: str = DEFAULT_ACCOUNT,
    ) -> LambdaFunction:
        """The function as the topology declares it; its handler is imported lazily from `package`."""
        return cls(
            f"{name_prefix}{function.name}",
            function.handler,
            package=package,
            timeout_seconds=function.timeout_seconds,
            memory_mb=function.memory_mb,
            concurrency=concurrency or function.reserved_pool,
            region=region,
            account=account,
        )

    @property
    def handler(self) -> Handler:
        """The handler callable, importing its module on first use."""
        resolved = self._handler
        if resolved is not None:
            return resolved
        with self._resolve_lock:
            if self._handler is None:
                assert self._spec is not None
                module_name, _, attribute = self._spec.rpartition(".")
                module_path = f"{self._package}.{module_name}" if self._package else module_name
                self._handler = getattr(importlib.import_module(module_path), attribute)
            return self._handler

    async def invoke(self, event: Any) -> Any:
        """Run the handler in this function's pool and return what it returns (or raise what it raises).

        The timeout counts from the moment a worker picks the invocation up, not
        from when it was queued: waiting for a free worker stands in for Lambda
        scaling out, which does not eat into the function's timeout. A handler
        that overruns raises `LambdaTimeoutError` here; its thread runs on to
        completion (threads cannot be killed) and its result is discarded.
        """
        self.invocations += 1
        invocation = _Invocation()
        future = asyncio.get_running_loop().run_in_executor(self._pool, self._run, event, invocation)
        wait = self.timeout_seconds
        while True:
            done, _ = await asyncio.wait((future,), timeout=wait)
            if done:
                break
            if invocation.started is None:
                continue
            wait = invocation.started + self.timeout_seconds - time.monotonic()
            if wait <= 0:
                invocation.timed_out = True
                future.add_done_callback(_discard_outcome)
                self.timeouts += 1
                logger.warning("%s: Task timed out after %.2f seconds", self.name, self.timeout_seconds)
                raise LambdaTimeoutError(f"Task timed out after {self.timeout_seconds:.2f} seconds")
        try:
            return future.result()
        except LambdaTimeoutError:
            self.timeouts += 1
            raise
        except Exception:
            self.errors += 1
            raise

    def shutdown(self, wait: bool = True) -> None:
        """Stop the pool. Queued invocations are cancelled; running ones finish unless `wait` is False.

        The function stays invocable with a fresh pool (its threads start on demand), as a Lambda
        function is after its sandboxes are recycled: a restarted gateway reuses it.
        """
        stopped, self._pool = self._pool, ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix=f"lambda-{self.name}"
        )
        stopped.shutdown(wait=wait, cancel_futures=True)

    def _run(self, event: Any, invocation: _Invocation) -> Any:
        invocation.started = time.monotonic()
        context = LambdaContext(
            function_name=self.name,
            function_version=self.version,
            invoked_function_arn=self.arn,
            memory_limit_in_mb=self.memory_mb,
            aws_request_id=str(uuid.uuid4()),
            log_group_name=self.log_group_name,
            log_stream_name=self._log_stream_name(),
            timeout_seconds=self.timeout_seconds,
        )
        debug = logger.isEnabledFor(logging.DEBUG)
        if debug:
            logger.debug("START RequestId: %s Version: %s (%s)", context.aws_request_id, self.version, self.name)
        try:
            result = self.handler(event, context)
        finally:
            if debug:
                elapsed = (time.monotonic() - invocation.started) * 1000
                logger.debug("REPORT RequestId: %s Duration: %.2f ms", context.aws_request_id, elapsed)
        if invocation.timed_out or time.monotonic() - invocation.started > self.timeout_seconds:
            raise LambdaTimeoutError(f"Task timed out after {self.timeout_seconds:.2f} seconds")
        return result

    def _log_stream_name(self) -> str:
        stream = getattr(self._environment, "log_stream_name", None)
        if stream is None:
            day = time.strftime("%Y/%m/%d", time.gmtime())
            stream = f"{day}/[{self.version}]{uuid.uuid4().hex}"
            self._environment.log_stream_name = stream
        return stream

    def __repr__(self) -> str:
        return f"LambdaFunction({self.name!r}, concurrency={self.concurrency})"
