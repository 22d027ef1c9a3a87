"""ManagementApiGateway: SigV4 held against botocore, and HTTP behaviour against a scripted in-process server.

`ScriptedServer` is a small Management API stand-in (stdlib asyncio, its own
thread and loop) whose answers can be scripted per connection id. The contract
tests in tests/integration reuse it.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import botocore.auth
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.credentials import ReadOnlyCredentials

from quanttrade_ws import observability
from quanttrade_ws.connection_gateway import GatewayError, Post
from quanttrade_ws.management_api.call_batch import Call, CallBatch
from quanttrade_ws.management_api.client import ManagementApiGateway
from quanttrade_ws.management_api.connection_pool import ConnectionPool
from quanttrade_ws.management_api.http_connection import HttpConnection
from quanttrade_ws.management_api.retry import RetryPolicy, full_jitter_backoff
from quanttrade_ws.management_api.sigv4 import BotocoreCredentials, SigV4Signer, canonical_uri, quote_segment

REPO_ROOT = Path(__file__).resolve().parents[2]
CREDENTIALS = ReadOnlyCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None)
SESSION_CREDENTIALS = ReadOnlyCredentials(
    "ASIAEXAMPLE", "c2VjcmV0/key+with=chars", "FwoGZXIvYXdzEJr//////////wEaDH+tok="
)
START_TIMEOUT = 10.0

ERROR_TYPES = {
    400: "BadRequestException",
    403: "ForbiddenException",
    410: "GoneException",
    413: "PayloadTooLargeException",
    429: "LimitExceededException",
    500: "InternalServerErrorException",
    503: "ServiceUnavailableException",
}


# ------------------------------------------------------------------ the scripted server


@dataclass
class RecordedRequest:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedServer:
    """Answers like the Management API: 200 for connected ids, 410 for the rest, unless scripted otherwise.

    A script is a queue of actions per connection id, consumed one per request:
    an HTTP status (answered with AWS's error shape), ("error", status, error
    type), "close" (read the request, then drop the TCP connection without
    answering), or ("delay", seconds) before the normal answer.
    """

    stage: str = "/prod"
    close_after_response: bool = False  # silently, as a server's keep-alive timeout would
    connection_close_header: bool = False
    chunked_info: bool = False
    ssl_context: Any = None
    host: str = "127.0.0.1"
    connected: set[str] = field(default_factory=set)
    received: dict[str, list[bytes]] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    accepted: int = 0
    port: int = 0
    _scripts: dict[str, deque[Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}{self.stage}"

    def connect(self, *connection_ids: str) -> None:
        with self._lock:
            for connection_id in connection_ids:
                self.connected.add(connection_id)
                self.received.setdefault(connection_id, [])

    def script(self, connection_id: str, *actions: Any) -> None:
        with self._lock:
            self._scripts.setdefault(connection_id, deque()).extend(actions)

    def requests_for(self, connection_id: str, method: str = "POST") -> int:
        suffix = "/@connections/" + quote_segment(connection_id)
        return sum(1 for r in self.requests if r.method == method and r.target.endswith(suffix))

    def start(self) -> ScriptedServer:
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                server = loop.run_until_complete(
                    asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
                )
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            self.port = server.sockets[0].getsockname()[1]
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._shut(server))
            loop.close()

        self._thread = threading.Thread(target=run, name="scripted-management-api", daemon=True)
        self._thread.start()
        if not started.wait(START_TIMEOUT):
            raise RuntimeError("scripted server did not start")
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(START_TIMEOUT)
            assert not self._thread.is_alive(), "scripted server did not stop"

    async def _shut(self, server: asyncio.Server) -> None:
        server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await server.wait_closed()
        await asyncio.sleep(0)  # closed transports release their sockets on the next turn

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.accepted += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, target, _ = request_line.split(" ")
                headers = {}
                for line in header_lines:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(RecordedRequest(method, target, headers, body))
                prefix = self.stage + "/@connections/"
                connection_id = unquote(target[len(prefix) :]) if target.startswith(prefix) else None
                action = self._next_action(connection_id)
                if action == "close":
                    return
                if isinstance(action, tuple) and action[0] == "delay":
                    await asyncio.sleep(action[1])
                    action = None
                writer.write(self._answer(method, connection_id, body, action))
                await writer.drain()
                if self.close_after_response or self.connection_close_header:
                    return
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()
            try:
                # TLS says goodbye over a few turns; a peer that isn't listening gets the socket torn down instead.
                await asyncio.wait_for(writer.wait_closed(), 0.5)
            except (Exception, asyncio.CancelledError):
                writer.transport.abort()
            self._handlers.discard(task)

    def _next_action(self, connection_id: str | None) -> Any:
        with self._lock:
            script = self._scripts.get(connection_id or "")
            return script.popleft() if script else None

    def _answer(self, method: str, connection_id: str | None, body: bytes, action: Any) -> bytes:
        if connection_id is None:
            return self._response(404, {"message": "Not Found"})
        if isinstance(action, int) and action >= 300:
            return self._response(action, {"message": ERROR_TYPES.get(action, "error")}, ERROR_TYPES.get(action))
        if isinstance(action, tuple) and action[0] == "error":
            return self._response(action[1], {"message": action[2]}, action[2])
        with self._lock:
            known = connection_id in self.connected
            if not known:
                return self._response(410, {"message": None}, "GoneException")
            if method == "POST":
                self.received[connection_id].append(body)
                return self._response(200, None)
            if method == "DELETE":
                self.connected.discard(connection_id)
                return self._response(204, None)
        info = {
            "connectedAt": "2026-01-01T00:00:00.000Z",
            "lastActiveAt": "2026-01-01T00:00:01.000Z",
            "identity": {"sourceIp": "127.0.0.1", "userAgent": "test"},
        }
        return self._response(200, info, chunked=self.chunked_info)

    def _response(self, status: int, payload: object, error_type: str | None = None, chunked: bool = False) -> bytes:
        body = b"" if payload is None else json.dumps(payload).encode()
        lines = [f"HTTP/1.1 {status} X", "Content-Type: application/json"]
        if error_type:
            lines.append(f"x-amzn-ErrorType: {error_type}")
        if self.connection_close_header:
            lines.append("Connection: close")
        if chunked:
            lines.append("Transfer-Encoding: chunked")
            middle = len(body) // 2
            parts = [body[:middle], body[middle:]]
            encoded = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"
            return ("\r\n".join(lines) + "\r\n\r\n").encode() + encoded
        if status != 204:
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    running = ScriptedServer().start()
    yield running
    running.stop()


@pytest.fixture
def make_gateway() -> Iterator[Callable[..., ManagementApiGateway]]:
    """Gateways with millisecond backoff so retry tests take milliseconds; all shut down afterwards."""
    made: list[ManagementApiGateway] = []

    def make(endpoint: str, **overrides: Any) -> ManagementApiGateway:
        options: dict[str, Any] = {
            "region": "us-east-1",
            "concurrency": 8,
            "max_attempts": 4,
            "timeout": 5.0,
            "credentials_provider": lambda: CREDENTIALS,
            "backoff_base": 0.001,
            "backoff_cap": 0.005,
        }
        options.update(overrides)
        gateway = ManagementApiGateway(endpoint, **options)
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        gateway.shutdown()


def parse_request(raw: bytes) -> tuple[str, str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    request_line, *lines = head.decode().split("\r\n")
    method, target, _ = request_line.split(" ")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return method, target, headers, body


def botocore_authorization(
    method: str, url: str, body: bytes, credentials: ReadOnlyCredentials, region: str, amz_date: str, monkeypatch: Any
) -> str:
    """What botocore's own signer says the Authorization header must be for this request at this time."""
    moment = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ")
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *_, **__: moment)
    request = AWSRequest(method=method, url=url, data=body or None)
    SigV4Auth(credentials, "execute-api", region).add_auth(request)
    assert request.headers["X-Amz-Date"] == amz_date
    return str(request.headers["Authorization"])


