"""One Lambda function: its configuration, its invocations, its execution environments' lifecycle."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from local.deps_layer import runtime_provided
from local.lambda_runtime.environment import DEFAULT_ACCOUNT, DEFAULT_REGION, Credentials, validated_environment
from local.lambda_runtime.errors import (
    LambdaError,
    LambdaFunctionError,
    LambdaInitError,
    LambdaShutdownError,
    LambdaTimeoutError,
)
from local.lambda_runtime.in_process import Handler, InProcessHandler
from local.lambda_runtime.pool import DEFAULT_IDLE_LIMIT_SECONDS, WorkerPool
from local.lambda_runtime.template import Template, TemplateRefused, TemplateUnavailable
from local.lambda_runtime.worker import Worker, WorkerExited, exit_description, request_frame, start_worker
from local.lambda_worker import LambdaContext

logger = logging.getLogger("quanttrade.local.lambda")

# Lambda gives the init phase of an on-demand environment 10 seconds, whatever the function's timeout.
INIT_TIMEOUT_SECONDS = 10.0


class LambdaFunction:
    """One Lambda function: its handler, code, layers, environment and limits, and its execution environments.

    `handler` is `module.attribute` resolved in `code_dirs` + layers (a worker
    process per execution environment), or a Python callable run in threads of
    this process (test doubles only; no code or layers then).

    Counters, as CloudWatch's metrics: `invocations`, `errors` (handler errors,
    init failures, runtime exits), `timeouts`, and `cold_starts`; `in_flight`,
    the invocations begun and not yet answered (those waiting for a free
    environment too); and `reaped`, the environments shut down after
    `idle_limit_seconds` without an invocation (0: never), which Lambda does
    without telling.
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
        idle_limit_seconds: float = DEFAULT_IDLE_LIMIT_SECONDS,
        region: str = DEFAULT_REGION,
        account: str = DEFAULT_ACCOUNT,
        version: str = "$LATEST",
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        if idle_limit_seconds < 0:
            raise ValueError("idle_limit_seconds must be positive, or 0 for never")
        self.name = name
        self.timeout_seconds = float(timeout_seconds)
        self.memory_mb = int(memory_mb)
        self.concurrency = concurrency
        self.idle_limit_seconds = float(idle_limit_seconds)
        self.version = version
        self.region = region
        self.arn = f"arn:aws:lambda:{region}:{account}:function:{name}"
        self.log_group_name = f"/aws/lambda/{name}"
        self.invocations = 0
        self.in_flight = 0
        self.errors = 0
        self.timeouts = 0
        self.cold_starts = 0
        self.reaped = 0
        self.code_dirs = tuple(Path(d).resolve() for d in code_dirs)
        self.layer_dirs = tuple(Path(d).resolve() for d in layer_dirs)
        self._runtime_dir = None if runtime_dir is None else Path(runtime_dir).resolve()
        self._environment: dict[str, str] = {}
        self._credentials: Credentials | None = None
        self._endpoint_url: str | None = None
        self._pool: WorkerPool | None = None
        if isinstance(handler, str):
            if not self.code_dirs:
                raise ValueError(f"{name}: a handler named {handler!r} needs code_dirs to import it from")
            for directory in (*self.code_dirs, *self.layer_dirs):
                if not directory.is_dir():
                    raise ValueError(f"{name}: {directory} is not a directory")
            self.handler_spec: str | None = handler
            self._in_process: InProcessHandler | None = None
        else:
            if self.code_dirs or self.layer_dirs or runtime_dir is not None:
                raise ValueError(f"{name}: a Python callable runs in this process; it takes no code or layers")
            self.handler_spec = None
            self._in_process = InProcessHandler(handler, name, concurrency, version)
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
        environment = validated_environment(self.name, environment)
        if endpoint_url is not None and "AWS_ENDPOINT_URL" in environment:
            raise ValueError(f"{self.name}: AWS_ENDPOINT_URL given both in the environment and as endpoint_url")
        self._environment = environment
        self._credentials = credentials
        self._endpoint_url = endpoint_url
        if self._pool is not None:
            self._pool.retire_all()

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
        self.in_flight += 1
        try:
            return await self._answer(event, trace_id)
        finally:
            self.in_flight -= 1

    async def _answer(self, event: Any, trace_id: str | None) -> Any:
        if self._in_process is not None:
            try:
                return await self._in_process.invoke(event, self.timeout_seconds, self._context)
            except LambdaTimeoutError:
                self.timeouts += 1
                raise
            except Exception:
                self.errors += 1
                raise
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
            pool.put_idle(pool.take_warm() or await self._cold_start(pool))

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
            worker = pool.take_warm() or await self._cold_start(pool)
            request_id = str(uuid.uuid4())
            deadline_ms = int(time.time() * 1000 + self.timeout_seconds * 1000)
            # Lambda gives every invocation a trace header, an unsampled one when the caller sent none.
            trace_id = trace_id or _unsampled_trace_id()
            frame = request_frame(request_id, deadline_ms, trace_id, payload)
            timer = pool.loop.call_later(self.timeout_seconds, worker.kill, "timeout")
            answered = False
            try:
                answer = await worker.exchange(frame)
                answered = True
            except WorkerExited:
                if worker.stop_reason == "timeout":
                    raise LambdaTimeoutError(self.name, self.timeout_seconds) from None
                if worker.stop_reason == "shutdown":
                    raise LambdaShutdownError(self.name) from None
                status = exit_description(await worker.exit_status())
                raise LambdaFunctionError(
                    self.name,
                    "Runtime.ExitError",
                    f"RequestId: {request_id} Error: Runtime exited with error: {status}",
                ) from None
            finally:
                timer.cancel()
                if answered and worker.stop_reason is None and not worker.retired and not pool.closed:
                    pool.put_idle(worker)
                else:
                    # Killed, dead, reconfigured, or abandoned mid-invocation (the caller was cancelled): an
                    # environment whose state is unknown is never reused.
                    pool.workers.discard(worker)
                    worker.kill(worker.stop_reason or "abandoned")
        self._learn(pool, answer)
        if "result" in answer:
            return answer["result"]
        raise LambdaFunctionError(self.name, answer["errorType"], answer["errorMessage"])

    async def _cold_start(self, pool: WorkerPool) -> Worker:
        self.cold_starts += 1
        runtime_dir = self._runtime_dir
        if runtime_dir is None:
            runtime_dir = await pool.loop.run_in_executor(None, runtime_provided)
        path = [str(d) for d in self.code_dirs]
        path += [str(layer / "python") for layer in self.layer_dirs]
        path.append(str(runtime_dir))
        day = time.strftime("%Y/%m/%d", time.gmtime())
        stream = f"{day}/[{self.version}]{uuid.uuid4().hex}"
        generation = pool.generation
        env = self.runtime_environment(stream, runtime_dir)
        worker = await self._start_environment(pool, generation, path, env)
        pool.add(worker)
        if pool.closed:
            worker.kill("shutdown")
        timer = pool.loop.call_later(INIT_TIMEOUT_SECONDS, worker.kill, "timeout")
        try:
            answer = await worker.exchange(None)
        except WorkerExited:
            pool.workers.discard(worker)
            if worker.stop_reason == "shutdown":
                raise LambdaShutdownError(self.name) from None
            if worker.stop_reason == "timeout":
                raise LambdaInitError(
                    self.name, "Sandbox.Timedout", f"Init phase timed out after {INIT_TIMEOUT_SECONDS:.2f} seconds"
                ) from None
            status = exit_description(await worker.exit_status())
            raise LambdaInitError(
                self.name, "Runtime.ExitError", f"Runtime exited during init with error: {status}"
            ) from None
        except BaseException:
            pool.workers.discard(worker)
            worker.kill("abandoned")
            raise
        finally:
            timer.cancel()
        self._learn(pool, answer)
        if not answer.get("ready"):
            pool.workers.discard(worker)
            worker.kill("init failed")
            error = LambdaInitError(self.name, answer["errorType"], answer["errorMessage"])
            logger.error("%s", error)
            raise error
        return worker

    async def _start_environment(
        self, pool: WorkerPool, generation: int, path: list[str], env: dict[str, str]
    ) -> Worker:
        """A new environment's process: forked from the configuration's template, or started fresh when the
        template cannot fork cleanly (see `local.lambda_runtime.template`)."""
        code_dirs = [str(d) for d in self.code_dirs]
        cwd = self.code_dirs[0]
        for _ in range(2):  # a template that died is replaced once; a second death is not a coincidence
            # A cold start that began before a reconfiguration starts fresh: no template has its environment.
            if pool.fork_refused or pool.closed or pool.generation != generation:
                break
            async with pool.template_lock:
                template = pool.template
                if template is None or template.dead:
                    # As an environment but for its log stream, which is each environment's own.
                    template_env = {k: v for k, v in env.items() if k != "AWS_LAMBDA_LOG_STREAM_NAME"}
                    template = await Template.start(self.name, self.arn, path, template_env, cwd, code_dirs)
                    if not pool.add_template(template, generation):
                        break
            try:
                process = await template.fork(env, INIT_TIMEOUT_SECONDS)
            except TemplateRefused as refused:
                logger.warning("%s: cold starts start a fresh interpreter: %s", self.name, refused)
                if pool.template is template:
                    pool.fork_refused = True
                    pool.template = None
                template.retire()
            except TemplateUnavailable:
                continue
            except TimeoutError:
                template.close()
                raise LambdaInitError(
                    self.name, "Sandbox.Timedout", f"Init phase timed out after {INIT_TIMEOUT_SECONDS:.2f} seconds"
                ) from None
            else:
                return Worker(process, self.name)
        return await start_worker(self.name, self.arn, path, env, cwd, code_dirs)

    @staticmethod
    def _learn(pool: WorkerPool, answer: dict[str, Any]) -> None:
        modules = answer.pop("modules", None)
        if modules and pool.template is not None:
            pool.template.learn(modules)

    def _current_pool(self) -> WorkerPool:
        pool = self._pool
        loop = asyncio.get_running_loop()
        if pool is None or pool.closed or pool.loop is not loop:
            if pool is not None:
                pool.close()  # environments of a loop that is gone cannot be driven from this one
            pool = self._pool = WorkerPool(self.concurrency, self.idle_limit_seconds, self._count_reaped)
        return pool

    def _count_reaped(self) -> None:
        self.reaped += 1
        logger.info("%s: shut down an execution environment idle for %g s", self.name, self.idle_limit_seconds)

    def _context(self, log_stream_name: str) -> LambdaContext:
        """The context an in-process handler gets, its deadline counted from now."""
        return LambdaContext(
            function_name=self.name,
            function_version=self.version,
            invoked_function_arn=self.arn,
            memory_limit_in_mb=self.memory_mb,
            aws_request_id=str(uuid.uuid4()),
            log_group_name=self.log_group_name,
            log_stream_name=log_stream_name,
            deadline_ms=int(time.time() * 1000 + self.timeout_seconds * 1000),
        )

    # ------------------------------------------------------------ lifecycle

    @property
    def warm_environments(self) -> int:
        """Execution environments alive now (idle or busy)."""
        if self._pool is None or self._pool.closed:
            return 0
        return sum(1 for worker in self._pool.workers if worker.process.returncode is None)

    @property
    def environment_pids(self) -> list[int]:
        """The process ids of the execution environments alive now (what memory and CPU are measured by)."""
        if self._pool is None or self._pool.closed:
            return []
        return sorted(worker.process.pid for worker in self._pool.workers if worker.process.returncode is None)

    @property
    def template_pids(self) -> list[int]:
        """The process ids of the templates the environments are forked from (see `local.lambda_runtime.template`)."""
        if self._pool is None or self._pool.closed:
            return []
        return sorted(t.process.pid for t in self._pool.templates if t.process.returncode is None)

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
            worker.kill_from_any_thread()
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
        if pool is None or pool.loop is not asyncio.get_running_loop():
            return
        finishing = [worker.finished for worker in pool.processes] + [t.finished for t in pool.templates]
        if finishing:
            await asyncio.wait(finishing, timeout=5)

    def __repr__(self) -> str:
        return f"LambdaFunction({self.name!r}, concurrency={self.concurrency})"


def _unsampled_trace_id() -> str:
    # X-Ray's header format: Root=1-<epoch seconds, hex>-<96 random bits>; not sampled, so nothing is sent.
    return f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]};Sampled=0"
