"""`ManagementApiGateway`: the ConnectionGateway over API Gateway's Management API (why hand-written: __init__).

The event loop and the pool live on the instance, so warm Lambda invocations
reuse the TLS connections instead of paying handshakes again.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from quanttrade_ws.connection_gateway import DeliveryReport, GatewayError, Post
from quanttrade_ws.management_api.call_batch import FAILED, GONE, OK, Call, CallBatch
from quanttrade_ws.management_api.connection_pool import ConnectionPool
from quanttrade_ws.management_api.retry import RetryPolicy
from quanttrade_ws.management_api.sigv4 import (
    EMPTY_SHA256,
    BotocoreCredentials,
    Credentials,
    SigV4Signer,
    canonical_uri,
    quote_segment,
)

if TYPE_CHECKING:
    import asyncio
    import ssl

USER_AGENT = "quanttrade-ws-gateway"


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
        self._pool = ConnectionPool(parts.hostname, port, None, concurrency, idle_timeout, timeout)
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
        calls = [self._call("POST", post.connection_id, post.data, credentials) for post in posts]
        report.throttle_retries = self._execute(calls, deadline)
        lists = (None, report.delivered, report.gone, report.failed)
        for post, call in zip(posts, calls, strict=True):
            lists[call.outcome].append(post)  # type: ignore[union-attr]
        if report.failed:
            _log_failures(calls)
        return report

    def post(self, connection_id: str, data: bytes) -> bool:
        call = self._single("POST", connection_id, data)
        if call.outcome == OK:
            return True
        if call.outcome == GONE:
            return False
        raise GatewayError(f"post to {connection_id} failed after {call.attempts} attempt(s): {_describe(call)}")

    def close(self, connection_id: str) -> None:
        call = self._single("DELETE", connection_id, b"")
        if call.outcome == FAILED:
            raise GatewayError(f"closing {connection_id} failed after {call.attempts} attempt(s): {_describe(call)}")

    def info(self, connection_id: str) -> dict[str, object] | None:
        call = self._single("GET", connection_id, b"")
        if call.outcome == GONE:
            return None
        if call.outcome == FAILED:
            raise GatewayError(f"info for {connection_id} failed after {call.attempts} attempt(s): {_describe(call)}")
        import json

        try:
            parsed = json.loads(call.body)
        except ValueError as exc:
            raise GatewayError(f"info for {connection_id}: response is not JSON: {call.body[:200]!r}") from exc
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

    def _call(self, method: str, connection_id: str, data: bytes | str, credentials: Credentials) -> Call:
        if isinstance(data, str):
            data = data.encode()
        return Call(method, connection_id, self.signed_request(method, connection_id, data, credentials))

    def _single(self, method: str, connection_id: str, data: bytes) -> Call:
        call = self._call(method, connection_id, data, self._resolve_credentials())
        self._execute([call])
        return call

    # ------------------------------------------------------------------ the event loop

    def _execute(self, calls: list[Call], deadline: float | None = None) -> int:
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
            return int(self._run(loop, lambda: self._drive(loop, calls, deadline)))

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

    async def _drive(self, loop: asyncio.AbstractEventLoop, calls: list[Call], deadline: float | None) -> int:
        import asyncio

        pool = self._pool
        if pool.idle:
            # Let the selector report EOFs on idle connections the server closed between batches,
            # so they are dropped now rather than discovered with a request on them.
            await asyncio.sleep(0)
        batch = CallBatch(loop, pool, calls, self.retry, self.timeout, self.clock, deadline)
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


def _describe(call: Call) -> str:
    detail = call.body[:200].decode(errors="replace").strip()
    return f"{call.error} {detail}" if detail else call.error


def _log_failures(calls: list[Call]) -> None:
    # The report says which posts failed, not why; the why belongs in the log, once per batch, grouped.
    from collections import Counter

    from quanttrade_ws.observability import logger

    reasons = Counter(call.error for call in calls if call.outcome == FAILED)
    logger.warning(
        "management API posts failed after retries",
        extra={"failed": sum(reasons.values()), "reasons": dict(reasons.most_common(5))},
    )


async def _settle(loop: asyncio.AbstractEventLoop) -> None:
    import asyncio

    # One turn lets closed transports deliver connection_lost before the loop goes away.
    await asyncio.sleep(0)
    await loop.shutdown_default_executor()