# ------------------------------------------------------------------ signing

ODD_IDS = ["L0SM9cOFvHcCIhw=", "abc=/x y+z%", "ünï©ødé", "-_.~", "a" * 64, ".", "..", ""]


@pytest.mark.parametrize(
    "endpoint",
    ["https://abc123.execute-api.us-east-1.amazonaws.com/prod", "http://127.0.0.1:8081", "http://localhost:8081/a/b/"],
)
@pytest.mark.parametrize("connection_id", ODD_IDS)
@pytest.mark.parametrize(("method", "body"), [("POST", b'{"type":"tick","p":1.5}'), ("GET", b""), ("DELETE", b"")])
@pytest.mark.parametrize("credentials", [CREDENTIALS, SESSION_CREDENTIALS], ids=["static", "session"])
def test_authorization_matches_botocore_sigv4auth(
    endpoint: str, connection_id: str, method: str, body: bytes, credentials: ReadOnlyCredentials, monkeypatch: Any
) -> None:
    # GIVEN a request signed by the gateway at a fixed moment
    gateway = ManagementApiGateway(endpoint, "eu-west-2", credentials_provider=lambda: credentials)
    moment = datetime.datetime(2026, 3, 14, 15, 9, 26, tzinfo=datetime.UTC).timestamp()
    sent_method, target, headers, sent_body = parse_request(
        gateway.signed_request(method, connection_id, body, credentials, now=moment)
    )
    # WHEN botocore signs the same method, URL, body, credentials and time
    parts = urlsplit(endpoint)
    expected = botocore_authorization(
        method, f"{parts.scheme}://{parts.netloc}{target}", body, credentials, "eu-west-2", headers["x-amz-date"],
        monkeypatch,
    )  # fmt: skip
    # THEN the Authorization headers are identical, and the session token travels as botocore sends it
    assert (sent_method, sent_body) == (method, body)
    assert headers["authorization"] == expected
    assert headers.get("x-amz-security-token") == credentials.token


@pytest.mark.parametrize("connection_id", ODD_IDS)
def test_path_and_signature_match_what_the_boto3_client_sends(connection_id: str, monkeypatch: Any) -> None:
    # GIVEN boto3's apigatewaymanagementapi client and the gateway, with the same credentials and clock
    import boto3

    moment = datetime.datetime(2026, 11, 25, 22, 19, 22)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *_, **__: moment)
    endpoint = "https://abc123.execute-api.us-east-1.amazonaws.com/prod"
    session = boto3.session.Session(
        aws_access_key_id=SESSION_CREDENTIALS.access_key,
        aws_secret_access_key=SESSION_CREDENTIALS.secret_key,
        aws_session_token=SESSION_CREDENTIALS.token,
        region_name="us-east-1",
    )
    client = session.client("apigatewaymanagementapi", endpoint_url=endpoint)
    captured: list[AWSRequest] = []

    class _Raw:
        def stream(self, **_: Any) -> Iterator[bytes]:
            return iter([b""])

    def capture(request: AWSRequest, **_: Any) -> AWSResponse:
        captured.append(request)
        return AWSResponse(request.url, 200, {}, _Raw())  # type: ignore[arg-type]

    client.meta.events.register("before-send", capture)  # type: ignore[arg-type]
    # WHEN both send the same post
    client.post_to_connection(ConnectionId=connection_id, Data=b'{"x":1}')
    gateway = ManagementApiGateway(endpoint, "us-east-1", credentials_provider=lambda: SESSION_CREDENTIALS)
    _, target, headers, _ = parse_request(
        gateway.signed_request(
            "POST", connection_id, b'{"x":1}', SESSION_CREDENTIALS, now=moment.replace(tzinfo=datetime.UTC).timestamp()
        )
    )
    # THEN the path on the wire and the signature are the client's, byte for byte
    boto_request = captured[0]
    assert target == urlsplit(boto_request.url).path
    assert headers["authorization"] == boto_request.headers["Authorization"].decode()  # type: ignore[union-attr]


