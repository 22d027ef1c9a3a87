"""The Python client against the real local stack: gateway emulator, product handlers, moto, pumps.

Upstream events go in through boto3 `events.put_events` to the stack's moto,
as the upstream services send them; the client sees them only through the
gateway. What these tests hold the client (and the server) to: whatever
happens to the connection, the application receives every message of its
streams once and in order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import pytest
from quanttrade_client import (
    AuthFailed,
    Forbidden,
    InvalidMessage,
    InvalidRoom,
    Message,
    MessageTooLarge,
    NotInRoom,
    QuantTradeClient,
    QuantTradeError,
    RateLimited,
    RoomLimit,
    SubscriptionLimit,
    UnknownAction,
)

from local.stack.local_stack import LocalStack
from tests.e2e.conftest import eventually

pytestmark = pytest.mark.e2e

Publish = Callable[[str, dict[str, Any]], str]
DELIVERY = 20.0  # seconds for an event to travel EventBridge -> SQS -> fan-out -> gateway on a busy 2-core machine


def new_symbol() -> str:
    """A symbol no other test uses: the stack and its streams live for the whole session."""
    return f"T{uuid.uuid4().hex[:10].upper()}"


class Inbox:
    """Everything the application gets from `async for message in client`, collected as it arrives."""

    def __init__(self, client: QuantTradeClient) -> None:
        self.messages: list[Message] = []
        self.ended: BaseException | None = None
        self._task = asyncio.create_task(self._collect(client))

    async def _collect(self, client: QuantTradeClient) -> None:
        try:
            async for message in client:
                self.messages.append(message)
        except QuantTradeError as error:
            self.ended = error

    def data(self, stream: str) -> list[Message]:
        return [m for m in self.messages if m.stream == stream]

    async def wait_for(self, stream: str, count: int, timeout: float = DELIVERY) -> list[Message]:
        await eventually(
            lambda: len(self.data(stream)) >= count, timeout, f"{count} messages of {stream}; have {self.seqs(stream)}"
        )
        return self.data(stream)

    def seqs(self, stream: str) -> list[int]:
        return [m.seq or 0 for m in self.data(stream)]


class Market:
    """An upstream market data service for one symbol: numbered ticks, published through EventBridge."""

    def __init__(self, publish: Publish, local_stack: LocalStack) -> None:
        self.symbol = new_symbol()
        self.stream = f"market_data:{self.symbol}"
        self.published = 0
        self._publish = publish
        self._dynamodb = local_stack.client("dynamodb")
        assert local_stack.settings is not None
        self._streams_table = local_stack.settings.streams_table
        self._subscriptions_table = local_stack.settings.subscriptions_table

    async def tick(self, count: int = 1) -> None:
        for _ in range(count):
            self.published += 1
            detail = {
                "symbol": self.symbol,
                "price": 100.0 + self.published,  # the tick's number, so order is checkable end to end
                "volume": 10.0,
                "timestamp": datetime.now(UTC).isoformat(),
            }
            await asyncio.to_thread(self._publish, "MarketData", detail)

    def describe(self, received: list[Message]) -> str:
        """What arrived, as (seq, tick number) pairs, for an assertion message."""
        return f"{self.stream}: {[(m.seq, int(m.payload['price']) - 100) for m in received]}"

    async def unsubscribed(self) -> bool:
        """Whether no connection is subscribed to this symbol any more."""
        answer = await asyncio.to_thread(
            self._dynamodb.query,
            TableName=self._subscriptions_table,
            KeyConditionExpression="stream_key = :key",
            ExpressionAttributeValues={":key": {"S": self.stream}},
            ConsistentRead=True,
        )
        return not answer.get("Items")

    async def sequenced(self, count: int, timeout: float = DELIVERY) -> None:
        """Wait until fan-out has given `count` ticks their seq: they are in the stream's history for replay."""

        def head() -> int:
            item = self._dynamodb.get_item(
                TableName=self._streams_table,
                Key={"stream": {"S": self.stream}, "seq": {"N": "0"}},
                ConsistentRead=True,
            ).get("Item")
            return int(item["last_seq"]["N"]) if item else 0

        async def reached() -> bool:
            return await asyncio.to_thread(head) >= count

        await eventually(reached, timeout, f"{count} ticks of {self.stream} sequenced")


