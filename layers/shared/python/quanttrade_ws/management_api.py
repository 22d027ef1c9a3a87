"""`ManagementApiGateway`: the ConnectionGateway that talks to API Gateway's Management API.

`POST/GET/DELETE {endpoint}/@connections/{connectionId}`, signed with SigV4 for
`execute-api`. The same class talks to the local gateway emulator: only the
endpoint differs.

Why not boto3's `post_to_connection` once per message (the pattern in AWS's
samples): every call walks botocore's whole request pipeline (parameter
validation, serialisation, event hooks, endpoint rules, signing through
AWSRequest objects, urllib3, response parsing), several hundred microseconds
of CPU per message (bench/delivery_worker.py measures both). Fan-out is billed
by Lambda duration, and a market tick may go to thousands of connections, so
the client here does only what the wire needs:

* SigV4 computed directly with hashlib/hmac; the derived signing key is cached
  per (secret, date), so a message costs two SHA-256 and one HMAC.
* HTTP/1.1 keep-alive on a pool of persistent connections, driven by asyncio
  protocol callbacks with no task or future per request: when a response
  arrives, the next request goes out on the same connection from inside the
  read callback.
* The event loop and the pool live on the instance, so warm Lambda invocations
  reuse the TLS connections instead of paying handshakes again.

Importing this module is cheap (no asyncio, ssl or botocore until first use),
because cold start matters for every function that only constructs a gateway.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from quanttrade_ws.gateway import DeliveryReport, GatewayError, Post

if TYPE_CHECKING:
    import asyncio
    import ssl

__all__ = [
    "BotocoreCredentials",
    "Credentials",
    "ManagementApiGateway",
    "RetryPolicy",
    "SigV4Signer",
    "full_jitter_backoff",
]

SERVICE = "execute-api"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
USER_AGENT = "quanttrade-ws-gateway"
MAX_HEAD_BYTES = 64 * 1024

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
# One lookup per byte beats urllib.parse.quote here and spares importing it on the hot path.
_QUOTE = [chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in range(256)]
_QUOTE_KEEP_SLASH = [*_QUOTE[: ord("/")], "/", *_QUOTE[ord("/") + 1 :]]


def quote_segment(value: str) -> str:
    """Percent-encode one path segment the way botocore serialises a URI label (`=` -> `%3D`, `/` -> `%2F`)."""
    table = _QUOTE
    return "".join([table[b] for b in value.encode()])


def _quote_path(path: str) -> str:
    table = _QUOTE_KEEP_SLASH
    return "".join([table[b] for b in path.encode()])


def _remove_dot_segments(path: str) -> str:
    # botocore's normalize_url_path: RFC 3986 dot segments out, empty segments collapsed.
    if not path:
        return "/"
    out: list[str] = []
    for segment in path.split("/"):
        if segment and segment != ".":
            if segment == "..":
                if out:
                    out.pop()
            else:
                out.append(segment)
    first = "/" if path[0] == "/" else ""
    last = "/" if path[-1] == "/" and out else ""
    return first + "/".join(out) + last


def canonical_uri(wire_path: str) -> str:
    """The canonical URI SigV4 signs for a non-S3 service: the already-encoded path encoded once more.

    AWS's rule for every service but S3 is to URI-encode each segment twice, and
    botocore does exactly that (`%3D` on the wire is `%253D` in the canonical
    request); execute-api verifies against that form.
    """
    return _quote_path(_remove_dot_segments(wire_path))


class Credentials(Protocol):
    """What signing needs; botocore's ReadOnlyCredentials is one."""

    @property
    def access_key(self) -> str | None: ...

    @property
    def secret_key(self) -> str | None: ...

    @property
    def token(self) -> str | None: ...


class BotocoreCredentials:
    """Credentials from botocore's default chain, resolved once, refreshed by botocore when they near expiry.

    On Lambda these come from the environment and never change for the sandbox's
    lifetime; elsewhere (SSO, assumed roles) botocore's refreshable credentials
    renew themselves inside `get_frozen_credentials`.
    """

    def __init__(self) -> None:
        self._resolved: Any = None
        self._lock = threading.Lock()

    def __call__(self) -> Credentials:
        if self._resolved is None:
            with self._lock:
                if self._resolved is None:
                    import botocore.session

                    resolved = botocore.session.get_session().get_credentials()
                    if resolved is None:
                        raise GatewayError("no AWS credentials found for signing Management API calls")
                    self._resolved = resolved
        return self._resolved.get_frozen_credentials()  # type: ignore[no-any-return]