def test_signing_key_is_cached_per_day_and_still_right_across_midnight(monkeypatch: Any) -> None:
    # GIVEN one signer used just before and just after midnight UTC
    gateway = ManagementApiGateway("https://x.execute-api.us-east-1.amazonaws.com/p", "us-east-1")
    signer: SigV4Signer = gateway._signer
    before = datetime.datetime(2026, 12, 31, 23, 59, 59, tzinfo=datetime.UTC).timestamp()
    after = before + 2
    for moment in (before, before, after):
        # WHEN a request is signed at each moment
        _, target, headers, body = parse_request(gateway.signed_request("POST", "id=", b"{}", CREDENTIALS, moment))
        expected = botocore_authorization(
            "POST", "https://x.execute-api.us-east-1.amazonaws.com" + target, body, CREDENTIALS, "us-east-1",
            headers["x-amz-date"], monkeypatch,
        )  # fmt: skip
        # THEN the signature still matches botocore's, and the cached key belongs to that day
        assert headers["authorization"] == expected
        assert signer._key is not None and signer._key[1] == headers["x-amz-date"][:8]


def test_default_credentials_are_those_of_boto3s_default_session(monkeypatch: Any) -> None:
    # GIVEN boto3's default session (the one the function's DynamoDB client came from) with its own keys,
    # and other keys in the environment, which a second, fresh session would resolve instead
    import boto3
    import botocore.session

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENVIRONMENT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "environment-secret")
    monkeypatch.setattr(
        boto3,
        "DEFAULT_SESSION",
        boto3.Session(aws_access_key_id="AKIDDEFAULTSESSION", aws_secret_access_key="default-secret"),
    )
    monkeypatch.setattr(botocore.session, "get_session", lambda: pytest.fail("built a botocore session of its own"))
    # WHEN the Management API client resolves its default credentials
    resolved = BotocoreCredentials()()
    # THEN they are the default session's, resolved without a session of its own
    assert (resolved.access_key, resolved.secret_key) == ("AKIDDEFAULTSESSION", "default-secret")


def test_canonical_uri_double_encodes_like_botocore() -> None:
    # GIVEN a path as it goes on the wire; WHEN canonicalised; THEN % itself is encoded once more
    assert canonical_uri("/prod/@connections/abc%3D") == "/prod/%40connections/abc%253D"
    assert canonical_uri("/prod//@connections/./x/../y") == "/prod/%40connections/y"


def test_the_request_on_the_wire_verifies_under_botocore(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway], monkeypatch: Any
) -> None:
    # GIVEN a connected client and a gateway with session credentials
    server.connect("Zm9v=")
    gateway = make_gateway(server.endpoint, credentials_provider=lambda: SESSION_CREDENTIALS)
    # WHEN it posts
    assert gateway.post("Zm9v=", b'{"hello":"world"}')
    # THEN what the server received carries the signature botocore computes for that exact request
    recorded = server.requests[-1]
    expected = botocore_authorization(
        "POST", f"http://127.0.0.1:{server.port}{recorded.target}", recorded.body, SESSION_CREDENTIALS, "us-east-1",
        recorded.headers["x-amz-date"], monkeypatch,
    )  # fmt: skip
    assert recorded.headers["authorization"] == expected
    assert recorded.headers["x-amz-security-token"] == SESSION_CREDENTIALS.token
    assert recorded.target == "/prod/@connections/Zm9v%3D"


# ------------------------------------------------------------------ backoff and classification


def test_full_jitter_backoff_is_bounded_by_the_exponential_and_the_cap() -> None:
    assert full_jitter_backoff(1, 0.025, 1.0, lambda: 1.0) == pytest.approx(0.025)
    assert full_jitter_backoff(3, 0.025, 1.0, lambda: 1.0) == pytest.approx(0.1)
    assert full_jitter_backoff(10, 0.025, 1.0, lambda: 1.0) == pytest.approx(1.0)
    assert full_jitter_backoff(4, 0.025, 1.0, lambda: 0.0) == 0.0
    assert full_jitter_backoff(2, 0.025, 1.0, lambda: 0.5) == pytest.approx(0.025)
    assert full_jitter_backoff(5_000, 0.025, 1.0, lambda: 1.0) == pytest.approx(1.0)  # no overflow, however many


