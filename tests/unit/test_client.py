"""The Python client against an in-process fake server that speaks the protocol.

The fake server validates every frame the client sends with the server's own
parser (quanttrade_ws.protocol.parse_client_frame) and builds what it sends
with the server's own ServerMessage and pack_batches, so a drift between the
client and the protocol models fails here.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import tomllib
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import quanttrade_client
from quanttrade_client import (
    ERRORS_BY_CODE,
    AuthFailed,
    ConnectionLost,
    Message,
    QuantTradeClient,
    QuantTradeError,
    RateLimited,
    ResumeReport,
    backoff_delay,
)
from quanttrade_client.ordering import StreamOrder
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from quanttrade_ws import protocol
from quanttrade_ws.protocol import ErrorCode, MessageType, ProtocolError, ServerMessage, error_message, pack_batches

STREAM = "market_data:AAPL"
WAIT = 5.0


async def eventually(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "condition") -> None:
    """Wait for a condition the test cannot be notified of, failing loudly after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def take(client: QuantTradeClient, count: int, timeout: float = WAIT) -> list[Message]:
    return [await asyncio.wait_for(anext(client), timeout) for _ in range(count)]


def seqs(messages: list[Message]) -> list[tuple[str | None, int | None]]:
    return [(message.stream, message.seq) for message in messages]


# ---------------------------------------------------------------- the fake server


@dataclass
class FakeConnection:
    ws: ServerConnection
    number: int
    token: str
    frames: list[dict[str, Any]] = field(default_factory=list)
    session: dict[str, set[str]] | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def actions(self) -> list[str]:
        return [frame["action"] for frame in self.frames]

    async def send(self, message: ServerMessage | str | bytes) -> None:
        await self.ws.send(message.to_json() if isinstance(message, ServerMessage) else message)