def every_tick_once_in_seq_order(messages: list[Message], published: int) -> bool:
    """Seqs 1..published in order, and each tick once. Seq order is the order the ticks entered their FIFO
    group, which the pipe's concurrent pollers may make differ from the publish order (ADR 0002)."""
    prices = sorted(float(m.payload["price"]) for m in messages)
    return [m.seq for m in messages] == list(range(1, published + 1)) and prices == [
        101.0 + n for n in range(published)
    ]


@pytest.fixture
async def clients() -> AsyncIterator[list[QuantTradeClient]]:
    made: list[QuantTradeClient] = []
    yield made
    for client in made:
        await client.close()


@pytest.fixture
def make_client(
    local_stack: LocalStack, mint: Callable[..., str], clients: list[QuantTradeClient]
) -> Callable[..., QuantTradeClient]:
    def make(user: str = "client-e2e", **options: Any) -> QuantTradeClient:
        if "token_provider" not in options:
            options.setdefault("token", mint(user))
        options.setdefault("backoff_base", 0.05)
        options.setdefault("backoff_max", 0.5)
        options.setdefault("request_timeout", 10.0)
        client = QuantTradeClient(local_stack.websocket_url, **options)
        clients.append(client)
        return client

    return make


# ---------------------------------------------------------------- the connection goes, the messages stay


async def test_the_client_survives_the_gateway_closing_it_at_the_maximum_duration(
    local_stack: LocalStack, mint: Callable[..., str], publish: Publish, make_client: Callable[..., QuantTradeClient]
) -> None:
    market = Market(publish, local_stack)
    outage_published = asyncio.Event()
    connections = 0

    async def token_provider() -> str:
        nonlocal connections
        connections += 1
        if connections == 2:
            # Hold the first reconnect until the test has published into the outage.
            await outage_published.wait()
        return mint("bot-max-duration")

    # GIVEN a gateway that closes connections after 4 s, and a client that does not replace them itself
    with local_stack.gateway_limits(max_connection_seconds=4.0):
        client = make_client(token_provider=token_provider)
        await client.connect()
        inbox = Inbox(client)
        await client.subscribe("market_data", symbol=market.symbol)
        await market.tick(3)
        await inbox.wait_for(market.stream, 3)

        # WHEN the gateway closes the connection and three ticks are published while the client is away
        await eventually(lambda: not client.connected, 15.0, "the gateway to close the connection")
        await market.tick(3)
        await market.sequenced(6)
        outage_published.set()

        # and three more once it is back
        await eventually(lambda: client.connected, 15.0, "the reconnect")
        await market.tick(3)
        received = await inbox.wait_for(market.stream, 9)

    # THEN the application got all nine, once each, in order: three of them replayed by the resume
    assert every_tick_once_in_seq_order(received, 9), market.describe(received)
    assert inbox.seqs(market.stream) == sorted(set(inbox.seqs(market.stream)))
    assert client.reconnects >= 1 and connections >= 2
    assert client.last_resume is not None and client.last_resume.session_resumed
    assert inbox.ended is None


