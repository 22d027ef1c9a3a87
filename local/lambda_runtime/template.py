"""A function configuration's template: the interpreter its execution environments are forked from.

The template is started exactly as an environment is (`start_worker`'s flags,
import path, environment, working directory, its own session) and then serves
as `local.lambda_worker.ForkServer`: each cold start sends it the new
environment's variables and three pipes, it forks, and the child runs the init
phase (the handler's import) as a freshly started interpreter would. Before it
forks, the template imports what earlier environments of the configuration
imported outside their code directories (`Template.learn`), so those imports are
paid once per configuration instead of once per environment.

This process is not the children's parent, so what asyncio's subprocess gives
for a child it started comes from the template instead: each child's pidfd
(signals go to that exact process even once its pid is reused) and its exit
status, which the template reaps and reports. A template that dies takes its
environments with it (they are killed by PR_SET_PDEATHSIG), so each of them
ends as killed; the next cold start starts another template.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import json
import os
import signal
import socket
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from local.lambda_runtime.worker import STREAM_LIMIT, forward_log, spawn_interpreter
from local.lambda_worker import HEADER, complete_frames, receive_with_descriptors


class TemplateUnavailable(Exception):
    """The template cannot fork this environment: it died, or forking it would not give a clean environment."""


class TemplateRefused(TemplateUnavailable):
    """The template would fork a thread or a socket into every environment; its configuration starts them fresh."""


class ForkedProcess:
    """An environment forked by a template: what `Worker` uses of a process (pid, returncode, pipes, kill, wait)."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdin: asyncio.StreamWriter | None = None
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None
        self._pidfd = pidfd
        # Open as long as this object lives, not just until the exit: a kill from another thread must never find
        # the number reused by another environment's pidfd.
        weakref.finalize(self, os.close, pidfd)
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._following = False

    def kill(self) -> None:
        """SIGKILL through the pidfd: safe from any thread, and never reaches another process."""
        if self.returncode is None:
            with contextlib.suppress(OSError):  # ESRCH: it has exited and its report is on its way
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def exited(self, status: int) -> None:
        if self._exited.done():
            return
        self.returncode = status
        self._exited.set_result(status)
        if self.stdin is not None:
            self.stdin.close()  # the other pipes close on their own at end of file

    def follow_without_parent(self, loop: asyncio.AbstractEventLoop) -> None:
        """The template died: this child dies too (PR_SET_PDEATHSIG); its pidfd becomes readable when it has."""
        if self._exited.done() or self._following:
            return
        self._following = True

        def gone() -> None:
            loop.remove_reader(self._pidfd)
            self.exited(-signal.SIGKILL)

        loop.add_reader(self._pidfd, gone)