class FakeServer:
    """Enough of the QuantTrade server to drive the client: sessions, replies, errors, history and replay."""

    def __init__(self) -> None:
        self.accept: Callable[[str], bool] = lambda token: token.startswith("good")
        self.refuse: list[int] = []  # HTTP statuses for the next handshakes, one each
        self.handshakes: list[tuple[float, str, int]] = []
        self.connections: list[FakeConnection] = []
        self.sessions: dict[str, dict[str, set[str]]] = {}
        self.errors: dict[str, ErrorCode] = {}
        self.silent: set[str] = set()
        self.held: dict[str, asyncio.Event] = {}
        self.rate_limit_next = False
        self.history: dict[str, list[str]] = defaultdict(list)
        self.on_resume: Callable[[FakeConnection, protocol.Resume], Awaitable[None]] | None = None
        self.invalid_frames: list[str] = []
        self._tokens: dict[int, str] = {}
        self._session_numbers = itertools.count(1)
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await serve(self._handle, "127.0.0.1", 0, process_request=self._process_request)
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        token = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
        status = self.refuse.pop(0) if self.refuse else (101 if self.accept(token) else 401)
        self.handshakes.append((time.monotonic(), token, status))
        if status != 101:
            return connection.respond(status, "refused\n")
        self._tokens[id(connection)] = token
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        connection = FakeConnection(ws, len(self.connections) + 1, self._tokens.pop(id(ws), ""))
        self.connections.append(connection)
        try:
            async for raw in ws:
                await self._on_frame(connection, raw)
        except ConnectionClosed:
            pass
        finally:
            connection.closed.set()

    # ------------------------------------------------------------ views for tests

    def connection(self, number: int) -> FakeConnection:
        return self.connections[number - 1]

    def live(self) -> list[FakeConnection]:
        return [c for c in self.connections if c.session is not None and not c.closed.is_set()]

    def frames(self, action: str) -> list[dict[str, Any]]:
        return [frame for c in self.connections for frame in c.frames if frame.get("action") == action]

    # ------------------------------------------------------------ behaviour

    async def publish(self, stream: str = STREAM, to: list[FakeConnection] | None = None) -> int:
        """Give the next message of `stream` its seq, keep it for replay, and send it to `to` (default: live ones)."""
        seq = len(self.history[stream]) + 1
        symbol = stream.partition(":")[2] or None
        text = ServerMessage(
            message_type=MessageType.MARKET_DATA,
            payload={"symbol": symbol, "price": 100.0 + seq, "volume": 10.0, "event_id": f"e{seq}"},
            source="quanttrade.market-data",
            stream=stream,
            seq=seq,
        ).to_json()
        self.history[stream].append(text)
        for connection in self.live() if to is None else to:
            await connection.send(text)
        return seq

    async def drop(self, connection: FakeConnection, code: int = 1006) -> None:
        if code == 1006:
            connection.ws.transport.abort()
        else:
            await connection.ws.close(code, "server says goodbye")
        await asyncio.wait_for(connection.closed.wait(), WAIT)

    async def _on_frame(self, connection: FakeConnection, raw: str | bytes) -> None:
        connection.frames.append(json.loads(raw))
        try:
            frame = protocol.parse_client_frame(raw)
        except ProtocolError as error:
            self.invalid_frames.append(str(raw))
            await connection.send(error_message(error.code, error.message, error.request_id))
            return
        if self.rate_limit_next:
            # Like the real service: the limit is hit before the frame is parsed, so the reply names no request.
            self.rate_limit_next = False
            await connection.send(error_message(ErrorCode.RATE_LIMIT, "More than 100 messages per second"))
            return
        if frame.action in self.silent:
            return
        if frame.action in self.held:
            task = asyncio.create_task(self._answer_later(connection, frame, self.held[frame.action]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        await self._answer(connection, frame)

    async def _answer_later(self, connection: FakeConnection, frame: Any, release: asyncio.Event) -> None:
        await release.wait()
        await self._answer(connection, frame)

    async def _answer(self, connection: FakeConnection, frame: Any) -> None:
        if frame.action in self.errors:
            code = self.errors[frame.action]
            await connection.send(error_message(code, f"refused with {code.value}", frame.request_id))
            return

        def reply(message_type: MessageType, payload: dict[str, Any], **extra: Any) -> ServerMessage:
            return ServerMessage(message_type=message_type, payload=payload, request_id=frame.request_id, **extra)

        session = connection.session
        match frame:
            case protocol.Hello():
                token = f"session-{next(self._session_numbers)}"
                connection.session = self.sessions[token] = {"subscriptions": set(), "rooms": set()}
                await connection.send(
                    reply(
                        MessageType.CONNECT,
                        {
                            "client_id": f"c{connection.number}",
                            "session_token": token,
                            "user_id": "u1",
                            "limits": {"max_subscriptions": 50},
                        },
                    )
                )
            case protocol.Subscribe():
                keys = [spec.key for spec in frame.streams]
                assert session is not None
                session["subscriptions"].update(keys)
                await connection.send(reply(MessageType.SUBSCRIBE, {"success": True, "streams": keys}))
            case protocol.Unsubscribe():
                keys = [spec.key for spec in frame.streams]
                assert session is not None
                session["subscriptions"].difference_update(keys)
                await connection.send(reply(MessageType.UNSUBSCRIBE, {"success": True, "streams": keys}))
            case protocol.JoinRoom():
                assert session is not None
                session["rooms"].add(frame.room)
                await connection.send(reply(MessageType.JOIN_ROOM, {"success": True}, room=frame.room))
            case protocol.LeaveRoom():
                assert session is not None
                session["rooms"].discard(frame.room)
                await connection.send(reply(MessageType.LEAVE_ROOM, {"success": True}, room=frame.room))
            case protocol.SendRoomMessage():
                payload = {"message": frame.message, "user_id": "u1"}
                await connection.send(
                    reply(MessageType.ROOM_MESSAGE, payload, room=frame.room, source=f"c{connection.number}")
                )
            case protocol.Ping():
                await connection.send(reply(MessageType.PONG, {"server_time": time.time()}))
            case protocol.Refresh():
                await connection.send(reply(MessageType.REFRESH, {"success": True, "expires_at": 0}))
            case protocol.Resume():
                if self.on_resume is not None:
                    await self.on_resume(connection, frame)
                else:
                    await self.resume(connection, frame)

    async def resume(
        self, connection: FakeConnection, frame: protocol.Resume, heads: dict[str, int] | None = None
    ) -> None:
        """The real service's order: re-attach, replay every stream's gap, then answer `resumed`.
        Session tokens are single-use, as on the real service: the answer carries the next one."""
        session = self.sessions.pop(frame.session_token, None)
        if session is None:
            await connection.send(error_message(ErrorCode.AUTH_FAILED, "Session is no longer known", frame.request_id))
            return
        connection.session = session
        results = {}
        for stream, last in frame.last_seq.items():
            entries = self.history[stream][last:]
            for data in pack_batches(entries, 128 * 1024):
                await connection.send(data)
            head = (heads or {}).get(stream, len(self.history[stream]))
            results[stream] = {"recovered": True, "replayed": len(entries), "last_seq": head}
        token = frame.session_token + "+"
        self.sessions[token] = session
        await connection.send(
            ServerMessage(
                message_type=MessageType.RESUMED,
                request_id=frame.request_id,
                payload={
                    "success": True,
                    "recovered": True,
                    "streams": results,
                    "subscriptions": sorted(session["subscriptions"]),
                    "rooms": sorted(session["rooms"]),
                    "client_id": f"c{connection.number}",
                    "session_token": token,
                },
            )
        )


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    fake = FakeServer()
    await fake.start()
    yield fake
    await fake.stop()
    assert fake.invalid_frames == [], "the client sent frames the server's protocol models reject"


@pytest.fixture
async def open_clients() -> AsyncIterator[list[QuantTradeClient]]:
    clients: list[QuantTradeClient] = []
    yield clients
    for client in clients:
        await client.close()


@pytest.fixture
def make_client(server: FakeServer, open_clients: list[QuantTradeClient]) -> Callable[..., QuantTradeClient]:
    def make(**options: Any) -> QuantTradeClient:
        settings: dict[str, Any] = {
            "token": "good",
            "request_timeout": 2.0,
            "backoff_base": 0.01,
            "backoff_max": 0.05,
            "keepalive_interval": 60.0,
            # Off unless a test is about it, so the frames each test expects are exactly those.
            "catch_up_after": None,
        }
        if "token_provider" in options:
            settings.pop("token")
        client = QuantTradeClient(server.url, **(settings | options))
        open_clients.append(client)
        return client

    return make


# ---------------------------------------------------------------- the contract


def test_client_enums_are_the_server_protocol() -> None:
    # The same classes, not copies: the client cannot drift from what the server validates with.
    assert quanttrade_client.ErrorCode is protocol.ErrorCode
    assert quanttrade_client.MessageType is protocol.MessageType
    assert quanttrade_client.StreamType is protocol.StreamType
    # and every error code has its exception class
    assert set(ERRORS_BY_CODE) == {c.value for c in protocol.ErrorCode}


def test_the_client_distribution_depends_on_the_protocol_distribution() -> None:
    # GIVEN the two distributions' metadata
    root = Path(__file__).resolve().parents[2]
    client = tomllib.loads((root / "clients" / "python" / "pyproject.toml").read_text())["project"]
    shared = tomllib.loads((root / "layers" / "shared" / "pyproject.toml").read_text())
    # THEN the protocol distribution packages quanttrade_protocol from the layer's own directory
    found = shared["tool"]["setuptools"]["packages"]["find"]
    assert found == {"where": ["python"], "include": ["quanttrade_protocol*"]}
    assert (root / "layers" / "shared" / "python" / "quanttrade_protocol" / "__init__.py").is_file()
    # AND the client requires exactly that version of it, so an installed client has the server's models
    protocol_project = shared["project"]
    assert f"{protocol_project['name']}=={protocol_project['version']}" in client["dependencies"]


def test_client_stream_keys_match_the_server() -> None:
    for stream_type in protocol.StreamType:
        for symbol in (None, "aapl", "BRK.B"):
            spec = protocol.stream_spec({"stream_type": stream_type, "symbol": symbol})
            assert quanttrade_client.stream_key(stream_type.value, symbol) == spec.key


# ---------------------------------------------------------------- requests


async def test_replies_are_matched_to_their_requests_by_request_id(server: FakeServer, make_client: Any) -> None:
    # GIVEN the server holds its answer to joinRoom back
    server.held["joinRoom"] = asyncio.Event()
    client = make_client()
    await client.connect()
    join = asyncio.create_task(client.join_room("desk"))
    await eventually(lambda: bool(server.frames("joinRoom")), what="joinRoom frame")

    # WHEN a later request is answered first
    pong = await client.ping()
    server.held["joinRoom"].set()
    joined = await asyncio.wait_for(join, WAIT)

    # THEN each awaitable got its own reply
    assert pong.message_type == MessageType.PONG
    assert pong.request_id == server.frames("ping")[0]["request_id"]
    assert joined.message_type == MessageType.JOIN_ROOM and joined.room == "desk"
    assert joined.request_id == server.frames("joinRoom")[0]["request_id"]


async def test_every_request_kind_is_answered(server: FakeServer, make_client: Any) -> None:
    client = make_client()
    await client.connect()
    assert client.session_token == "session-1" and client.client_id == "c1"
    assert client.limits == {"max_subscriptions": 50}

    subscribed = await client.subscribe("market_data", symbol="AAPL", interval=1.5, filters={"min_volume": 100})
    unsubscribed = await client.unsubscribe("market_data", symbol="AAPL")
    await client.join_room("desk")
    echo = await client.send_room_message("desk", "hello desk")
    left = await client.leave_room("desk")
    refreshed = await client.refresh("good-2")

    assert subscribed.payload["streams"] == ["market_data:AAPL"]
    assert server.frames("subscribe")[0]["streams"] == [
        {"stream_type": "market_data", "symbol": "AAPL", "interval": 1.5, "filters": {"min_volume": "100"}}
    ]
    assert unsubscribed.message_type == MessageType.UNSUBSCRIBE
    assert echo.message_type == MessageType.ROOM_MESSAGE and echo.payload["message"] == "hello desk"
    assert left.message_type == MessageType.LEAVE_ROOM
    assert refreshed.message_type == MessageType.REFRESH


@pytest.mark.parametrize("code", list(protocol.ErrorCode))
async def test_each_error_code_raises_its_typed_error(server: FakeServer, make_client: Any, code: ErrorCode) -> None:
    # GIVEN a server that refuses joinRoom with this code
    server.errors["joinRoom"] = code
    client = make_client()
    await client.connect()

    # WHEN the application joins a room THEN it gets the typed error with the code and the server's words
    with pytest.raises(ERRORS_BY_CODE[code.value]) as raised:
        await client.join_room("desk")
    assert isinstance(raised.value, QuantTradeError)
    assert raised.value.code == code.value
    assert raised.value.message == f"refused with {code.value}"
    assert raised.value.request_id == server.frames("joinRoom")[0]["request_id"]


async def test_a_rate_limit_that_names_no_request_fails_the_dropped_request(
    server: FakeServer, make_client: Any
) -> None:
    # GIVEN the server rate-limits the next frame without saying which request it dropped
    client = make_client(request_timeout=0.3)
    await client.connect()
    server.rate_limit_next = True

    # WHEN a request goes unanswered THEN it fails as RateLimited, and the application also sees the warning
    with pytest.raises(RateLimited):
        await client.ping()
    [warning] = await take(client, 1)
    assert warning.is_error and warning.payload["error_code"] == "RATE_LIMIT"


async def test_requests_cut_off_by_a_rate_limit_close_raise_rate_limited(server: FakeServer, make_client: Any) -> None:
    # GIVEN a server that warns about the rate limit and then closes the connection, as after repeated warnings
    client = make_client()
    await client.connect()
    server.silent.add("ping")
    pings = [asyncio.create_task(client.ping()) for _ in range(3)]
    await eventually(lambda: len(server.frames("ping")) == 3, what="the pings")
    [connection] = server.live()
    await connection.send(error_message(ErrorCode.RATE_LIMIT, "More than 100 messages per second"))
    await take(client, 1)

    # WHEN the server closes it THEN the unanswered requests fail as RateLimited, not as a mere lost connection
    await connection.ws.close(1000)
    for ping in pings:
        with pytest.raises(RateLimited):
            await asyncio.wait_for(ping, WAIT)


async def test_any_action_can_be_sent_for_forward_compatibility(server: FakeServer, make_client: Any) -> None:
    client = make_client()
    await client.connect()
    assert (await client.request("ping")).message_type == MessageType.PONG
    with pytest.raises(quanttrade_client.UnknownAction):
        await client.request("dance", style="tango")
    # The server's parser refused it, as it should; nothing else was refused.
    assert [json.loads(frame)["action"] for frame in server.invalid_frames] == ["dance"]
    server.invalid_frames.clear()


async def test_a_refused_handshake_raises_auth_failed(server: FakeServer, make_client: Any) -> None:
    client = make_client(token="expired")
    with pytest.raises(AuthFailed):
        await client.connect()
    assert server.handshakes[0][1] == "expired"


# ---------------------------------------------------------------- the message stream


async def test_batch_messages_are_unpacked_in_order(server: FakeServer, make_client: Any) -> None:
    client = make_client()
    await client.connect()
    await eventually(lambda: bool(server.live()), what="a live connection")
    messages = [
        ServerMessage(message_type=MessageType.ALERT, payload={"n": n}, stream="alerts", seq=n).to_json()
        for n in (1, 2, 3)
    ]
    [frame] = pack_batches(messages, 128 * 1024)
    await server.live()[0].send(frame)

    received = await take(client, 3)

    assert [m.payload["n"] for m in received] == [1, 2, 3]
    assert all(m.message_type == MessageType.ALERT for m in received)


async def test_duplicates_are_dropped_by_stream_and_seq(server: FakeServer, make_client: Any) -> None:
    client = make_client()
    await client.connect()
    [connection] = server.live()

    def data(stream: str, seq: int) -> ServerMessage:
        return ServerMessage(message_type=MessageType.MARKET_DATA, payload={}, stream=stream, seq=seq)

    for stream, seq in [("a", 1), ("a", 2), ("a", 2), ("b", 1), ("a", 1), ("b", 1), ("a", 3), ("end", 1)]:
        await connection.send(data(stream, seq))

    received = await take(client, 5)

    assert seqs(received) == [("a", 1), ("a", 2), ("b", 1), ("a", 3), ("end", 1)]
    assert client.last_seq == {"a": 3, "b": 1, "end": 1}


async def test_room_messages_and_notices_reach_the_application(server: FakeServer, make_client: Any) -> None:
    client = make_client()
    await client.connect()
    [connection] = server.live()
    await connection.send(
        ServerMessage(message_type=MessageType.ROOM_MESSAGE, payload={"message": "hi"}, room="desk", source="c9")
    )
    [message] = await take(client, 1)
    assert (message.message_type, message.room, message.source) == (MessageType.ROOM_MESSAGE, "desk", "c9")
    assert message.timestamp is not None and message.message_id is not None


def test_release_orders_each_stream_in_the_slots_it_arrived_in() -> None:
    order = StreamOrder()
    order.admit(Message("market_data", stream="a", seq=1))

    def m(stream: str, seq: int) -> Message:
        return Message("market_data", stream=stream, seq=seq)

    released = order.release([m("a", 4), m("b", 2), m("a", 2), m("a", 3), m("b", 1), m("a", 1), m("a", 3)])

    assert seqs(released) == [("b", 1), ("a", 2), ("a", 3), ("b", 2), ("a", 4)]


# ---------------------------------------------------------------- reconnect and resume


async def test_reconnect_replays_the_gap_and_releases_it_in_order(server: FakeServer, make_client: Any) -> None:
    # GIVEN a client that has seen seq 1-3 of a stream
    client = make_client()
    await client.connect()
    await client.subscribe("market_data", symbol="AAPL")
    for _ in range(3):
        await server.publish()
    assert seqs(await take(client, 3)) == [(STREAM, 1), (STREAM, 2), (STREAM, 3)]
    hello_token = client.session_token

    # and a resume on which live messages overtake the replay, with a duplicate among them
    async def resume_with_live_first(connection: FakeConnection, frame: protocol.Resume) -> None:
        connection.session = server.sessions[frame.session_token]
        await server.publish(to=[connection])  # seq 6, live, before the replay of 4 and 5
        await connection.send(server.history[STREAM][4])  # seq 5 on its own
        await server.resume(connection, frame)  # replays 4, 5 (batched), then `resumed`

    server.on_resume = resume_with_live_first

    # WHEN the server drops the connection and two messages are published during the outage
    await server.drop(server.connection(1))
    await server.publish()
    await server.publish()

    # THEN the application sees every message once and in order, then live ones as they come
    assert seqs(await take(client, 3)) == [(STREAM, 4), (STREAM, 5), (STREAM, 6)]
    await eventually(lambda: len(server.live()) == 1, what="the resumed connection")
    await server.publish()
    assert seqs(await take(client, 1)) == [(STREAM, 7)]

    [resume] = server.frames("resume")
    assert resume["session_token"] == hello_token
    assert resume["last_seq"] == {STREAM: 3}
    assert client.session_token == hello_token + "+"
    assert server.frames("subscribe") == server.connection(1).frames[1:2], "the server re-attached; no re-subscribe"
    assert client.last_resume == ResumeReport(
        session_resumed=True,
        recovered=True,
        streams={STREAM: {"recovered": True, "replayed": 3, "last_seq": 6}},
    )


async def test_a_re_made_session_gets_a_catch_up_resume_for_what_fan_out_missed(
    server: FakeServer, make_client: Any
) -> None:
    # GIVEN a client at seq 2 whose session the server forgets, and a fan-out that sequences one more
    # message just after the replay on the new session but addresses it to the audience of before (nobody)
    client = make_client(catch_up_after=0.1)
    await client.connect()
    await client.subscribe("market_data", symbol="AAPL")
    await server.publish()
    await server.publish()
    await take(client, 2)
    server.sessions.clear()

    async def resume_then_miss_one(connection: FakeConnection, frame: protocol.Resume) -> None:
        await server.resume(connection, frame)
        if len(server.frames("resume")) == 2:  # the first resume is refused: unknown session
            await server.publish(to=[])

    server.on_resume = resume_then_miss_one

    # WHEN the connection drops
    await server.drop(server.connection(1))

    # THEN the catch-up resume a moment later replays the missed message, once
    assert seqs(await take(client, 1)) == [(STREAM, 3)]
    assert server.connection(2).actions == ["resume", "hello", "subscribe", "resume", "resume"]
    assert server.frames("resume")[-1]["last_seq"] == {STREAM: 2}
    await server.publish()
    assert seqs(await take(client, 1)) == [(STREAM, 4)]


async def test_a_resumed_session_gets_no_catch_up_from_the_client(server: FakeServer, make_client: Any) -> None:
    # The server replays once more by itself after a resume; a second resume from the client would be waste.
    client = make_client(catch_up_after=0.05)
    await client.connect()
    await client.subscribe("market_data", symbol="AAPL")
    await server.publish()
    await take(client, 1)
    await server.drop(server.connection(1))
    await eventually(lambda: client.connected, what="the reconnect")
    # Proving that something is not sent needs time to pass: six times the catch-up delay.
    await asyncio.sleep(0.3)
    await client.ping()
    assert server.connection(2).actions == ["resume", "ping"]


@pytest.mark.parametrize("code", [1001, 1006, 1011, 1012])
async def test_reconnects_after_any_drop(server: FakeServer, make_client: Any, code: int) -> None:
    reports: list[ResumeReport] = []
    client = make_client(on_reconnect=reports.append)
    await client.connect()

    await server.drop(server.connection(1), code)

    await eventually(lambda: len(server.live()) == 1 and server.live()[0].number == 2, what="a second connection")
    await eventually(lambda: client.connected and bool(reports), what="the reconnect")
    assert server.connection(2).actions == ["resume"]
    assert reports[0].session_resumed and client.reconnects == 1
    assert (await client.ping()).message_type == MessageType.PONG


async def test_reconnect_backs_off_exponentially_between_refused_attempts(server: FakeServer, make_client: Any) -> None:
    # GIVEN jitter pinned to its maximum, so the delays are the exponential envelope itself
    client = make_client(backoff_base=0.05, backoff_max=10.0, rng=lambda: 1.0)
    await client.connect()
    server.refuse = [503, 503, 503]

    # WHEN the connection drops and the next three handshakes are refused
    await server.drop(server.connection(1))
    await eventually(lambda: len(server.handshakes) == 5, what="four reconnect attempts")
    await eventually(lambda: client.connected, what="the reconnect")

    # THEN each wait was twice the one before it
    times = [at for at, _token, _status in server.handshakes[1:]]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    for gap, expected in zip(gaps, [0.1, 0.2, 0.4], strict=True):
        assert gap >= expected * 0.95, (gaps, "backoff shorter than its envelope")
    assert [status for *_, status in server.handshakes] == [101, 503, 503, 503, 101]


def test_backoff_delay_is_full_jitter_under_a_capped_exponential() -> None:
    assert [backoff_delay(n, 0.5, 30.0, rng=lambda: 1.0) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff_delay(3, 0.5, 30.0, rng=lambda: 0.0) == 0.0
    assert backoff_delay(3, 0.5, 30.0, rng=lambda: 0.25) == 1.0


async def test_proactive_reconnect_resumes_on_a_new_connection_before_closing_the_old(
    server: FakeServer, make_client: Any
) -> None:
    # GIVEN a maximum connection time of a fraction of a second, and a client that has seen seq 1-2
    overlap: list[bool] = []

    async def resume_during_overlap(connection: FakeConnection, frame: protocol.Resume) -> None:
        old = server.connection(connection.number - 1)
        overlap.append(not old.closed.is_set())
        connection.session = server.sessions[frame.session_token]
        # One message published while both connections are live: the old one delivers
        # it at once, the new one holds it until `resumed`.
        await server.publish()
        await server.resume(connection, frame)

    server.on_resume = resume_during_overlap
    client = make_client(max_connection_seconds=0.6, reconnect_at=0.5)
    await client.connect()
    await client.subscribe("market_data", symbol="AAPL")
    await server.publish()
    await server.publish()

    # WHEN the connection reaches its replacement time
    await eventually(lambda: server.connection(1).closed.is_set(), what="the old connection to be closed")

    # THEN the new one resumed while the old one was still open, the old one was closed
    # normally by the client, and the application saw each message once
    assert overlap[0] is True
    assert server.connection(1).ws.close_code == 1000
    assert server.connection(2).actions[0] == "resume"
    await server.publish()
    received = await take(client, 4)
    assert seqs(received) == [(STREAM, 1), (STREAM, 2), (STREAM, 3), (STREAM, 4)]


async def test_keepalive_sends_the_ping_action(server: FakeServer, make_client: Any) -> None:
    client = make_client(keepalive_interval=0.05)
    await client.connect()
    await eventually(lambda: len(server.frames("ping")) >= 3, what="three keep-alive pings")
    assert client.connected and len(server.connections) == 1


async def test_a_connection_that_stops_answering_pings_is_replaced(server: FakeServer, make_client: Any) -> None:
    # GIVEN a half-open connection: frames go out, nothing comes back
    client = make_client(keepalive_interval=0.05, request_timeout=0.2)
    await client.connect()
    server.silent.add("ping")

    # THEN the keep-alive notices and the client reconnects
    await eventually(lambda: len(server.connections) >= 2, what="a new connection")
    server.silent.clear()
    await eventually(lambda: client.connected, what="the reconnect")
    assert server.connection(2).actions[0] == "resume"


async def test_an_unknown_session_falls_back_to_hello_and_restores_everything(
    server: FakeServer, make_client: Any
) -> None:
    # GIVEN a client with a subscription, a room and seq 1-2 seen
    client = make_client()
    await client.connect()
    await client.subscribe("market_data", symbol="AAPL", filters={"min_volume": "5"})
    await client.join_room("desk")
    await server.publish()
    await server.publish()
    await take(client, 2)

    # WHEN the server forgets every session and drops the connection, and a message is published meanwhile
    server.sessions.clear()
    await server.drop(server.connection(1))
    await server.publish()

    # THEN the client starts a new session, re-makes the subscription and the room, and replays the gap with it
    assert seqs(await take(client, 1)) == [(STREAM, 3)]
    await eventually(lambda: client.connected, what="the reconnect")
    second = server.connection(2)
    assert second.actions == ["resume", "hello", "subscribe", "joinRoom", "resume"]
    assert second.frames[2]["streams"] == [
        {"stream_type": "market_data", "symbol": "AAPL", "filters": {"min_volume": "5"}}
    ]
    assert second.frames[3]["room"] == "desk"
    assert second.frames[4]["session_token"] == "session-2"
    assert second.frames[4]["last_seq"] == {STREAM: 2}
    assert client.last_resume is not None and client.last_resume.session_resumed is False


async def test_a_session_missing_a_subscription_gets_it_back(server: FakeServer, make_client: Any) -> None:
    # GIVEN the server's session lost one of two subscriptions (a stale snapshot)
    client = make_client()
    await client.connect()
    await client.subscribe("market_data", symbol="AAPL")
    await client.subscribe("alerts")
    session = server.sessions["session-1"]
    session["subscriptions"].discard("alerts:*")

    # WHEN the client reconnects THEN it subscribes again only to the missing one
    await server.drop(server.connection(1))
    await eventually(lambda: len(server.connections) == 2 and client.connected, what="the reconnect")
    await eventually(lambda: "subscribe" in server.connection(2).actions, what="the re-subscribe")
    assert server.connection(2).frames[1]["streams"] == [{"stream_type": "alerts"}]


async def test_a_stream_reset_on_the_server_is_followed(server: FakeServer, make_client: Any) -> None:
    # GIVEN a client at seq 3 of a stream whose server-side counter then restarts
    client = make_client()
    await client.connect()
    await client.subscribe("market_data", symbol="AAPL")
    for _ in range(3):
        await server.publish()
    await take(client, 3)

    async def resume_after_reset(connection: FakeConnection, frame: protocol.Resume) -> None:
        server.history[STREAM].clear()
        await server.resume(connection, frame, heads={STREAM: 0})

    server.on_resume = resume_after_reset
    await server.drop(server.connection(1))
    await eventually(lambda: len(server.live()) == 1 and server.live()[0].number == 2, what="the reconnect")

    # WHEN the restarted stream publishes seq 1 THEN the application gets it
    await server.publish()
    assert seqs(await take(client, 1)) == [(STREAM, 1)]


async def test_a_head_read_before_the_old_connection_delivered_more_is_not_a_reset(
    server: FakeServer, make_client: Any
) -> None:
    # GIVEN a client replacing its connection, whose resume the server answers with the stream head it read
    # before one more message was sequenced, a message the still-open old connection delivers first
    async def resume_with_the_head_read_earlier(connection: FakeConnection, frame: protocol.Resume) -> None:
        connection.session = server.sessions[frame.session_token]
        head = len(server.history[STREAM])
        await server.publish()
        await eventually(lambda: client.last_seq.get(STREAM) == head + 1, what="the old connection's delivery")
        await server.resume(connection, frame, heads={STREAM: head})

    server.on_resume = resume_with_the_head_read_earlier
    client = make_client(max_connection_seconds=0.6, reconnect_at=0.5)
    await client.connect()
    await client.subscribe("market_data", symbol="AAPL")
    await server.publish()
    await server.publish()

    # WHEN the connection is replaced and one more message follows
    await eventually(lambda: server.connection(1).closed.is_set(), what="the old connection to be closed")
    await server.publish()

    # THEN the head below the client's latest seq is not taken for a reset: no message comes twice
    assert seqs(await take(client, 4)) == [(STREAM, 1), (STREAM, 2), (STREAM, 3), (STREAM, 4)]


async def test_a_token_provider_is_asked_for_every_connection(server: FakeServer, make_client: Any) -> None:
    issued: list[str] = []

    async def provider() -> str:
        issued.append(f"good-{len(issued) + 1}")
        return issued[-1]

    client = make_client(token_provider=provider)
    await client.connect()
    await server.drop(server.connection(1))
    await eventually(lambda: len(server.connections) == 2 and client.connected, what="the reconnect")

    assert [token for _at, token, _status in server.handshakes] == ["good-1", "good-2"]


async def test_a_refreshed_token_is_used_for_the_next_connection(server: FakeServer, make_client: Any) -> None:
    client = make_client(token="good-old")
    await client.connect()
    await client.refresh("good-new")
    await server.drop(server.connection(1))
    await eventually(lambda: len(server.connections) == 2 and client.connected, what="the reconnect")
    assert server.connection(2).token == "good-new"


async def test_a_refused_reconnect_ends_the_message_stream_with_auth_failed(
    server: FakeServer, make_client: Any
) -> None:
    client = make_client()
    await client.connect()
    server.accept = lambda token: False
    await server.drop(server.connection(1))
    with pytest.raises(AuthFailed):
        await asyncio.wait_for(anext(client), WAIT)
    with pytest.raises(AuthFailed):
        await client.ping()


async def test_requests_made_while_reconnecting_wait_for_the_new_connection(
    server: FakeServer, make_client: Any
) -> None:
    client = make_client(backoff_base=0.2, rng=lambda: 1.0)
    await client.connect()
    await server.drop(server.connection(1))
    await eventually(lambda: not client.connected, what="the drop to be noticed")

    pong = await client.ping()

    assert pong.message_type == MessageType.PONG
    assert server.connection(2).actions == ["resume", "ping"]


async def test_a_request_in_flight_when_the_connection_drops_raises_connection_lost(
    server: FakeServer, make_client: Any
) -> None:
    server.silent.add("joinRoom")
    client = make_client()
    await client.connect()
    join = asyncio.create_task(client.join_room("desk"))
    await eventually(lambda: bool(server.frames("joinRoom")), what="joinRoom frame")
    await server.drop(server.connection(1))
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(join, WAIT)


async def test_closing_ends_the_message_stream(server: FakeServer, make_client: Any) -> None:
    async with make_client() as client:
        assert client.connected
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(client), WAIT)
    await eventually(lambda: server.connection(1).closed.is_set(), what="the close")
    assert server.connection(1).ws.close_code == 1000


async def test_each_reconnect_resumes_with_the_token_the_previous_resume_returned(
    server: FakeServer, make_client: Any
) -> None:
    # GIVEN a client with a subscription, and a server whose session tokens resume once
    client = make_client()
    await client.connect()
    await client.subscribe("market_data", symbol="AAPL")
    hello_token = client.session_token

    # WHEN the connection drops three times in a row
    async def drop_and_reconnect(number: int) -> None:
        await server.drop(server.connection(number))
        expected = f"{hello_token}{'+' * number}"
        await eventually(lambda: len(server.connections) > number and client.connected, what="the reconnect")
        await eventually(lambda: client.session_token == expected, what="the fresh token")

    for number in (1, 2, 3):
        await drop_and_reconnect(number)

    # THEN every reconnect resumed the session (no fallback to hello), each with the latest token
    resumes = server.frames("resume")
    assert [frame["session_token"] for frame in resumes] == [hello_token, hello_token + "+", hello_token + "++"]
    assert server.frames("hello") == [server.connection(1).frames[0]]
    assert client.last_resume is not None and client.last_resume.session_resumed is True


async def test_the_fresh_session_token_is_kept_even_when_the_connection_drops_right_after_resumed(
    server: FakeServer, make_client: Any
) -> None:
    # GIVEN a client whose server-side session lost one of its two subscriptions
    client = make_client()
    await client.connect()
    await client.subscribe("market_data", symbol="AAPL")
    await client.subscribe("alerts")
    server.sessions["session-1"]["subscriptions"].discard("alerts:*")

    # ... and a server that drops the connection right after answering the first resume
    async def resume_then_drop(connection: FakeConnection, frame: protocol.Resume) -> None:
        server.on_resume = None
        await server.resume(connection, frame)
        await server.drop(connection)

    server.on_resume = resume_then_drop

    # WHEN the client reconnects, is dropped while re-subscribing, and reconnects again
    await server.drop(server.connection(1))
    await eventually(lambda: len(server.connections) >= 3 and client.connected, what="the second reconnect")

    # THEN the second resume used the token the first one returned (the first is spent), and resumed the session
    resumes = server.frames("resume")
    assert [frame["session_token"] for frame in resumes[:2]] == ["session-1", "session-1+"]
    assert server.frames("hello") == [server.connection(1).frames[0]]
    assert client.last_resume is not None and client.last_resume.session_resumed is True