async def test_the_client_replaces_its_connection_before_the_gateway_cut_off(
    local_stack: LocalStack, publish: Publish, make_client: Callable[..., QuantTradeClient]
) -> None:
    market = Market(publish, local_stack)

    # GIVEN a gateway with a 6 s maximum and a client told so, replacing its connection at half of it
    with local_stack.gateway_limits(max_connection_seconds=6.0):
        client = make_client(max_connection_seconds=6.0, reconnect_at=0.5)
        await client.connect()
        inbox = Inbox(client)
        await client.subscribe("market_data", symbol=market.symbol)

        # WHEN ticks flow across the replacement
        always_connected = True
        while client.reconnects < 1 or market.published < 5:
            await market.tick()
            always_connected = always_connected and client.connected
            await asyncio.sleep(0.2)
            assert market.published < 100, "the client never replaced its connection"
        await market.tick(3)
        received = await inbox.wait_for(market.stream, market.published)

    # THEN there was never a moment without a connection, and every tick arrived once, in order
    assert always_connected
    assert every_tick_once_in_seq_order(received, market.published), market.describe(received)
    assert client.last_resume is not None and client.last_resume.session_resumed


async def test_the_client_survives_a_restart_of_the_gateway(
    local_stack: LocalStack, publish: Publish, make_client: Callable[..., QuantTradeClient]
) -> None:
    market = Market(publish, local_stack)
    client = make_client(user="bot-restart")
    await client.connect()
    inbox = Inbox(client)
    await client.subscribe("market_data", symbol=market.symbol)
    await market.tick(3)
    await inbox.wait_for(market.stream, 3)

    # WHEN the gateway goes down (every connection closed with 1001, $disconnect for each),
    # three ticks are published while it is down, and it comes back on the same address
    await run_on_stack(local_stack, stop_gateway(local_stack))
    try:
        await eventually(lambda: not client.connected, 10.0, "the client to notice the gateway is gone")
        await eventually(market.unsubscribed, 10.0, "$disconnect to remove the subscription")
        # Fan-out may still hold the audience it read before the $disconnect, for a documented
        # subscriber_cache_seconds. A post to the stopped gateway fails (it is not a 410), which holds
        # the whole FIFO group back for the visibility timeout; publish only once that audience has expired.
        assert local_stack.settings is not None
        await asyncio.sleep(local_stack.settings.subscriber_cache_seconds)
        await market.tick(3)
        await market.sequenced(6)
    finally:
        await run_on_stack(local_stack, start_gateway(local_stack))
    await eventually(lambda: client.connected, 15.0, "the reconnect to the restarted gateway")
    await market.tick(3)

    # THEN the session was resumed from the store and every tick arrived once, in order
    received = await inbox.wait_for(market.stream, 9)
    assert every_tick_once_in_seq_order(received, 9), market.describe(received)
    assert client.last_resume is not None and client.last_resume.session_resumed
    assert client.last_resume.streams[market.stream]["recovered"] is True