class SigV4Signer:
    """AWS Signature Version 4 for one host, region and service, signing `host;x-amz-date[;x-amz-security-token]`.

    Produces byte-for-byte what botocore's SigV4Auth produces for the same
    request (tests hold it to that), without building AWSRequest objects.
    """

    def __init__(self, host: str, region: str, service: str = SERVICE) -> None:
        self.host = host
        self.region = region
        self.service = service
        self._scope_tail = f"/{region}/{service}/aws4_request"
        self._key: tuple[str, str, bytes] | None = None  # (secret, yyyymmdd, derived key)

    def signing_key(self, secret_key: str, datestamp: str) -> bytes:
        cached = self._key
        if cached is not None and cached[0] == secret_key and cached[1] == datestamp:
            return cached[2]
        key = hmac.digest(f"AWS4{secret_key}".encode(), datestamp.encode(), "sha256")
        key = hmac.digest(key, self.region.encode(), "sha256")
        key = hmac.digest(key, self.service.encode(), "sha256")
        key = hmac.digest(key, b"aws4_request", "sha256")
        self._key = (secret_key, datestamp, key)
        return key

    def authorization(
        self,
        method: str,
        canonical_path: str,
        amz_date: str,
        payload_sha256: str,
        access_key: str,
        secret_key: str,
        token: str | None,
    ) -> str:
        """The Authorization header value. `canonical_path` is `canonical_uri(wire_path)`; no query string."""
        if token:
            headers = f"host:{self.host}\nx-amz-date:{amz_date}\nx-amz-security-token:{' '.join(token.split())}\n"
            signed = "host;x-amz-date;x-amz-security-token"
        else:
            headers = f"host:{self.host}\nx-amz-date:{amz_date}\n"
            signed = "host;x-amz-date"
        canonical_request = f"{method}\n{canonical_path}\n\n{headers}\n{signed}\n{payload_sha256}"
        datestamp = amz_date[:8]
        scope = datestamp + self._scope_tail
        string_to_sign = (
            f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"
        )
        signature = hmac.new(self.signing_key(secret_key, datestamp), string_to_sign.encode(), "sha256").hexdigest()
        return f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"


def full_jitter_backoff(attempt: int, base: float, cap: float, rng: Callable[[], float]) -> float:
    """Delay before retry number `attempt` (1-based): uniform in [0, min(cap, base * 2**(attempt-1))].

    Full jitter spreads a throttled burst out instead of retrying it in lockstep,
    which is what lets a fan-out of thousands get under the account's
    management-call rate instead of hammering it.
    """
    return rng() * min(cap, base * (2 ** (attempt - 1)))


class RetryPolicy:
    """Whether a failed call goes again, and after how long.

    Throttling (429, LimitExceeded) means "not now", not "not this". Given a
    deadline (the end of the Lambda invocation, less what the caller keeps for
    itself), a throttled call keeps trying until the deadline: a post given up
    early is a whole SQS record redelivered a visibility timeout later, while
    the account's rate frees up within a second. Other retryable failures (5xx,
    timeouts, dropped connections) get `max_attempts` tries, and so does
    throttling when there is no deadline. No wait ever ends at or past the
    deadline: a call that could only go again after it fails now.
    """

    def __init__(self, max_attempts: int, backoff_base: float, backoff_cap: float, rng: Callable[[], float]) -> None:
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.rng = rng

    def delay(self, attempts: int, throttles: int, throttled: bool, now: float, deadline: float | None) -> float | None:
        """Seconds to wait before the next try, or None to give up.

        `attempts` counts the tries so far (this failed one included), `throttles`
        those of them that were throttled; `now` and `deadline` are on one clock.
        """
        if deadline is None:
            if attempts >= self.max_attempts:
                return None
        elif not throttled and attempts - throttles >= self.max_attempts:
            return None
        delay = full_jitter_backoff(attempts, self.backoff_base, self.backoff_cap, self.rng)
        if deadline is not None and now + delay >= deadline:
            return None
        return delay


# --------------------------------------------------------------------- requests and outcomes

_PENDING, _OK, _GONE, _FAILED = 0, 1, 2, 3
_THROTTLE_ERROR_TYPES = (b"limitexceeded", b"throttl", b"toomanyrequests")