class Template:
    """One configuration's template process, the environments it forked, and what they import."""

    def __init__(self, process: asyncio.subprocess.Process, control: socket.socket, function_name: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.process = process
        self.function_name = function_name
        self.dead = False
        self.retired = False  # the configuration changed: no more forks; it ends with its last environment
        self._control = control
        self._buffer = b""
        self._descriptors: collections.deque[int] = collections.deque()
        self._pending: collections.deque[asyncio.Future[ForkedProcess]] = collections.deque()
        self._children: dict[int, ForkedProcess] = {}
        self._send_lock = asyncio.Lock()
        self._modules: dict[str, None] = {}  # learned so far, in import order
        self._modules_sent = 0
        assert process.stderr is not None
        self.finished = asyncio.ensure_future(self._finish(forward_log(process.stderr, f"{function_name} template")))
        self.loop.add_reader(control, self._on_readable)

    @classmethod
    async def start(
        cls,
        function_name: str,
        function_arn: str,
        path: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
        code_dirs: Sequence[str],
    ) -> Template:
        """Start a template the way `start_worker` starts an environment; its control socket is its stdin."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        config = {"template": True, "path": list(path), "code_dirs": list(code_dirs), "function_arn": function_arn}
        try:
            process = await spawn_interpreter(
                config, env, cwd, stdin=theirs.fileno(), stdout=asyncio.subprocess.DEVNULL
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return cls(process, ours, function_name)

    def learn(self, modules: Iterable[str] | None) -> None:
        """Modules an environment of this configuration imported; the next forks preload them."""
        for name in modules or ():
            self._modules.setdefault(name, None)

    async def fork(self, env: Mapping[str, str], timeout: float) -> ForkedProcess:
        """A new environment that sees exactly `env`; its init answer is still to read.

        Raises `TemplateUnavailable` (`TemplateRefused`) or TimeoutError when
        the template has not forked within `timeout` (its preload hangs).
        """
        if self.dead or self.retired:
            raise TemplateUnavailable(f"{self.function_name}: the template is gone")
        requests_r, requests_w = os.pipe()
        answers_r, answers_w = os.pipe()
        log_r, log_w = os.pipe()
        theirs = [requests_r, answers_w, log_w]
        ours = [requests_w, answers_r, log_r]
        try:
            async with self._send_lock:
                modules = list(self._modules)
                order = {"environment": dict(env), "modules": modules[self._modules_sent :]}
                future: asyncio.Future[ForkedProcess] = self.loop.create_future()
                self._pending.append(future)
                try:
                    await self._send(_frame(order), theirs)
                except BaseException as error:
                    # Part of the order may have gone out: the stream of orders can no longer be trusted.
                    self.close()
                    if isinstance(error, OSError):
                        raise TemplateUnavailable(f"{self.function_name}: the template is gone: {error}") from None
                    raise
                self._modules_sent = len(modules)
            for fd in theirs:
                os.close(fd)
            theirs = []
            try:
                process = await asyncio.wait_for(asyncio.shield(future), timeout)
            except BaseException:
                future.cancel()  # a child forked after all is killed as soon as it is reported
                raise
            descriptors, ours = ours, []
            try:
                await self._connect(process, descriptors)
            except BaseException:
                process.kill()
                raise
            return process
        finally:
            for fd in (*theirs, *ours):
                os.close(fd)

    def retire(self) -> None:
        """No more forks; the process ends once the environments it forked have (they would die with it)."""
        self.retired = True
        if not self._children:
            self.close()

    def close(self) -> None:
        """End the template now (its environments die with it) and fail the forks it still owes."""
        if not self.dead:
            self._died()
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    async def _finish(self, forward: Any) -> None:
        await forward
        await self.process.wait()

    async def _send(self, data: bytes, descriptors: list[int]) -> None:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", descriptors))]
        while True:
            try:
                sent = self._control.sendmsg([data], ancillary)
                break
            except BlockingIOError:
                writable = self.loop.create_future()
                self.loop.add_writer(self._control, writable.set_result, None)
                try:
                    await writable
                finally:
                    self.loop.remove_writer(self._control)
        if sent < len(data):
            await self.loop.sock_sendall(self._control, data[sent:])

    async def _connect(self, process: ForkedProcess, descriptors: list[int]) -> None:
        requests_w, answers_r, log_r = descriptors
        loop = self.loop
        process.stdout = await _reader(loop, answers_r)
        process.stderr = await _reader(loop, log_r)
        transport, protocol = await loop.connect_write_pipe(
            lambda: asyncio.streams.FlowControlMixin(loop=loop), os.fdopen(requests_w, "wb", buffering=0)
        )
        process.stdin = asyncio.StreamWriter(transport, protocol, None, loop)

    def _on_readable(self) -> None:
        try:
            data, descriptors = receive_with_descriptors(self._control)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, descriptors = b"", []
        self._descriptors.extend(descriptors)
        if not data:
            self._died()
            return
        reports, self._buffer = complete_frames(self._buffer + data)
        for report in reports:
            self._on_report(report)

    def _on_report(self, report: dict[str, Any]) -> None:
        if "exited" in report:
            child = self._children.pop(report["exited"], None)
            if child is not None:
                child.exited(report["status"])
            if self.retired and not self._children:
                self.close()
            return
        future = self._pending.popleft()
        if "forked" in report:
            # Registered now, not when the forking coroutine resumes: the child's exit may be the next report.
            child = ForkedProcess(report["forked"], self._descriptors.popleft())
            self._children[child.pid] = child
            if future.done():  # the cold start was abandoned (cancelled, timed out): so is this environment
                child.kill()
            else:
                future.set_result(child)
        elif not future.done():
            future.set_exception(TemplateRefused(f"{self.function_name}: {report['error']}"))

    def _died(self) -> None:
        self.dead = True
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self._control)
        self._control.close()
        while self._descriptors:
            os.close(self._descriptors.popleft())
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(TemplateUnavailable(f"{self.function_name}: the template exited"))
        for child in self._children.values():
            child.follow_without_parent(self.loop)
        self._children.clear()


def _frame(order: dict[str, Any]) -> bytes:
    body = json.dumps(order, separators=(",", ":")).encode()
    return HEADER.pack(len(body)) + body


async def _reader(loop: asyncio.AbstractEventLoop, fd: int) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(fd, "rb", 0))
    return reader