async def run_on_stack(local_stack: LocalStack, work: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine on the loop that serves the stack (the conftest runs it in a thread of its own)."""
    with warnings.catch_warnings():
        # aiohttp deprecates Application.loop, but it is the one public way to that loop: LocalStack has no
        # gateway restart of its own and the conftest does not expose its BackgroundStack.
        warnings.simplefilter("ignore", DeprecationWarning)
        loop = local_stack.gateway.app.loop  # type: ignore[union-attr]
    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, loop))


async def stop_gateway(local_stack: LocalStack) -> None:
    gateway = local_stack.gateway
    assert gateway is not None
    # Come back on the same port, as a restarted API Gateway keeps its URL (the stack was started on port 0).
    gateway.config = dataclasses.replace(gateway.config, port=gateway.port)
    await gateway.stop()


async def start_gateway(local_stack: LocalStack) -> None:
    gateway = local_stack.gateway
    assert gateway is not None
    await gateway.start()


# ---------------------------------------------------------------- typed errors through the real stack


async def test_a_refused_token_raises_auth_failed(make_client: Callable[..., QuantTradeClient]) -> None:
    with pytest.raises(AuthFailed):
        await make_client(token="not-a-jwt").connect()


async def within_rate(request: Callable[[], Awaitable[Any]]) -> Any:
    """The request, sent again in the next rate window when the connection's budget for this second is spent."""
    for _ in range(5):
        try:
            return await request()
        except RateLimited:
            await asyncio.sleep(1.0)  # the budget is per second: the next window has room again
    return await request()


async def test_typed_errors_from_the_real_handlers(
    mint: Callable[..., str], make_client: Callable[..., QuantTradeClient]
) -> None:
    # GIVEN a free-level user who may join rooms and send to them but not read predictions
    permissions = ["read:market_data", "rooms:join", "rooms:send"]
    client = make_client(token=mint("errors-user", permissions=permissions, subscription_level="free"))
    await client.connect()
    room = f"room-{uuid.uuid4().hex[:8]}"

    with pytest.raises(AuthFailed):
        await client.refresh("not-a-jwt")
    with pytest.raises(Forbidden):
        await client.subscribe("predictions", symbol="AAPL")
    with pytest.raises(InvalidMessage):
        await client.subscribe("market_data", symbol="AAPL", filters={"no_such_filter": "1"})
    with pytest.raises(UnknownAction):
        await client.request("dance")
    with pytest.raises(InvalidRoom):
        await client.join_room("not a room!")
    with pytest.raises(NotInRoom):
        await client.leave_room(room)
    await client.join_room(room)
    with pytest.raises(MessageTooLarge):
        await client.send_room_message(room, "x" * 5000)

    # free level: 5 subscriptions (subscribe and joinRoom weigh 10 of the 100 rate units a second: pace them)
    assert client.limits["max_subscriptions"] == 5
    for _ in range(5):
        await within_rate(lambda: client.subscribe("market_data", symbol=new_symbol()))
    with pytest.raises(SubscriptionLimit) as limit:
        await within_rate(lambda: client.subscribe("market_data", symbol=new_symbol()))
    assert limit.value.code == "SUBSCRIPTION_LIMIT" and "5" in limit.value.message

    # 10 rooms per connection, one joined already
    for _ in range(client.limits["max_rooms"] - 1):
        await within_rate(lambda: client.join_room(f"room-{uuid.uuid4().hex[:8]}"))
    with pytest.raises(RoomLimit):
        await within_rate(lambda: client.join_room(f"room-{uuid.uuid4().hex[:8]}"))

    # and the connection is still fine after all that (a ping right after the joins may find this
    # second's rate budget spent: the server drops it with a RATE_LIMIT warning, and the next window answers)
    assert (await within_rate(client.ping)).message_type == "pong"


async def test_flooding_the_server_raises_rate_limited(make_client: Callable[..., QuantTradeClient]) -> None:
    # GIVEN a client with a short request timeout
    client = make_client(user="flooder", request_timeout=5.0)
    await client.connect()
    inbox = Inbox(client)

    # WHEN it sends frames in bursts of 300: the limit counts frames per second as the handlers process
    # them, and how many a second that is depends on the machine, so burst until the limit is hit
    results: list[Any] = []
    for _ in range(5):
        results = await asyncio.gather(*(client.ping() for _ in range(300)), return_exceptions=True)
        if any(isinstance(r, RateLimited) for r in results):
            break
        await eventually(lambda: client.connected, 15.0, "a live connection")

    # THEN some requests fail as RateLimited, and the warnings reach the application too
    rate_limited = [r for r in results if isinstance(r, RateLimited)]
    assert rate_limited, {type(r).__name__ for r in results}
    assert all(r.code == "RATE_LIMIT" for r in rate_limited)
    await eventually(
        lambda: any(m.is_error and m.payload.get("error_code") == "RATE_LIMIT" for m in inbox.messages),
        10.0,
        "a RATE_LIMIT warning",
    )
    # and the client is usable again once the second has passed (after a reconnect if the server closed it)
    await eventually(lambda: client.connected, 15.0, "a live connection")
    assert (await client.ping()).message_type == "pong"