def test_throttling_is_retried_with_backoff_and_counted(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    # GIVEN a connection whose first two posts are throttled
    server.connect("t")
    server.script("t", 429, 429)
    draws: list[float] = []

    def rng() -> float:
        draws.append(0.5)
        return 0.5

    gateway = make_gateway(server.endpoint, rng=rng)
    # WHEN a message is posted
    report = gateway.post_many([Post("t", b"1")])
    # THEN it is delivered on the third attempt, after two backoff draws, with two throttle retries counted
    assert report.delivered == [Post("t", b"1")]
    assert report.throttle_retries == 2
    assert server.requests_for("t") == 3
    assert len(draws) == 2
    assert server.received["t"] == [b"1"]


def test_throttling_that_never_stops_fails_after_max_attempts(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    server.connect("t")
    server.script("t", *[429] * 10)
    gateway = make_gateway(server.endpoint, max_attempts=3)
    report = gateway.post_many([Post("t", b"1")])
    assert report.failed == [Post("t", b"1")] and not report.delivered and not report.gone
    assert server.requests_for("t") == 3
    assert report.throttle_retries == 2  # the third answer was not retried


class SteppingClock:
    """A monotonic clock that moves only when told: deadlines decided without waiting for them."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingPolicy(RetryPolicy):
    """The gateway's retry policy, recording each decision: (now, wait or None for giving up, deadline)."""

    def __init__(self, policy: RetryPolicy) -> None:
        super().__init__(policy.max_attempts, policy.backoff_base, policy.backoff_cap, policy.rng)
        self.decisions: list[tuple[float, float | None, float | None]] = []

    def delay(self, attempts: int, throttles: int, throttled: bool, now: float, deadline: float | None) -> float | None:
        wait = super().delay(attempts, throttles, throttled, now, deadline)
        self.decisions.append((now, wait, deadline))
        return wait


def test_throttling_is_retried_past_max_attempts_until_delivered_within_the_deadline(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    # GIVEN a connection whose first five posts are throttled, and a gateway allowed two attempts
    server.connect("t")
    server.script("t", *[429] * 5)
    clock = SteppingClock()
    gateway = make_gateway(server.endpoint, max_attempts=2, clock=clock)
    # WHEN a message is posted with a deadline a minute away
    report = gateway.post_many([Post("t", b"1")], deadline=clock.now + 60)
    # THEN throttling did not spend the attempts: it is delivered on the sixth try, five retries counted
    assert report.delivered == [Post("t", b"1")] and not report.failed
    assert report.throttle_retries == 5
    assert server.requests_for("t") == 6
    assert server.received["t"] == [b"1"]


def test_throttling_until_the_deadline_fails_the_post_and_no_wait_passes_the_deadline(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    # GIVEN a connection that is throttled on every post, a healthy one, and a clock that moves a quarter
    # of a second per backoff draw (so the deadline arrives after a known number of retries)
    server.connect("t", "ok")
    server.script("t", *[429] * 100)
    clock = SteppingClock()

    def rng() -> float:
        clock.now += 0.25
        return 1.0

    gateway = make_gateway(server.endpoint, max_attempts=2, rng=rng, clock=clock, backoff_cap=0.004)
    policy = RecordingPolicy(gateway.retry)
    gateway.retry = policy
    deadline = clock.now + 2.0
    # WHEN both are posted with a deadline two (clock) seconds away
    report = gateway.post_many([Post("t", b"1"), Post("ok", b"2")], deadline=deadline)
    # THEN the throttled post is reported failed (its record is redelivered) and the other delivered
    assert report.failed == [Post("t", b"1")]
    assert report.delivered == [Post("ok", b"2")]
    # AND it was retried well past max_attempts, until no wait could end before the deadline
    waits = [wait for _, wait, _ in policy.decisions if wait is not None]
    assert len(waits) == report.throttle_retries == 8
    assert server.requests_for("t") == 9
    # AND no wait was scheduled to end at or past the deadline; the one that would have is where it gave up
    assert all(now + wait < deadline for now, wait, _ in policy.decisions if wait is not None)
    assert policy.decisions[-1][1] is None and policy.decisions[-1][0] + 0.004 >= deadline


def test_other_failures_keep_their_attempt_limit_under_a_deadline(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    # GIVEN a connection that answers 503 every time, and a deadline far away
    server.connect("s")
    server.script("s", *[503] * 10)
    gateway = make_gateway(server.endpoint, max_attempts=3)
    # WHEN a message is posted
    report = gateway.post_many([Post("s", b"1")], deadline=time.monotonic() + 60)
    # THEN it fails after max_attempts tries, as without a deadline
    assert report.failed == [Post("s", b"1")]
    assert server.requests_for("s") == 3


def test_gone_under_a_deadline_is_gone_at_once(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    # GIVEN a connection id the server does not know (410)
    gateway = make_gateway(server.endpoint)
    # WHEN posted with a deadline
    report = gateway.post_many([Post("never-connected", b"1")], deadline=time.monotonic() + 60)
    # THEN it is gone after one call, not retried
    assert report.gone == [Post("never-connected", b"1")]
    assert server.requests_for("never-connected") == 1


def test_a_deadline_already_passed_fails_every_post_without_a_call(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    # GIVEN a connected client and a deadline that has already passed
    server.connect("a")
    clock = SteppingClock()
    gateway = make_gateway(server.endpoint, clock=clock)
    # WHEN posting
    report = gateway.post_many([Post("a", b"1"), Post("a", b"2")], deadline=clock.now)
    # THEN nothing is sent and both are failed, for redelivery
    assert report.failed == [Post("a", b"1"), Post("a", b"2")]
    assert server.requests == []


def test_unanswered_requests_are_failed_at_the_deadline(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    # GIVEN a server that answers a post only after 30 s, and a deadline half a second away
    server.connect("slow")
    server.script("slow", ("delay", 30.0))
    gateway = make_gateway(server.endpoint, timeout=60.0)
    # WHEN posting
    report = gateway.post_many([Post("slow", b"1")], deadline=time.monotonic() + 0.5)
    # THEN the post is failed at the deadline rather than waited for (the request timeout is a minute)
    assert report.failed == [Post("slow", b"1")]
    assert server.requests_for("slow") == 1


def test_the_retry_policy_never_waits_past_the_deadline() -> None:
    # GIVEN the default backoff with the largest draws, and a deadline 3 s ahead
    policy = RetryPolicy(max_attempts=6, backoff_base=0.025, backoff_cap=1.0, rng=lambda: 1.0)
    deadline = 103.0
    # WHEN asked at every point of the way, for throttled tries far beyond max_attempts
    for attempts in range(1, 40):
        for step in range(0, 61):
            now = 100.0 + step * 0.05
            wait = policy.delay(attempts, attempts, True, now, deadline)
            # THEN every wait ends before the deadline, and one is given whenever the capped backoff fits
            if wait is not None:
                assert now + wait < deadline
            expected = min(1.0, 0.025 * 2 ** (attempts - 1))
            assert (wait is None) == (now + expected >= deadline)
    # AND without a deadline, throttled or not, max_attempts is the limit
    assert policy.delay(5, 5, True, 0.0, None) is not None
    assert policy.delay(6, 6, True, 0.0, None) is None
    # AND under a deadline, failures other than throttling still count to max_attempts
    assert policy.delay(9, 3, False, 0.0, 1e9) is None
    assert policy.delay(9, 4, False, 0.0, 1e9) is not None


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_retried_but_not_counted_as_throttles(
    status: int, server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    server.connect("s")
    server.script("s", status)
    report = make_gateway(server.endpoint).post_many([Post("s", b"1")])
    assert report.delivered == [Post("s", b"1")]
    assert report.throttle_retries == 0
    assert server.requests_for("s") == 2


def test_a_throttling_error_type_on_a_400_is_treated_as_throttling(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    server.connect("t")
    server.script("t", ("error", 400, "ThrottlingException"))
    report = make_gateway(server.endpoint).post_many([Post("t", b"1")])
    assert report.delivered == [Post("t", b"1")]
    assert report.throttle_retries == 1


@pytest.mark.parametrize("status", [400, 403, 413])
def test_client_errors_fail_at_once(
    status: int, server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    server.connect("c")
    server.script("c", status)
    report = make_gateway(server.endpoint).post_many([Post("c", b"1")])
    assert report.failed == [Post("c", b"1")]
    assert server.requests_for("c") == 1


def test_failures_are_logged_once_per_batch_with_their_reasons(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway], caplog: pytest.LogCaptureFixture
) -> None:
    server.connect("a", "b")
    server.script("a", 403)
    server.script("b", 413)
    with caplog.at_level("WARNING", logger=observability.SERVICE):
        report = make_gateway(server.endpoint).post_many([Post("a", b"1"), Post("b", b"2")])
    assert len(report.failed) == 2
    # the line goes through the service's one Logger
    [record] = [r for r in caplog.records if r.name == observability.SERVICE]
    assert record.failed == 2  # type: ignore[attr-defined]
    assert record.reasons == {"HTTP 403 ForbiddenException": 1, "HTTP 413 PayloadTooLargeException": 1}  # type: ignore[attr-defined]


def test_gone_is_reported_once_without_retry(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    report = make_gateway(server.endpoint).post_many([Post("never-connected", b"1")])
    assert report.gone == [Post("never-connected", b"1")]
    assert server.requests_for("never-connected") == 1


def test_post_many_puts_every_post_in_exactly_one_list_in_input_order(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    # GIVEN 40 connections: live, gone, forbidden, and throttled once then fine
    live = [f"live-{i}=" for i in range(20)]
    throttled = [f"busy-{i}=" for i in range(5)]
    forbidden = [f"deny-{i}" for i in range(5)]
    gone = [f"gone-{i}" for i in range(10)]
    server.connect(*live, *throttled, *forbidden)
    for connection_id in throttled:
        server.script(connection_id, 429)
    for connection_id in forbidden:
        server.script(connection_id, *[403] * 10)
    everyone = live + throttled + forbidden + gone
    posts = [Post(everyone[i % len(everyone)], f"m{i}".encode()) for i in range(400)]
    # WHEN they are all posted with 8 requests in flight
    report = make_gateway(server.endpoint, concurrency=8).post_many(posts)
    # THEN each post is in exactly one list, in the order it was given
    assert sorted(map(id, report.delivered + report.gone + report.failed)) == sorted(map(id, posts))
    assert report.delivered == [p for p in posts if p.connection_id in live + throttled]
    assert report.gone == [p for p in posts if p.connection_id in gone]
    assert report.failed == [p for p in posts if p.connection_id in forbidden]
    assert report.throttle_retries == len(throttled)
    # AND every delivered message arrived exactly once
    delivered = Counter((p.connection_id, p.data) for p in report.delivered)
    arrived = Counter((cid, data) for cid, messages in server.received.items() for data in messages)
    assert arrived == delivered
    # AND no more than 8 connections were opened
    assert server.accepted <= 8


def test_posts_to_one_connection_arrive_in_order_even_when_one_is_retried(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    # GIVEN a connection whose first post is throttled twice, and plenty of parallelism
    server.connect("a", "b")
    server.script("a", 429, 429)
    posts = [Post("a" if i % 2 else "b", str(i).encode()) for i in range(20)]
    # WHEN ten posts to each connection go out in one batch
    report = make_gateway(server.endpoint, concurrency=8).post_many(posts)
    # THEN each connection received its messages in the order they were given
    assert len(report.delivered) == 20
    assert server.received["a"] == [p.data for p in posts if p.connection_id == "a"]
    assert server.received["b"] == [p.data for p in posts if p.connection_id == "b"]


def test_once_a_connection_is_gone_its_remaining_posts_are_gone_without_calls(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    posts = [Post("gone", str(i).encode()) for i in range(5)]
    report = make_gateway(server.endpoint).post_many(posts)
    assert report.gone == posts
    assert server.requests_for("gone") == 1


def test_an_empty_batch_does_nothing(server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]) -> None:
    report = make_gateway(server.endpoint).post_many([])
    assert (report.delivered, report.gone, report.failed, report.throttle_retries) == ([], [], [], 0)
    assert server.accepted == 0


# ------------------------------------------------------------------ single calls


def test_post_close_and_info(server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]) -> None:
    server.connect("a")
    gateway = make_gateway(server.endpoint)
    assert gateway.post("a", b"hi") is True
    assert gateway.post("b", b"hi") is False
    info = gateway.info("a")
    assert info is not None and info["identity"] == {"sourceIp": "127.0.0.1", "userAgent": "test"}
    assert gateway.info("b") is None
    gateway.close("a")
    gateway.close("a")  # already gone: fine
    assert gateway.post("a", b"again") is False
    assert gateway.info("a") is None


def test_post_raises_gateway_error_for_failures(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    server.connect("a")
    server.script("a", 403, 413, *[500] * 4)
    gateway = make_gateway(server.endpoint, max_attempts=4)
    with pytest.raises(GatewayError, match="403"):
        gateway.post("a", b"x")
    with pytest.raises(GatewayError, match="PayloadTooLarge"):
        gateway.post("a", b"x" * 200_000)
    with pytest.raises(GatewayError, match="500"):
        gateway.close("a")


def test_info_reads_chunked_responses(make_gateway: Callable[..., ManagementApiGateway]) -> None:
    chunked = ScriptedServer(chunked_info=True).start()
    try:
        chunked.connect("a")
        gateway = make_gateway(chunked.endpoint)
        assert gateway.info("a") == gateway.info("a") != None  # noqa: E711 - twice: the connection stays usable
        assert chunked.accepted == 1
    finally:
        chunked.stop()


# ------------------------------------------------------------------ response parsing


class _FakeTransport:
    def __init__(self) -> None:
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted


class _RecordingBatch:
    def __init__(self) -> None:
        self.responses: list[tuple[int, bytes, bytes, bool]] = []
        self.errors: list[str] = []

    def on_response(self, conn: Any, call: Any, status: int, body: bytes, error_type: bytes, reusable: bool) -> None:
        self.responses.append((status, body, error_type, reusable))

    def on_connection_lost(self, conn: Any, call: Any, reason: str) -> None:
        self.errors.append(reason)

    def on_transport_error(self, call: Any, reason: str) -> None:
        self.errors.append(reason)

    def pump(self) -> None:
        pass


def _feed(pieces: list[bytes], then_eof: bool = False) -> tuple[_RecordingBatch, _FakeTransport]:
    """Drive one connection's parser with a response arriving in the given pieces."""
    pool = ConnectionPool("127.0.0.1", 1, None, 1, 30.0, 1.0)
    pool.live = 1
    conn = HttpConnection(pool)
    transport = _FakeTransport()
    conn.connection_made(transport)
    batch = _RecordingBatch()
    conn.send(batch, Call("POST", "c", b""))  # type: ignore[arg-type]
    for piece in pieces:
        conn.data_received(piece)
    if then_eof:
        conn.eof_received()
        conn.connection_lost(None)
    return batch, transport


def _every_split(message: bytes) -> Iterator[list[bytes]]:
    yield [message]
    for cut in range(1, len(message)):
        yield [message[:cut], message[cut:]]
    yield [bytes([b]) for b in message]


GONE = b'HTTP/1.1 410 Gone\r\nx-amzn-ErrorType: GoneException\r\nContent-Length: 15\r\n\r\n{"message":null}'[:-1]
CHUNKED = (
    b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\n{"a\r\n5\r\n": 1}\r\n0\r\nX-Trailer: y\r\n\r\n'
)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (GONE, (410, b'{"message":null', b"GoneException", True)),
        (CHUNKED, (200, b'{"a": 1}', b"", True)),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", (200, b"ok", b"", True)),
        (b"HTTP/1.1 204 No Content\r\n\r\n", (204, b"", b"", True)),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", (200, b"", b"", False)),
        (CHUNKED.replace(b"\r\n\r\n", b"\r\nContent-Length: 3\r\n\r\n", 1), (200, b'{"a": 1}', b"", True)),
    ],
    ids=["content-length", "chunked-with-trailer", "informational-first", "no-content", "connection-close", "te-wins"],
)
def test_responses_parse_however_they_are_split(message: bytes, expected: tuple[int, bytes, bytes, bool]) -> None:
    for pieces in _every_split(message):
        batch, _ = _feed(pieces)
        assert batch.responses == [expected], pieces
        assert batch.errors == []


def test_bytes_beyond_the_response_retire_the_connection() -> None:
    for pieces in _every_split(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxy"):
        batch, transport = _feed(pieces)
        [(status, body, _, reusable)] = batch.responses
        assert (status, body) == (200, b"x")
        assert not reusable or transport.aborted


def test_a_body_without_length_runs_to_the_end_of_the_connection() -> None:
    message = b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"connectedAt": 1}'
    for pieces in _every_split(message):
        batch, transport = _feed(pieces, then_eof=True)
        assert batch.responses == [(200, b'{"connectedAt": 1}', b"", False)]
        assert transport.closed


@pytest.mark.parametrize("garbage", [b"SSH-2.0-OpenSSH_9.6\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n", b"x" * 70_000])
def test_garbage_is_a_transport_error_and_the_connection_is_dropped(garbage: bytes) -> None:
    batch, transport = _feed([garbage])
    assert batch.responses == [] and len(batch.errors) == 1
    assert transport.aborted


def test_bytes_nobody_asked_for_retire_an_idle_connection() -> None:
    pool = ConnectionPool("127.0.0.1", 1, None, 1, 30.0, 1.0)
    pool.live = 1
    conn = HttpConnection(pool)
    transport = _FakeTransport()
    conn.connection_made(transport)
    pool.put_idle(conn)
    conn.data_received(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    assert transport.aborted and pool.idle == [] and pool.live == 0
    assert pool.take_idle() is None


# ------------------------------------------------------------------ connections


def test_connections_are_kept_alive_across_batches(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    server.connect(*[f"c{i}" for i in range(50)])
    gateway = make_gateway(server.endpoint, concurrency=4)
    for _ in range(3):
        report = gateway.post_many([Post(f"c{i}", b"x") for i in range(50)])
        assert len(report.delivered) == 50
    assert server.accepted <= 4
    assert gateway.connections_opened == server.accepted


def test_connections_idle_past_the_limit_are_not_reused(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    server.connect("a")
    gateway = make_gateway(server.endpoint, concurrency=1, idle_timeout=0.0)
    assert [gateway.post("a", b"x") for _ in range(3)] == [True] * 3
    assert server.accepted == 3


def test_idle_connections_the_server_closed_are_replaced_without_spending_attempts(
    make_gateway: Callable[..., ManagementApiGateway],
) -> None:
    # GIVEN a server that quietly closes every connection after answering, and a gateway with one attempt per post
    closing = ScriptedServer(close_after_response=True).start()
    try:
        closing.connect("a")
        gateway = make_gateway(closing.endpoint, concurrency=1, max_attempts=1)
        # WHEN posts go out one call after another
        results = [gateway.post("a", str(i).encode()) for i in range(5)]
        # THEN none fails, and each went over a fresh connection
        assert results == [True] * 5
        assert closing.received["a"] == [str(i).encode() for i in range(5)]
    finally:
        closing.stop()


def test_a_reused_connection_closed_under_a_request_is_retried_once_for_free(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    # GIVEN a warm keep-alive connection, and a server that will drop it on reading the next request
    server.connect("a", "b")
    gateway = make_gateway(server.endpoint, concurrency=1, max_attempts=1)
    assert gateway.post("a", b"warm")
    server.script("b", "close")
    # WHEN a post goes out on it
    delivered = gateway.post("b", b"1")
    # THEN it is resent on a new connection without counting as the one allowed attempt
    assert delivered is True
    assert server.requests_for("b") == 2
    assert server.accepted == 2


def test_a_fresh_connection_dropped_without_an_answer_counts_as_an_attempt(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    server.connect("b")
    server.script("b", "close", "close")
    assert make_gateway(server.endpoint, max_attempts=1).post_many([Post("b", b"1")]).failed == [Post("b", b"1")]
    assert make_gateway(server.endpoint, max_attempts=2).post_many([Post("b", b"2")]).delivered == [Post("b", b"2")]


def test_connection_close_responses_are_honoured(make_gateway: Callable[..., ManagementApiGateway]) -> None:
    closing = ScriptedServer(connection_close_header=True).start()
    try:
        closing.connect("a", "b")
        report = make_gateway(closing.endpoint, concurrency=2, max_attempts=1).post_many(
            [Post("a" if i % 2 else "b", b"x") for i in range(10)]
        )
        assert len(report.delivered) == 10
        assert closing.accepted == 10
    finally:
        closing.stop()


def test_a_slow_answer_times_out_and_is_retried(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    # GIVEN a server that sits on the first request far longer than the timeout
    server.connect("slow", "fine")
    server.script("slow", ("delay", 60))
    gateway = make_gateway(server.endpoint, timeout=1.0, max_attempts=3)
    started = time.monotonic()
    # WHEN posting to it and to a healthy connection
    report = gateway.post_many([Post("slow", b"1"), Post("fine", b"2")])
    # THEN the stuck request is abandoned after the timeout and the retry succeeds; nothing waits for the server
    assert report.delivered == [Post("slow", b"1"), Post("fine", b"2")]
    assert time.monotonic() - started < 30
    assert server.requests_for("slow") >= 2


def test_a_slow_answer_fails_when_attempts_run_out(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    server.connect("slow")
    server.script("slow", ("delay", 60))
    gateway = make_gateway(server.endpoint, timeout=0.3, max_attempts=1)
    assert gateway.post_many([Post("slow", b"1")]).failed == [Post("slow", b"1")]
    with pytest.raises(GatewayError, match="no response"):
        server.script("slow", ("delay", 60))
        gateway.post("slow", b"2")


def test_a_stalled_batch_is_abandoned_rather_than_hanging(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway], monkeypatch: Any
) -> None:
    # GIVEN a request the server never answers, and (to stand in for a bug) no timeout enforcement
    monkeypatch.setattr(CallBatch, "check_timeouts", lambda self: None)
    server.connect("stuck", "fine")
    server.script("stuck", ("delay", 60))
    gateway = make_gateway(server.endpoint, timeout=0.2, backoff_cap=0.001)
    started = time.monotonic()
    # WHEN posting
    report = gateway.post_many([Post("fine", b"1"), Post("stuck", b"2")])
    # THEN the batch still ends, the stranded post reported failed and the rest delivered
    assert report.delivered == [Post("fine", b"1")] and report.failed == [Post("stuck", b"2")]
    assert time.monotonic() - started < 10


def test_an_unreachable_endpoint_fails_posts_without_raising(
    make_gateway: Callable[..., ManagementApiGateway],
) -> None:
    # GIVEN a port nobody listens on
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gateway = make_gateway(f"http://127.0.0.1:{port}", max_attempts=2)
    # WHEN posting; THEN post_many reports failures and the single calls raise GatewayError
    posts = [Post(f"c{i}", b"x") for i in range(20)]
    assert gateway.post_many(posts).failed == posts
    with pytest.raises(GatewayError, match="connect failed"):
        gateway.post("c0", b"x")
    with pytest.raises(GatewayError):
        gateway.info("c0")


def test_https_with_keep_alive(make_gateway: Callable[..., ManagementApiGateway], tmp_path: Path) -> None:
    import ssl

    cryptography = pytest.importorskip("cryptography")
    assert cryptography
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    # GIVEN a TLS server with a self-signed certificate for localhost, trusted by the gateway
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_file, key_file)
    secure = ScriptedServer(ssl_context=server_context, host="localhost").start()
    try:
        secure.connect("a")
        client_context = ssl.create_default_context(cafile=str(cert_file))
        gateway = make_gateway(secure.endpoint, concurrency=2, ssl_context=client_context)
        # WHEN posting in two batches
        first = gateway.post_many([Post("a", b"1"), Post("a", b"2"), Post("nope", b"3")])
        second = gateway.post_many([Post("a", b"4")])
        # THEN it works over TLS and the second batch rides the first batch's connections
        assert (len(first.delivered), len(first.gone), len(second.delivered)) == (2, 1, 1)
        assert secure.accepted <= 2
        assert secure.requests[0].headers["host"] == f"localhost:{secure.port}"
    finally:
        secure.stop()


# ------------------------------------------------------------------ threads, loops, credentials, imports


def test_usable_from_other_threads_one_after_another_and_at_once(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    server.connect(*[f"c{i}" for i in range(10)])
    gateway = make_gateway(server.endpoint, concurrency=4)
    results: list[int] = []

    def work(tag: int) -> None:
        report = gateway.post_many([Post(f"c{i}", f"{tag}".encode()) for i in range(10)])
        results.append(len(report.delivered))

    # GIVEN calls from a worker thread, then from this thread, then from four threads at once
    worker = threading.Thread(target=work, args=(0,))
    worker.start()
    worker.join(30)
    work(1)
    crowd = [threading.Thread(target=work, args=(tag,)) for tag in range(2, 6)]
    for thread in crowd:
        thread.start()
    for thread in crowd:
        thread.join(30)
    # THEN every call delivered everything, over the same few connections
    assert results == [10] * 6
    assert sum(len(messages) for messages in server.received.values()) == 60
    assert server.accepted <= 4


async def test_usable_from_inside_a_running_event_loop(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    server.connect("a")
    gateway = make_gateway(server.endpoint)
    assert gateway.post("a", b"from async code") is True
    assert gateway.post_many([Post("a", b"again")]).delivered
    gateway.shutdown()
    assert gateway.post("a", b"after a shutdown, the gateway opens what it needs again") is True


def test_credentials_are_resolved_per_call(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway]
) -> None:
    # GIVEN a provider that hands out rotated credentials
    server.connect("a")
    rotation = iter([CREDENTIALS, SESSION_CREDENTIALS])
    gateway = make_gateway(server.endpoint, credentials_provider=lambda: next(rotation))
    # WHEN two batches are posted
    gateway.post_many([Post("a", b"1")])
    gateway.post_many([Post("a", b"2")])
    # THEN each was signed with the credentials current at the time
    first, second = server.requests
    assert "Credential=AKIDEXAMPLE/" in first.headers["authorization"] and "x-amz-security-token" not in first.headers
    assert "Credential=ASIAEXAMPLE/" in second.headers["authorization"]
    assert second.headers["x-amz-security-token"] == SESSION_CREDENTIALS.token


def test_default_credentials_come_from_botocore(
    server: ScriptedServer, make_gateway: Callable[..., ManagementApiGateway], monkeypatch: Any, tmp_path: Path
) -> None:
    # GIVEN credentials only in the environment, as Lambda provides them
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ASIAFROMENVIRONMENT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "environment-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "environment-token")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "missing-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "missing-credentials"))
    server.connect("a")
    gateway = make_gateway(server.endpoint, credentials_provider=None)
    # WHEN posting
    assert gateway.post("a", b"1")
    # THEN the request was signed with them
    assert "Credential=ASIAFROMENVIRONMENT/" in server.requests[0].headers["authorization"]
    assert server.requests[0].headers["x-amz-security-token"] == "environment-token"


def test_importing_the_module_pulls_in_no_asyncio_ssl_or_botocore() -> None:
    probe = (
        "import sys; import quanttrade_ws.management_api.client; "
        "print(sorted(m for m in ('asyncio', 'ssl', 'botocore', 'urllib.parse', 'json') if m in sys.modules))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"PYTHONPATH": str(REPO_ROOT / "layers" / "shared" / "python")},
    )
    assert completed.stdout.strip() == "[]"