class _Job:
    """One Management API call through its attempts."""

    __slots__ = (
        "attempts",
        "body",
        "connection_id",
        "error",
        "follower",
        "method",
        "outcome",
        "request",
        "stale_retried",
        "status",
        "throttles",
    )

    def __init__(self, method: str, connection_id: str, request: bytes) -> None:
        self.method = method
        self.connection_id = connection_id
        self.request = request  # signed once: retries within a batch stay far inside SigV4's 5 minute window
        self.follower: _Job | None = None  # the next post to the same connection, sent only after this one
        self.attempts = 0
        self.throttles = 0
        self.stale_retried = False
        self.outcome = _PENDING
        self.status: int | None = None
        self.body = b""
        self.error = ""


class _Connection:
    """One keep-alive HTTP/1.1 connection, as an asyncio protocol (duck-typed, so asyncio stays a lazy import).

    At most one request is in flight; its response is parsed from the read
    callback and handed to the batch, which puts the next request on the wire
    from the same callback.
    """

    __slots__ = (
        "_body_parts",
        "_buffer",
        "_chunked",
        "_close_after",
        "_error_type",
        "_remaining",
        "_status",
        "_until_eof",
        "batch",
        "dead",
        "idle_since",
        "job",
        "pool",
        "received",
        "sent_at",
        "served",
        "transport",
    )

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: Any = None
        self.batch: _Batch | None = None
        self.job: _Job | None = None
        self.dead = False
        self.served = 0
        self.received = False
        self.sent_at = 0.0
        self.idle_since = 0.0
        self._reset_response()

    def _reset_response(self) -> None:
        self._buffer = b""
        self._status = 0
        self._remaining = -1
        self._chunked = False
        self._until_eof = False
        self._close_after = False
        self._error_type = b""
        self._body_parts: list[bytes] = []

    def send(self, batch: _Batch, job: _Job) -> None:
        self.batch = batch
        self.job = job
        self.received = False
        self.sent_at = time.monotonic()
        self.transport.write(job.request)

    def abort(self) -> None:
        self.job = None
        self.batch = None
        if self.transport is not None:
            self.transport.abort()
        self.pool.forget(self)

    # asyncio protocol interface

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def pause_writing(self) -> None:
        """One request in flight per connection bounds the write buffer already."""

    def resume_writing(self) -> None:
        """See pause_writing."""

    def eof_received(self) -> bool:
        if self._until_eof and self.job is not None:
            self._complete(self._status, b"".join(self._body_parts), reusable=False)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._until_eof and self.job is not None:
            self._complete(self._status, b"".join(self._body_parts), reusable=False)
        job, batch = self.job, self.batch
        self.job = None
        self.batch = None
        self.pool.forget(self)
        if job is not None and batch is not None:
            batch.on_connection_lost(self, job, f"connection lost: {exc or 'closed by server'}")

    def data_received(self, data: bytes) -> None:
        if self.job is None:
            # Bytes nobody asked for (say, a 408 before an idle close): this connection can't be trusted.
            self.transport.abort()
            self.pool.forget(self)
            return
        self.received = True
        buffer = self._buffer + data if self._buffer else data
        try:
            self._parse(buffer)
        except (ValueError, IndexError) as exc:
            job, batch = self.job, self.batch
            self.abort()
            if job is not None and batch is not None:
                batch.on_transport_error(job, f"unparseable response: {exc}")

    def _parse(self, buffer: bytes) -> None:
        if not self._status:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    raise ValueError("response head too large")
                self._buffer = buffer
                return
            head = buffer[:end]
            buffer = buffer[end + 4 :]
            if head[:5] != b"HTTP/":
                raise ValueError(f"not an HTTP response: {head[:40]!r}")
            status = int(head[9:12])
            if status < 200:
                # Informational responses precede the real one.
                self._buffer = b""
                if buffer:
                    self._parse(buffer)
                return
            self._status = status
            lower = head.lower()
            self._remaining = _header_int(lower, b"\r\ncontent-length:")
            connection = _header(lower, b"\r\nconnection:")
            self._close_after = b"close" in connection or (head[5:8] == b"1.0" and b"keep-alive" not in connection)
            if status >= 300:
                self._error_type = _header(lower, b"\r\nx-amzn-errortype:", head)
            if status == 204 or status == 304:
                self._remaining = 0
            elif b"\r\ntransfer-encoding:" in lower:
                # Transfer-Encoding wins over Content-Length (RFC 9112 6.3).
                self._chunked = b"chunked" in _header(lower, b"\r\ntransfer-encoding:")
                self._until_eof = not self._chunked
            elif self._remaining < 0:
                self._until_eof = True
        if self._chunked:
            parsed = _dechunk(buffer)
            if parsed is None:
                self._buffer = buffer
                return
            self._complete(self._status, parsed, reusable=not self._close_after)
        elif self._until_eof:
            self._body_parts.append(buffer)
            self._buffer = b""
        elif len(buffer) >= self._remaining:
            # Bytes beyond the body answer nothing we asked: finish this response, then retire the connection.
            reusable = not self._close_after and len(buffer) == self._remaining
            self._complete(self._status, buffer[: self._remaining], reusable=reusable)
        else:
            self._buffer = buffer

    def _complete(self, status: int, body: bytes, reusable: bool) -> None:
        job, batch, error_type = self.job, self.batch, self._error_type
        self.job = None
        self.batch = None
        self.served += 1
        self._reset_response()
        if not reusable:
            self.transport.close()
            self.pool.forget(self)
        if job is not None and batch is not None:
            batch.on_response(self, job, status, body, error_type, reusable)


