"""moto in server mode as the local stack's DynamoDB, SQS and EventBridge.

Two ways to run it:

* ``subprocess`` (the default): a child Python process serves moto, so moto's
  request handling (XML/JSON (de)serialisation, HTTP, the SQS long-poll
  loop) runs on its own interpreter and its own core instead of competing for
  the GIL with the gateway emulator and the handlers' worker threads. The
  child learns its port from the kernel (port 0 works, race-free) and reports
  it on stdout; it exits when its stdin closes, so it never outlives a parent
  that died without cleaning up.
* ``thread``: the same server on a thread inside this process. Starts faster
  and is handy under a debugger, but shares the GIL with everything else.

Measured on the 2-core development machine: publish-to-receive latency
through the whole stack (PutEvents until a subscribed WebSocket client has
the tick; 150 sequential ticks, 50 ms apart):

    simulator off      p50  32 ms  p95 123 ms  max  298 ms   subprocess
                       p50  49 ms  p95 277 ms  max 1025 ms   thread
    simulator 6/s      p50  45 ms  p95 292 ms  max  532 ms   subprocess
                       p50 117 ms  p95 3.3 s   max  5.0 s    thread

With the thread, moto's CPU (about 40% of a core at 6 ticks/s) competes
with the gateway and the handlers for one GIL; as a child it has a core of
its own. Hence the default.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import IO, Any, Literal

from local.cli.arguments import positive
from local.heap import freeze_startup_heap
from local.moto_dynamodb import DEFAULT_TTL_SWEEP_SECONDS, REQUEST_LOCK
from local.moto_http import KeepAliveWsgiServer

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4566
READY_PREFIX = "MOTO_READY"
FREEZE_COMMAND = "freeze"  # a line on the child's stdin: its heap as it is now is startup's (`freeze_heap`)
FROZEN_PREFIX = "MOTO_FROZEN"  # the child's answer, with how many objects it froze
GRACEFUL_EXIT_SECONDS = 1.5
DYNAMODB_TARGET_PREFIX = "DynamoDB_20120810."
SQS_TARGET_PREFIX = "AmazonSQS."
EVENTS_TARGET_PREFIX = "AWSEvents."

Mode = Literal["subprocess", "thread"]

# moto signs nothing and checks nothing, but botocore refuses to send unsigned requests.
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


class MotoServerError(RuntimeError):
    """moto did not come up (port taken, child crashed) or did not answer in time."""


class MotoServer:
    """One moto server: start, wait until it answers, hand out clients, stop.

    ``port=0`` asks the kernel for a free port; ``endpoint_url`` has the real one after ``start()``.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        mode: Mode = "subprocess",
        region: str = "us-east-1",
        start_timeout: float = 30.0,
        ttl_sweep_seconds: float | None = DEFAULT_TTL_SWEEP_SECONDS,
    ) -> None:
        if mode not in ("subprocess", "thread"):
            raise ValueError(f"mode must be 'subprocess' or 'thread', not {mode!r}")
        self.host = host
        self.port = port
        self.mode: Mode = mode
        self.region = region
        self.start_timeout = start_timeout
        self.ttl_sweep_seconds = ttl_sweep_seconds
        self._process: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None
        self._threaded: Any = None
        self._ttl_sweeper: threading.Event | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        return self._threaded is not None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> MotoServer:
        if self.running:
            return self
        if self.mode == "thread":
            self._start_thread()
        else:
            self._start_subprocess()
        self.wait_until_answering(self.start_timeout)
        return self

    def _start_thread(self) -> None:
        try:
            server = _make_server(self.host, self.port)
        except OSError as error:
            raise MotoServerError(f"moto could not listen on {self.host}:{self.port}: {error}") from error
        threading.Thread(target=server.serve_forever, name="moto-server", daemon=True).start()
        self._threaded = server
        self._ttl_sweeper = _start_ttl_sweeper(self.ttl_sweep_seconds)
        self.port = server.server_port

    def _start_subprocess(self) -> None:
        command = [sys.executable, "-m", "local.moto_server", "--host", self.host, "--port", str(self.port)]
        command += ["--ttl-sweep-seconds", str(self.ttl_sweep_seconds or 0)]
        project_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (project_root, env.get("PYTHONPATH", "")) if p)
        # moto serves requests on many threads, and glibc gives threads arenas of their own (up to 8 per
        # core): freed memory stays scattered over them, so the resident size creeps up for hours while
        # moto's own objects do not grow. Two arenas keep it where the live objects are.
        env.setdefault("MALLOC_ARENA_MAX", "2")
        # stderr goes to a file, not a pipe: nobody reads a pipe while the stack runs, and a full pipe would
        # block the child mid-request. The file is read only to explain a failed start.
        self._stderr = tempfile.TemporaryFile(mode="w+", prefix="moto-server-", suffix=".log")  # noqa: SIM115
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=project_root,
            env=env,
        )
        line = self._read_line()
        parts = line.split()
        if len(parts) != 3 or parts[0] != READY_PREFIX:
            errors = self._drain_stderr()
            self.stop()
            raise MotoServerError(f"moto server did not start: {line.strip() or errors or 'no output'}")
        self.port = int(parts[2])

    def _read_line(self) -> str:
        """The child's next stdout line, or '' if it does not print one within `start_timeout`."""
        assert self._process is not None and self._process.stdout is not None
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(self._process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(self.start_timeout)
        return lines[0] if lines else ""

    def _drain_stderr(self) -> str:
        if self._stderr is None:
            return ""
        if self._process is not None:
            try:
                self._process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                return ""
        self._stderr.seek(0)
        return self._stderr.read()[-2000:].strip()

    def wait_until_answering(self, timeout: float) -> None:
        """Poll moto's own status endpoint until it answers: a bound port is not yet a serving app."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise MotoServerError(f"moto server exited with {self._process.returncode}: {self._drain_stderr()}")
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/data.json", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError) as error:
                last_error = error
            time.sleep(0.05)
        raise MotoServerError(f"moto server at {self.endpoint_url} did not answer within {timeout}s: {last_error}")

    def stop(self, timeout: float = 10.0) -> None:
        if self._ttl_sweeper is not None:
            self._ttl_sweeper.set()
            self._ttl_sweeper = None
        if self._threaded is not None:
            self._threaded.shutdown()
            self._threaded.server_close()
            self._threaded = None
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            # Closing stdin is the child's cue to shut down. Its state lives only in memory and dies with it,
            # so a child still busy after a moment (a saturated server finishing requests) is killed: a stop
            # must not wait on it.
            try:
                if process.stdin is not None:
                    process.stdin.close()
                process.wait(timeout=min(timeout, GRACEFUL_EXIT_SECONDS))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdout, process.stdin, self._stderr):
            if stream is not None and not stream.closed:
                stream.close()
        self._stderr = None

    def freeze_heap(self) -> int | None:
        """Tell a moto of its own process that what it holds now (its backends, the provisioned resources)
        is startup's, kept out of its full collections (`local.heap`); how many objects it froze.

        None if it did not answer in time, or if moto runs in this process (the caller's to manage).
        """
        process = self._process
        if process is None or process.stdin is None or process.poll() is not None:
            return None
        try:
            process.stdin.write(FREEZE_COMMAND + "\n")
            process.stdin.flush()
        except (BrokenPipeError, ValueError):
            return None  # the child is gone or going: `stop` and the readiness probe report it
        parts = self._read_line().split()
        return int(parts[1]) if len(parts) == 2 and parts[0] == FROZEN_PREFIX else None

    def reset(self) -> None:
        """Forget every table, queue, bus and item (moto's reset API): a clean slate without a restart."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ clients and provisioning

    def client(self, service: str, **config: Any) -> Any:
        import boto3
        from botocore.config import Config

        make_client: Any = boto3.client  # any service by name: the stubs only type literal names
        return make_client(
            service,
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, **config),
            **CREDENTIALS,
        )


# ---------------------------------------------------------------------- the child process


def _make_server(host: str, port: int) -> Any:
    """moto's WSGI app on a keep-alive server (`local.moto_http`), bound here so a taken port raises at once.

    (``moto.server.ThreadedMotoServer`` binds inside its thread and then waits forever
    for a ready event that a failed bind never sets.)
    """
    from moto import backends
    from moto.core import responses
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    from local import moto_dynamodb, moto_events, moto_sqs

    # moto would keep every item version, message and stream record it ever made (see _untracked_models).
    _untracked_models()
    # Per-request atomicity, item-level transactions and partition queries: without them, concurrent
    # transactions get HTTP 500s and requests cost time in proportion to whole tables (local/moto_dynamodb.py).
    moto_dynamodb.patch()
    # Sends that do not count the queue's backlog (local/moto_sqs.py).
    moto_sqs.patch()
    # Each event's input paths parsed once per text, not once per delivery (local/moto_events.py).
    moto_events.patch()
    # A JSON body is never read as a query string: text in a value could name the operation (_json_bodies...).
    _json_bodies_are_not_query_strings()
    # moto lists a handler class's methods (inspect.getmembers) on every request to find the operation's.
    responses.method_names_from_class = functools.lru_cache(maxsize=None)(responses.method_names_from_class)
    # moto's dispatcher lists its package directory from disk on every request to place it; it never changes.
    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules

    app = _json_services_first(DomainDispatcherApplication(create_backend_app))
    return KeepAliveWsgiServer(host, port, app, inline=_runs_inline)


# DynamoDB operations bounded by the service's own caps (a transaction of 100 items, a batch of 100 keys or
# 25 writes): short enough to run on the server's event-loop thread. A Query or a Scan reads up to 1 MB a
# page and goes to a pool thread, so it never holds up the other requests' answers.
INLINE_DYNAMODB_OPERATIONS = frozenset(
    DYNAMODB_TARGET_PREFIX + operation
    for operation in (
        "GetItem",
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "BatchGetItem",
        "BatchWriteItem",
        "TransactGetItems",
        "TransactWriteItems",
    )
)
# SQS and EventBridge operations that never wait: sends, deletes, visibility changes and PutEvents (whose
# deliveries to queues are sends). A ReceiveMessage may wait up to 20 s for messages: always a pool thread's.
INLINE_OPERATIONS = frozenset(
    {
        *(
            SQS_TARGET_PREFIX + operation
            for operation in (
                "SendMessage",
                "SendMessageBatch",
                "DeleteMessage",
                "DeleteMessageBatch",
                "ChangeMessageVisibility",
                "ChangeMessageVisibilityBatch",
            )
        ),
        EVENTS_TARGET_PREFIX + "PutEvents",
    }
)


def _runs_inline(environ: dict[str, Any]) -> bool:
    """A request that never waits: one of `INLINE_OPERATIONS`, or a DynamoDB item operation while no other
    DynamoDB request (a long Query, the TTL sweep) holds the lock every one of them takes. The loop thread
    must not wait for that lock, or every other answer would wait too."""
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target in INLINE_OPERATIONS:
        return True
    if target not in INLINE_DYNAMODB_OPERATIONS or not REQUEST_LOCK.acquire(blocking=False):
        return False
    # The request takes it again. Should a pool thread take it in between, this one waits for that one.
    REQUEST_LOCK.release()
    return True


def _untracked_models() -> None:
    """Stop moto from keeping every model instance it ever made.

    moto appends each instance of its models to a list on the class
    (`instances_tracked`), for its dashboard's `/moto-api/data.json`, and never
    removes it: every DynamoDB item version a write replaces or TTL deletes,
    every SQS message (each event the bus delivers, each delivery chunk), every
    stream record stays alive for as long as the server runs. That was the
    local stack's slow memory creep (about 3.5 MiB a minute with the simulator
    on; tracemalloc snapshots 20 minutes apart showed it as SQS messages and
    DynamoDB attribute values that no table held any more). The stack never
    reads that list; the dashboard endpoint still answers, with empty lists.
    """
    from moto.core.common_models import BaseModel

    def untracked(cls: type, *args: Any, **kwargs: Any) -> Any:
        return object.__new__(cls)

    BaseModel.__new__ = staticmethod(untracked)  # type: ignore[assignment, method-assign]


def _json_bodies_are_not_query_strings() -> None:
    """moto reads the operation and parameters of JSON-protocol requests as AWS does, from X-Amz-Target and JSON.

    moto's `BaseResponse.setup_class` parses every request body as a query
    string, form-encoded or not, and `_get_action` takes an `Action` found there
    before the X-Amz-Target header. So a JSON request whose text holds
    `&Action=...&` anywhere, in any value, ran that operation instead: a
    `PutItem` of a string with `&Action=DeleteTable&` deleted the table, an SQS
    message body with `&Action=PurgeQueue&` purged the queue, an event's detail
    with `&Action=DeleteEventBus&Name=...&` deleted the bus (measured; the front
    door had authorised the operation the header named). Any client frame or
    upstream event that reaches a write could do it. AWS dispatches the JSON
    protocols on X-Amz-Target alone. A request with an `application/x-amz-json`
    content type therefore skips that parse (its query-string view is then what
    moto builds for an empty body: the URL's query, else the headers); the body
    stays the text the handlers read.
    """
    from moto.core.responses import BaseResponse

    setup_class = BaseResponse.setup_class

    def setup_json_aware(
        self: Any, request: Any, full_url: Any = None, headers: Any = None, use_raw_body: Any = None
    ) -> None:
        raw = self.use_raw_body if use_raw_body is None else use_raw_body
        if raw or not (request.content_type or "").startswith("application/x-amz-json"):
            setup_class(self, request, full_url, headers, use_raw_body)
            return
        setup_class(self, request, full_url, headers, use_raw_body=True)
        if isinstance(self.body, bytes):
            self.body = self.body.decode("utf-8")  # what setup_class does with a body it did not keep raw

    BaseResponse.setup_class = setup_json_aware  # type: ignore[method-assign]


def _json_services_first(app: Any) -> Any:
    """moto's WSGI app, with DynamoDB, SQS and EventBridge requests handed straight to their moto handlers.

    moto routes every request through a Flask app per service (URL map, request
    context, CORS, response conversion): measured here at about a third of
    moto's CPU for a GetItem, and a fifth for an SQS batch. These three speak
    AWS's JSON protocol, one endpoint each, with the operation named in
    X-Amz-Target, so their requests need none of it; everything else goes
    through moto's own dispatcher.
    """
    from moto.core.request import Request
    from moto.dynamodb.responses import DynamoHandler
    from moto.events.responses import EventsHandler
    from moto.sqs.responses import SQSResponse
    from werkzeug.wrappers import Response

    class ServerRequest(Request):
        from_wsgi_server = True  # as moto's own server marks its requests (moto then leaves the Date header to us)

    handlers = {
        DYNAMODB_TARGET_PREFIX: DynamoHandler,
        SQS_TARGET_PREFIX: SQSResponse,
        EVENTS_TARGET_PREFIX: EventsHandler,
    }

    def dispatch(environ: dict[str, Any], start_response: Any) -> Any:
        prefix, dot, _ = environ.get("HTTP_X_AMZ_TARGET", "").partition(".")
        handler = handlers.get(prefix + dot)
        if handler is None:
            return app(environ, start_response)
        request = ServerRequest(environ)
        status, headers, body = handler.dispatch(request, request.raw_url, dict(request.headers))
        return Response(body, status=status, headers=headers)(environ, start_response)

    return dispatch


def _start_ttl_sweeper(interval: float | None) -> threading.Event | None:
    from local.moto_dynamodb import start_ttl_sweeper

    return start_ttl_sweeper(interval) if interval else None


def _trace_memory(prefix: str) -> None:
    """QT_MOTO_TRACEMALLOC=<path prefix>: trace allocations; each SIGUSR1 dumps a snapshot to <prefix>.<n>,
    for `tracemalloc.Snapshot.load(...).compare_to(...)` to show what grew between two of them."""
    import tracemalloc

    tracemalloc.start(12)
    dumps = iter(range(1_000_000))

    def dump(signum: int, frame: object) -> None:
        tracemalloc.take_snapshot().dump(f"{prefix}.{next(dumps)}")

    signal.signal(signal.SIGUSR1, dump)


def _serve(host: str, port: int, ttl_sweep_seconds: float | None) -> None:
    """Run moto in this process until stdin closes or a signal arrives."""
    if os.environ.get("QT_MOTO_TRACEMALLOC"):
        _trace_memory(os.environ["QT_MOTO_TRACEMALLOC"])
    server = _make_server(host, port)
    threading.Thread(target=server.serve_forever, name="moto-server", daemon=True).start()
    _start_ttl_sweeper(ttl_sweep_seconds)
    print(f"{READY_PREFIX} {host} {server.server_port}", flush=True)
    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop: Ctrl-C reaches both

    def watch_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == FREEZE_COMMAND:
                freeze_startup_heap()
                print(f"{FROZEN_PREFIX} {gc.get_freeze_count()}", flush=True)
        # EOF on stdin means the parent closed it or died: either way, time to go.
        stopping.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    stopping.wait()
    server.shutdown()
    server.server_close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="moto server for the QuantTrade local stack (DynamoDB, SQS, Events)")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port (printed on stdout)")
    parser.add_argument(
        "--ttl-sweep-seconds",
        type=positive(float, or_zero=True),
        default=DEFAULT_TTL_SWEEP_SECONDS,
        help="delete expired items (DynamoDB TTL) this often; 0 never",
    )
    args = parser.parse_args(argv)
    try:
        _serve(args.host, args.port, args.ttl_sweep_seconds)
    except OSError as error:
        print(f"MOTO_FAILED {error}", flush=True)
        sys.exit(1)
    # Everything moto holds lives in this process's memory and dies with it, so there is nothing to save;
    # but a normal exit joins every request thread, and one still inside a long poll holds the exit for
    # the rest of its wait (the parent then kills the process after GRACEFUL_EXIT_SECONDS).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