def _header(lower_head: bytes, name: bytes, head: bytes | None = None) -> bytes:
    """A header's value, found in the lowercased head; taken from `head` when its case matters."""
    start = lower_head.find(name)
    if start < 0:
        return b""
    end = lower_head.find(b"\r\n", start + 2)
    return (lower_head if head is None else head)[start + len(name) : end if end >= 0 else None].strip()


def _header_int(lower_head: bytes, name: bytes) -> int:
    value = _header(lower_head, name)
    return int(value) if value else -1


def _dechunk(buffer: bytes) -> bytes | None:
    """The body of a complete chunked message, or None while more bytes are needed."""
    parts: list[bytes] = []
    position = 0
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size = int(buffer[position:line_end].split(b";", 1)[0], 16)
        position = line_end + 2
        if size == 0:
            # The last chunk is followed by optional trailer lines and then an empty line.
            if buffer[position : position + 2] == b"\r\n" or buffer.find(b"\r\n\r\n", position) >= 0:
                return b"".join(parts)
            return None
        if len(buffer) < position + size + 2:
            return None
        parts.append(buffer[position : position + size])
        position += size + 2


class _Pool:
    """Persistent connections to one endpoint, reused across batches and across warm Lambda invocations."""

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        size: int,
        idle_timeout: float,
        connect_timeout: float,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.size = size
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.idle: list[_Connection] = []
        self.live = 0  # idle + busy + opening
        self.batch: _Batch | None = None
        self.connections_opened = 0

    def take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self.idle:
            # LIFO: the most recently used connection is the least likely to have been dropped.
            conn = self.idle.pop()
            if conn.dead or conn.transport.is_closing():
                self._drop(conn)
            elif now - conn.idle_since > self.idle_timeout:
                # Servers and NATs drop idle connections without a word; a request on one would wait for the timeout.
                conn.transport.close()
                self._drop(conn)
            else:
                return conn
        return None

    def put_idle(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        """A connection is gone: free its slot, and let the running batch use the slot."""
        if self._drop(conn) and self.batch is not None:
            self.batch.pump()

    def _drop(self, conn: _Connection) -> bool:
        if conn.dead:
            return False
        conn.dead = True
        self.live -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        return True

    async def open(self, conn: _Connection) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        await asyncio.wait_for(
            loop.create_connection(
                lambda: conn,  # type: ignore[type-var]
                self.host,
                self.port,
                ssl=self.ssl_context,
                server_hostname=self.host if self.ssl_context is not None else None,
            ),
            self.connect_timeout,
        )
        self.connections_opened += 1

    def close_all(self) -> None:
        for conn in list(self.idle):
            conn.transport.close()
            self._drop(conn)


class _Batch:
    """One call's jobs, pumped through the pool with at most `pool.size` requests in flight."""

    def __init__(
        self,
        gateway: ManagementApiGateway,
        loop: asyncio.AbstractEventLoop,
        jobs: list[_Job],
        deadline: float | None,
    ) -> None:
        self.gateway = gateway
        self.loop = loop
        self.deadline = deadline  # on gateway.clock; None: retries are bounded by attempts only
        self.abandoned = False
        self.pool = gateway._pool
        self.jobs = jobs
        # Posts to one connection go out one after another, so a client sees them in the order given
        # even when an earlier one is throttled and retried; different connections proceed in parallel.
        self.queue: deque[_Job] = deque()
        last: dict[str, _Job] = {}
        for job in jobs:
            previous = last.get(job.connection_id)
            if previous is None:
                self.queue.append(job)
            else:
                previous.follower = job
            last[job.connection_id] = job
        self.unfinished = len(jobs)
        self.done: asyncio.Future[None] = loop.create_future()
        self.busy: set[_Connection] = set()
        self.timers: set[asyncio.TimerHandle] = set()
        self.throttle_retries = 0
        self.last_event = time.monotonic()
        self.watchdog: asyncio.TimerHandle | None = None
        self.opening: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks

    def pump(self) -> None:
        if self.abandoned:
            return
        pool = self.pool
        queue = self.queue
        while queue:
            conn = pool.take_idle()
            if conn is not None:
                self.dispatch(conn, queue.popleft())
            elif pool.live < pool.size:
                job = queue.popleft()
                job.attempts += 1
                pool.live += 1
                task = self.loop.create_task(self._open_and_send(job))
                self.opening.add(task)
                task.add_done_callback(self.opening.discard)
            else:
                return

    async def _open_and_send(self, job: _Job) -> None:
        conn = _Connection(self.pool)
        try:
            await self.pool.open(conn)
        except BaseException as exc:
            conn.abort()  # frees the slot, whether the attempt failed or the batch was abandoned
            if not isinstance(exc, Exception):
                raise
            # DNS, refusal, TLS and timeouts alike: the job retries after a backoff.
            self.retry_or_fail(job, None, f"connect failed: {exc!r}", throttled=False)
            self.pump()
            return
        self.last_event = time.monotonic()
        job.attempts -= 1  # dispatch counts the attempt
        self.dispatch(conn, job)

    def dispatch(self, conn: _Connection, job: _Job) -> None:
        job.attempts += 1
        self.busy.add(conn)
        conn.send(self, job)

    def on_response(
        self, conn: _Connection, job: _Job, status: int, body: bytes, error_type: bytes, reusable: bool
    ) -> None:
        self.last_event = time.monotonic()
        self.busy.discard(conn)
        if 200 <= status < 300:
            self.finish(job, _OK, status, body, "")
        elif status == 410:
            self.finish(job, _GONE, status, body, "")
        else:
            reason = f"HTTP {status} {error_type.decode(errors='replace')}".strip()
            throttled = status == 429 or (status == 400 and any(t in error_type.lower() for t in _THROTTLE_ERROR_TYPES))
            if throttled or status >= 500:
                self.retry_or_fail(job, status, reason, throttled=throttled)
            else:
                # 400/403/413...: the same request would fail the same way.
                self.finish(job, _FAILED, status, body, reason)
        if reusable:
            if self.queue:
                self.dispatch(conn, self.queue.popleft())
            else:
                self.pool.put_idle(conn)
        elif self.queue:
            self.pump()

    def on_connection_lost(self, conn: _Connection, job: _Job, reason: str) -> None:
        self.last_event = time.monotonic()
        self.busy.discard(conn)
        if not conn.received and conn.served > 0 and not job.stale_retried:
            # A reused keep-alive connection the server had already closed: the request most likely never
            # reached it, so it goes again, first in line, once, without spending an attempt.
            job.stale_retried = True
            job.attempts -= 1
            self.queue.appendleft(job)
        else:
            self.retry_or_fail(job, None, reason, throttled=False)
        self.pump()

    def on_transport_error(self, job: _Job, reason: str) -> None:
        self.retry_or_fail(job, None, reason, throttled=False)
        self.pump()

    def retry_or_fail(self, job: _Job, status: int | None, reason: str, throttled: bool) -> None:
        self.last_event = time.monotonic()
        if throttled:
            job.throttles += 1
        gateway = self.gateway
        delay = gateway.retry.delay(job.attempts, job.throttles, throttled, gateway.clock(), self.deadline)
        if delay is None:
            if self.deadline is not None and job.attempts - job.throttles < gateway.retry.max_attempts:
                reason = f"{reason}; no retry before the invocation's deadline"
            self.finish(job, _FAILED, status, b"", reason)
            return
        if throttled:
            self.throttle_retries += 1
        handle: asyncio.TimerHandle | None = None

        def requeue() -> None:
            self.last_event = time.monotonic()
            self.timers.discard(handle)  # type: ignore[arg-type]
            self.queue.append(job)
            self.pump()

        handle = self.loop.call_later(delay, requeue)
        self.timers.add(handle)

    def finish(self, job: _Job, outcome: int, status: int | None, body: bytes, error: str) -> None:
        """Settle a job; its follower becomes sendable (callers pump), or is gone too if the connection is."""
        job.outcome = outcome
        job.status = status
        job.body = body
        job.error = error
        self.unfinished -= 1
        follower = job.follower
        while follower is not None and outcome == _GONE:
            follower.outcome = _GONE
            follower.status = status
            self.unfinished -= 1
            follower = follower.follower
        if follower is not None:
            self.queue.append(follower)
        if self.unfinished == 0 and not self.done.done():
            self.done.set_result(None)

    def check_timeouts(self) -> None:
        limit = time.monotonic() - self.gateway.timeout
        for conn in [c for c in self.busy if c.sent_at < limit]:
            job = conn.job
            self.busy.discard(conn)
            # The response may still come; the connection can't be reused without reading it, so drop it.
            conn.abort()
            if job is not None:
                self.retry_or_fail(job, None, f"no response within {self.gateway.timeout}s", throttled=False)
        self.pump()

    def start_watchdog(self) -> None:
        """Enforce per-request timeouts with one timer per batch rather than one per request."""
        timeout = self.gateway.timeout
        tick = min(timeout / 4, 0.5)
        # Healthy batches hear something (an answer, a timeout, a connect result, a retry timer) at least this
        # often; silence beyond it can only be a bug stranding a job, and a Lambda must not hang on one.
        stall_limit = 2 * (timeout + self.gateway.retry.backoff_cap) + 1.0

        def watch() -> None:
            if self.past_deadline():
                # Posts still unanswered now could only end after the invocation: failed, they are redelivered.
                self.abandon("no answer before the invocation's deadline")
                return
            self.check_timeouts()
            if time.monotonic() - self.last_event > stall_limit:
                self.abandon("batch stalled")
            elif not self.done.done():
                self.watchdog = self.loop.call_later(self._until_next_watch(tick), watch)

        self.watchdog = self.loop.call_later(self._until_next_watch(tick), watch)

    def _until_next_watch(self, tick: float) -> float:
        if self.deadline is None:
            return tick
        return max(0.0, min(tick, self.deadline - self.gateway.clock()))

    def past_deadline(self) -> bool:
        return self.deadline is not None and self.gateway.clock() >= self.deadline

    def stop_watchdog(self) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()

    def abandon(self, reason: str) -> None:
        self.abandoned = True  # slots freed below must not start new requests
        for task in list(self.opening):
            task.cancel()
        for conn in list(self.busy):
            conn.abort()
        self.busy.clear()
        for handle in self.timers:
            handle.cancel()
        self.timers.clear()
        for job in self.jobs:
            if job.outcome == _PENDING:
                self.finish(job, _FAILED, None, b"", reason)
        self.queue.clear()


class ManagementApiGateway:
    """ConnectionGateway over API Gateway's Management API (or the local emulator at a plain http endpoint).

    `post_many` keeps up to `concurrency` requests in flight and sorts every
    post into exactly one of the report's lists: delivered (2xx), gone (410),
    failed (anything else once retries are spent). Throttling (429,
    LimitExceeded), 5xx, timeouts and connection errors are retried with
    full-jitter backoff up to `max_attempts` attempts, or, for throttling, until
    the `deadline` given to `post_many` (see RetryPolicy); 400/403/413 are not.
    Posts to the same connection are sent one after another, in the order
    given, and once one is gone the rest for that connection are gone without
    further calls. It never raises for a post's failure.

    Thread-safe: calls are serialised on the instance's own event loop, which
    may be driven from any thread (including one that is already running a
    loop of its own). Create one per process and keep it: the connection pool
    is the point.
    """

    def __init__(
        self,
        endpoint: str,
        region: str,
        concurrency: int = 64,
        max_attempts: int = 6,
        timeout: float = 5.0,
        credentials_provider: Callable[[], Credentials | None] | None = None,
        *,
        backoff_base: float = 0.025,
        backoff_cap: float = 1.0,
        idle_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        rng: Callable[[], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if concurrency < 1 or max_attempts < 1 or timeout <= 0:
            raise ValueError("concurrency and max_attempts must be >= 1 and timeout > 0")
        from urllib.parse import urlsplit

        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint must be an http(s) URL, got {endpoint!r}")
        secure = parts.scheme == "https"
        port = parts.port or (443 if secure else 80)
        # Host as botocore signs it: the port only when it is not the scheme's default.
        host = parts.hostname if port == (443 if secure else 80) else f"{parts.hostname}:{port}"
        self.endpoint = endpoint
        self.region = region
        self.concurrency = concurrency
        self.timeout = timeout
        self._credentials = credentials_provider or BotocoreCredentials()
        if rng is None:
            import random

            rng = random.random
        self.retry = RetryPolicy(max_attempts, backoff_base, backoff_cap, rng)
        self.clock = clock  # the clock `post_many` deadlines are on
        self._signer = SigV4Signer(host, region)
        self._wire_prefix = parts.path.rstrip("/") + "/@connections/"
        self._canonical_prefix = canonical_uri(self._wire_prefix.rstrip("/")) + "/"
        self._host = host
        self._secure = secure
        self._ssl_context = ssl_context
        self._pool = _Pool(parts.hostname, port, None, concurrency, idle_timeout, timeout)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._clock_second = -1
        self._amz_date = ""

    # ------------------------------------------------------------------ ConnectionGateway

    def post_many(self, posts: Sequence[Post], deadline: float | None = None) -> DeliveryReport:
        report = DeliveryReport()
        if not posts:
            return report
        credentials = self._resolve_credentials()
        jobs = [self._job("POST", post.connection_id, post.data, credentials) for post in posts]
        report.throttle_retries = self._execute(jobs, deadline)
        lists = (None, report.delivered, report.gone, report.failed)
        for post, job in zip(posts, jobs, strict=True):
            lists[job.outcome].append(post)  # type: ignore[union-attr]
        if report.failed:
            _log_failures(jobs)
        return report

    def post(self, connection_id: str, data: bytes) -> bool:
        job = self._single("POST", connection_id, data)
        if job.outcome == _OK:
            return True
        if job.outcome == _GONE:
            return False
        raise GatewayError(f"post to {connection_id} failed after {job.attempts} attempt(s): {_describe(job)}")

    def close(self, connection_id: str) -> None:
        job = self._single("DELETE", connection_id, b"")
        if job.outcome == _FAILED:
            raise GatewayError(f"closing {connection_id} failed after {job.attempts} attempt(s): {_describe(job)}")

    def info(self, connection_id: str) -> dict[str, object] | None:
        job = self._single("GET", connection_id, b"")
        if job.outcome == _GONE:
            return None
        if job.outcome == _FAILED:
            raise GatewayError(f"info for {connection_id} failed after {job.attempts} attempt(s): {_describe(job)}")
        import json

        try:
            parsed = json.loads(job.body)
        except ValueError as exc:
            raise GatewayError(f"info for {connection_id}: response is not JSON: {job.body[:200]!r}") from exc
        if not isinstance(parsed, dict):
            raise GatewayError(f"info for {connection_id}: expected a JSON object, got {type(parsed).__name__}")
        return parsed

    # ------------------------------------------------------------------ lifecycle

    def shutdown(self) -> None:
        """Close pooled connections and the event loop. The gateway reopens both if used again."""
        with self._lock:
            loop = self._loop
            if loop is None or loop.is_closed():
                return
            self._pool.close_all()
            self._run(loop, lambda: _settle(loop))
            loop.close()
            self._loop = None

    def __enter__(self) -> ManagementApiGateway:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    @property
    def connections_opened(self) -> int:
        """TCP connections opened so far: reuse shows up as this staying flat across batches."""
        return self._pool.connections_opened

    # ------------------------------------------------------------------ requests

    def signed_request(
        self, method: str, connection_id: str, data: bytes, credentials: Credentials, now: float | None = None
    ) -> bytes:
        """The exact bytes sent for one call (public so tests can hold the signature against botocore's)."""
        quoted = quote_segment(connection_id)
        wire_path = self._wire_prefix + quoted
        if quoted in ("", ".", ".."):
            canonical = canonical_uri(wire_path)
        else:
            # Everything in `quoted` is unreserved or %XX, so the second encoding only turns % into %25.
            canonical = self._canonical_prefix + quoted.replace("%", "%25")
        amz_date = self._now_amz_date() if now is None else time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        payload_hash = hashlib.sha256(data).hexdigest() if data else EMPTY_SHA256
        access_key, secret_key, token = credentials.access_key, credentials.secret_key, credentials.token
        if not access_key or not secret_key:
            raise GatewayError("AWS credentials without an access key or secret key cannot sign")
        authorization = self._signer.authorization(
            method, canonical, amz_date, payload_hash, access_key, secret_key, token
        )
        token_line = f"X-Amz-Security-Token: {token}\r\n" if token else ""
        length_line = f"Content-Length: {len(data)}\r\n" if data or method != "GET" else ""
        head = (
            f"{method} {wire_path} HTTP/1.1\r\nHost: {self._host}\r\nUser-Agent: {USER_AGENT}\r\n"
            f"X-Amz-Date: {amz_date}\r\n{token_line}Authorization: {authorization}\r\n{length_line}\r\n"
        )
        return head.encode() + data if data else head.encode()

    def _now_amz_date(self) -> str:
        # strftime is the costliest part of signing a small message; the date only changes once a second.
        second = int(time.time())
        if second != self._clock_second:
            self._amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))
            self._clock_second = second
        return self._amz_date

    def _resolve_credentials(self) -> Credentials:
        credentials = self._credentials()
        if credentials is None:
            raise GatewayError("no AWS credentials for signing Management API calls")
        return credentials

    def _job(self, method: str, connection_id: str, data: bytes | str, credentials: Credentials) -> _Job:
        if isinstance(data, str):
            data = data.encode()
        return _Job(method, connection_id, self.signed_request(method, connection_id, data, credentials))

    def _single(self, method: str, connection_id: str, data: bytes) -> _Job:
        job = self._job(method, connection_id, data, self._resolve_credentials())
        self._execute([job])
        return job

    # ------------------------------------------------------------------ the event loop

    def _execute(self, jobs: list[_Job], deadline: float | None = None) -> int:
        with self._lock:
            import asyncio

            if self._loop is None or self._loop.is_closed():
                self._loop = asyncio.new_event_loop()
                if self._secure:
                    if self._ssl_context is None:
                        import ssl

                        self._ssl_context = ssl.create_default_context()
                    self._pool.ssl_context = self._ssl_context
            loop = self._loop
            return int(self._run(loop, lambda: self._drive(loop, jobs, deadline)))

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop, make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        """Run a coroutine to completion on our loop, from whatever thread calls (the lock is held)."""
        import asyncio

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return loop.run_until_complete(make())
        # Called synchronously from async code: a thread can't run two loops at once, so drive ours on a
        # helper thread while the caller's loop waits, as it would for any blocking call.
        outcome: list[Any] = []

        def drive() -> None:
            try:
                outcome.append(loop.run_until_complete(make()))
            except BaseException as exc:  # re-raised in the calling thread
                outcome.append(exc)

        helper = threading.Thread(target=drive, name="management-api-gateway", daemon=True)
        helper.start()
        helper.join()
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    async def _drive(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job], deadline: float | None) -> int:
        import asyncio

        pool = self._pool
        if pool.idle:
            # Let the selector report EOFs on idle connections the server closed between batches,
            # so they are dropped now rather than discovered with a request on them.
            await asyncio.sleep(0)
        batch = _Batch(self, loop, jobs, deadline)
        if batch.past_deadline():
            batch.abandon("the invocation's deadline passed before posting")
            return 0
        pool.batch = batch
        batch.start_watchdog()
        try:
            batch.pump()
            await batch.done
        finally:
            batch.stop_watchdog()
            pool.batch = None
            if not batch.done.done():
                batch.abandon("interrupted")
        return batch.throttle_retries


def _describe(job: _Job) -> str:
    detail = job.body[:200].decode(errors="replace").strip()
    return f"{job.error} {detail}" if detail else job.error


def _log_failures(jobs: list[_Job]) -> None:
    # The report says which posts failed, not why; the why belongs in the log, once per batch, grouped.
    from collections import Counter

    from quanttrade_ws.observability import logger

    reasons = Counter(job.error for job in jobs if job.outcome == _FAILED)
    logger.warning(
        "management API posts failed after retries",
        extra={"failed": sum(reasons.values()), "reasons": dict(reasons.most_common(5))},
    )


async def _settle(loop: asyncio.AbstractEventLoop) -> None:
    import asyncio

    # One turn lets closed transports deliver connection_lost before the loop goes away.
    await asyncio.sleep(0)
    await loop.shutdown_default_executor()
