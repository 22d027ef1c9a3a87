"""The whole local stack through real sockets: gateway emulator, product handlers, moto, pumps.

Every test talks to the stack as a client or an upstream service would: WebSocket
clients over TCP, boto3 against moto's EventBridge and the Management API.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import websockets
from botocore.exceptions import ClientError

from local.signed_http import signed_request
from local.stack.local_stack import LocalStack
from local.stack.readiness import ready
from tests.e2e.conftest import Client, eventually

pytestmark = pytest.mark.e2e

Connect = Callable[..., Awaitable[Client]]


def with_event_id(event_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda message: message.get("payload", {}).get("event_id") == event_id


def tick(symbol: str = "AAPL", price: float = 101.25) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "price": price,
        "bid": round(price - 0.01, 2),
        "ask": round(price + 0.01, 2),
        "volume": 500.0,
        "timestamp": "2026-03-02T14:30:00Z",
    }


async def refused_status(local_stack: LocalStack, query: str) -> int:
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(f"{local_stack.websocket_url}{query}", open_timeout=10)
    return refused.value.response.status_code


# ---------------------------------------------------------------- readiness and auth


def test_ready_reports_moto_tables_and_queues(local_stack: LocalStack) -> None:
    answer = ready(local_stack.http_url)
    assert answer["status"] == "ready"
    assert answer["checks"] == {"started": "ok", "functions_endpoint": "ok", "tables": "ok", "queues": "ok"}


async def test_no_token_is_refused_with_401(local_stack: LocalStack) -> None:
    assert await refused_status(local_stack, "") == 401


async def test_a_bad_token_is_refused_with_403(local_stack: LocalStack, mint: Callable[..., str]) -> None:
    # The authorizer answers a refused token with a Deny policy (no Lambda error), which API Gateway turns into 403.
    assert await refused_status(local_stack, "?token=not-a-jwt") == 403
    forged = mint("mallory")[:-4] + "AAAA"
    assert await refused_status(local_stack, f"?token={forged}") == 403
    expired = mint("late", expires_in=-60)
    assert await refused_status(local_stack, f"?token={expired}") == 403


# ---------------------------------------------------------------- actions through the real gateway


async def test_hello_returns_the_client_id_session_token_and_limits(connect: Connect) -> None:
    client = await connect("alice")
    reply = await client.hello()
    assert reply["payload"]["user_id"] == "alice"
    assert reply["payload"]["limits"]["max_subscriptions"] == 50  # premium
    assert reply["target"] == client.client_id


async def test_subscribe_and_unsubscribe(connect: Connect) -> None:
    client = await connect("bob")
    await client.hello()
    subscribed = await client.request("subscribe", streams=[{"stream_type": "market_data", "symbol": "MSFT"}])
    assert subscribed["message_type"] == "subscribe"
    assert subscribed["payload"]["streams"] == ["market_data:MSFT"]
    unsubscribed = await client.request("unsubscribe", streams=[{"stream_type": "market_data", "symbol": "MSFT"}])
    assert unsubscribed["message_type"] == "unsubscribe"
    assert unsubscribed["payload"]["streams"] == ["market_data:MSFT"]


async def test_a_forbidden_stream_is_refused(connect: Connect) -> None:
    client = await connect("carol", permissions=["read:market_data"])
    refused = await client.request("subscribe", streams=[{"stream_type": "alerts"}])
    assert refused["message_type"] == "error"
    assert refused["payload"]["error_code"] == "FORBIDDEN"


async def test_join_and_leave_a_room(connect: Connect) -> None:
    client = await connect("dave")
    joined = await client.request("joinRoom", room="desk-join-leave")
    assert joined["message_type"] == "join_room"
    assert joined["payload"]["success"] is True
    left = await client.request("leaveRoom", room="desk-join-leave")
    assert left["message_type"] == "leave_room"
    again = await client.request("leaveRoom", room="desk-join-leave")
    assert again["payload"]["error_code"] == "NOT_IN_ROOM"


async def test_ping_gets_pong(connect: Connect) -> None:
    client = await connect("erin")
    pong = await client.request("ping")
    assert pong["message_type"] == "pong"
    assert abs(pong["payload"]["server_time"] - time.time()) < 60


async def test_unknown_action_and_bad_json_get_errors_on_the_same_connection(connect: Connect) -> None:
    client = await connect("frank")
    unknown = await client.request("placeOrder", symbol="AAPL")
    assert unknown["message_type"] == "error"
    assert unknown["payload"]["error_code"] == "UNKNOWN_ACTION"
    await client.send("{not json")
    invalid = await client.expect(lambda m: m.get("message_type") == "error", what="an INVALID_MESSAGE error")
    assert invalid["payload"]["error_code"] == "INVALID_MESSAGE"
    assert (await client.request("ping"))["message_type"] == "pong"  # still connected


async def test_json_nested_deeper_than_the_parser_gets_invalid_message_on_a_live_connection(connect: Connect) -> None:
    # GIVEN a client of the real stack
    client = await connect("deep-nester")
    # WHEN it sends a frame nested deeper than the JSON parser recurses, in one 32 KB frame
    await client.send("[" * 30000)
    # THEN the gateway routes it and the message handler answers INVALID_MESSAGE; the connection stays up
    invalid = await client.expect(lambda m: m.get("message_type") == "error", what="an INVALID_MESSAGE error")
    assert invalid["payload"]["error_code"] == "INVALID_MESSAGE"
    assert (await client.request("ping"))["message_type"] == "pong"


async def test_room_chat_between_two_clients(connect: Connect) -> None:
    # GIVEN two users in one room
    alice, bob = await connect("alice"), await connect("bob")
    await alice.request("joinRoom", room="desk-eu")
    bob_id = (await bob.request("joinRoom", room="desk-eu"))["payload"]["member_id"]
    # ... alice is told bob joined, by his pseudonym in the room (never his user id)
    await alice.expect(lambda m: m.get("message_type") == "join_room" and m["payload"].get("member_id") == bob_id)

    # WHEN alice sends a message
    echo = await alice.request("sendRoomMessage", room="desk-eu", message="buying the dip <b>now</b>")

    # THEN bob gets it from alice, verbatim, and alice gets her echo
    received = await bob.expect(lambda m: m.get("message_type") == "room_message", what="alice's message")
    assert received["payload"] == {"message": "buying the dip <b>now</b>", "member_id": echo["payload"]["member_id"]}
    assert "alice" not in json.dumps(received)
    assert received["room"] == "desk-eu"
    assert echo["message_type"] == "room_message"
    assert echo["payload"]["message"] == "buying the dip <b>now</b>"


# ---------------------------------------------------------------- Management API through boto3


async def test_post_after_the_client_closed_raises_gone_410(
    connect: Connect, management: Any, connection_row: Callable[[str], Any]
) -> None:
    client = await connect("gina")
    await client.hello()
    connection_id = client.client_id
    assert connection_id is not None
    management.post_to_connection(ConnectionId=connection_id, Data=b'{"hi": 1}')
    assert json.loads(await client.ws.recv()) == {"hi": 1}

    await client.ws.close()
    await eventually(lambda: connection_row(connection_id) is None, what="$disconnect to remove the row")

    with pytest.raises(management.exceptions.GoneException) as gone:
        management.post_to_connection(ConnectionId=connection_id, Data=b"late")
    assert gone.value.response["ResponseMetadata"]["HTTPStatusCode"] == 410


async def test_an_oversize_post_is_413_and_the_connection_survives(connect: Connect, management: Any) -> None:
    client = await connect("hank")
    await client.hello()
    with pytest.raises(ClientError) as too_large:
        management.post_to_connection(ConnectionId=client.client_id, Data=b"x" * (128 * 1024 + 1))
    assert too_large.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert (await client.request("ping"))["message_type"] == "pong"


async def test_an_oversize_client_frame_closes_with_1009(
    connect: Connect, connection_row: Callable[[str], Any]
) -> None:
    client = await connect("ivan")
    await client.hello()
    connection_id = str(client.client_id)
    # One unfragmented 40 KB frame: over API Gateway's 32 KB frame limit (though under 128 KB per message).
    await client.send(json.dumps({"action": "ping", "pad": "x" * 40_000}))
    assert await client.closed() == 1009
    await eventually(lambda: connection_row(connection_id) is None, what="$disconnect after 1009")


# ---------------------------------------------------------------- lifecycle: idle timeout, abrupt death


async def test_the_idle_timeout_closes_the_connection_and_disconnect_removes_its_row(
    local_stack: LocalStack, connect: Connect, connection_row: Callable[[str], Any]
) -> None:
    with local_stack.gateway_limits(idle_timeout=1.5):
        client = await connect("quiet")
        await client.hello()
        connection_id = client.client_id
        assert connection_id is not None and connection_row(connection_id) is not None
        started = time.monotonic()
        # THEN with no client message for 1.5 s, the gateway closes it ("Going away") ...
        assert await client.closed(timeout=10) == 1001
        assert time.monotonic() - started >= 1.0
    # ... and $disconnect removes the connection from DynamoDB.
    await eventually(lambda: connection_row(connection_id) is None, what="the row to disappear")


async def test_abrupt_client_death_still_runs_disconnect(
    connect: Connect, connection_row: Callable[[str], Any]
) -> None:
    client = await connect("crash")
    await client.hello()
    await client.request("subscribe", streams=[{"stream_type": "market_data", "symbol": "TSLA"}])
    connection_id = client.client_id
    assert connection_id is not None and connection_row(connection_id) is not None
    # The TCP connection vanishes without a close frame, as when a laptop lid shuts.
    client.ws.transport.abort()
    await eventually(lambda: connection_row(connection_id) is None, what="$disconnect after the socket died")


# ---------------------------------------------------------------- upstream events to clients


async def test_a_market_data_event_reaches_a_subscribed_client_with_stream_and_seq(
    connect: Connect, publish: Callable[[str, dict[str, Any]], str]
) -> None:
    # GIVEN a client subscribed to AAPL and one subscribed to MSFT
    aapl, msft = await connect("trader"), await connect("other")
    await aapl.request("subscribe", streams=[{"stream_type": "market_data", "symbol": "AAPL"}])
    await msft.request("subscribe", streams=[{"stream_type": "market_data", "symbol": "MSFT"}])

    # WHEN the market data service publishes two AAPL ticks through EventBridge
    first_id = publish("MarketData", tick(price=101.25))
    second_id = publish("MarketData", tick(price=101.5))

    # THEN they arrive as market_data:AAPL with consecutive seqs (in the order they entered their FIFO group,
    # which the pipe's concurrent pollers may make differ from the publish order: ADR 0002)
    def market_data(m: dict[str, Any]) -> bool:
        return m.get("message_type") == "market_data"

    first = await aapl.expect(lambda m: market_data(m) and m["payload"]["event_id"] == first_id, what="tick 1")
    second = await aapl.expect(lambda m: market_data(m) and m["payload"]["event_id"] == second_id, what="tick 2")
    assert first["stream"] == second["stream"] == "market_data:AAPL"
    assert first["source"] == "quanttrade.market-data"
    assert first["payload"]["price"] == 101.25
    assert isinstance(first["seq"], int) and first["seq"] >= 1
    assert abs(second["seq"] - first["seq"]) == 1
    # ... and not to the MSFT subscriber
    published_msft = publish("MarketData", tick("MSFT", 400.0))
    got = await msft.expect(lambda m: market_data(m), what="the MSFT tick")
    assert got["payload"]["event_id"] == published_msft


async def test_resume_after_a_reconnect_replays_what_was_missed(
    connect: Connect, publish: Callable[[str, dict[str, Any]], str]
) -> None:
    # GIVEN a subscribed client that saw one GOOGL tick, then lost its connection
    first, witness = await connect("resumer"), await connect("witness")
    await first.hello()
    for client in (first, witness):
        await client.request("subscribe", streams=[{"stream_type": "market_data", "symbol": "GOOGL"}])
    seen_id = publish("MarketData", tick("GOOGL", 150.0))
    seen = await first.expect(lambda m: m.get("payload", {}).get("event_id") == seen_id, what="the first tick")
    await first.ws.close()

    # ... and two ticks went out while it was away (the witness proves fan-out has sequenced them)
    missed_ids = [publish("MarketData", tick("GOOGL", 150.0 + i)) for i in (1, 2)]
    for missed_id in missed_ids:
        await witness.expect(with_event_id(missed_id), what="a missed tick")

    # WHEN it reconnects and resumes with the last seq it saw
    second = await connect("resumer")
    resumed = await second.request(
        "resume", session_token=first.session_token, last_seq={"market_data:GOOGL": seen["seq"]}
    )

    # THEN the missed ticks are replayed in order and the subscription is back
    assert resumed["message_type"] == "resumed", resumed
    assert resumed["payload"]["recovered"] is True
    assert resumed["payload"]["streams"]["market_data:GOOGL"]["replayed"] == 2
    assert "market_data:GOOGL" in resumed["payload"]["subscriptions"]
    replayed = [await second.expect(with_event_id(i), what="a replayed tick") for i in missed_ids]
    assert sorted(m["seq"] for m in replayed) == [seen["seq"] + 1, seen["seq"] + 2]  # in either order (ADR 0002)

    # ... and live ticks follow. Fan-out caches a stream's audience for subscriber_cache_seconds, so the
    # restored subscription is seen by the first tick published after that cache turns over.
    async def live_tick() -> dict[str, Any] | None:
        live_id = publish("MarketData", tick("GOOGL", 160.0))
        try:
            return await second.expect(lambda m: m.get("payload", {}).get("event_id") == live_id, timeout=0.5)
        except AssertionError:
            return None

    live = await eventually(live_tick, timeout=10, what="a live tick after the resume")
    assert live["seq"] > seen["seq"] + 2


async def test_admin_routes_answer_through_the_gateway(local_stack: LocalStack, connect: Connect) -> None:
    client = await connect("admin-watched")
    await client.hello()
    await client.request("subscribe", streams=[{"stream_type": "alerts"}])

    def get(path: str) -> Any:
        request = signed_request("GET", f"{local_stack.http_url}{path}", region=local_stack.config.region)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    info = await asyncio.to_thread(get, f"/admin/connections/{client.client_id}")
    assert info["user_id"] == "admin-watched"
    subscriptions = await asyncio.to_thread(get, f"/admin/connections/{client.client_id}/subscriptions")
    assert [s["stream_type"] for s in subscriptions["subscriptions"]] == ["alerts"]
    stats = await asyncio.to_thread(get, "/admin/stats")
    assert stats["connections"] >= 1 and stats["subscriptions"] >= 1
    # The local-only counters: each function's, as CloudWatch would show them, with the environments shut down
    # for idleness
    functions = (await asyncio.to_thread(get, "/local/stats"))["functions"]
    assert {name: counters["reaped"] for name, counters in functions.items()} == {
        name: function.reaped for name, function in local_stack.functions.items()
    }
    assert sum(counters["cold_starts"] for counters in functions.values()) >= 1


# ---------------------------------------------------------------- dashboard files and the command line


def test_the_dashboard_is_served_on_a_plain_get_of_the_websocket_path(local_stack: LocalStack) -> None:
    with urllib.request.urlopen(local_stack.dashboard_url, timeout=10) as response:
        page = response.read().decode()
        assert response.headers["Content-Type"].startswith("text/html")
    assert '<script src="app.js"></script>' in page
    with urllib.request.urlopen(f"{local_stack.http_url}/app.js", timeout=10) as response:
        script = response.read().decode()
    with urllib.request.urlopen(f"{local_stack.http_url}/style.css", timeout=10) as response:
        assert response.status == 200
    # Everything shown goes through textContent: no markup sinks in the script at all.
    for sink in (".innerHTML =", ".outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script


async def test_cli_publish_reaches_a_listener_and_cli_stats_reads_the_admin_api(
    local_stack: LocalStack, connect: Connect, capsys: pytest.CaptureFixture[str]
) -> None:
    from local.cli.main import main

    client = await connect("cli-watcher")
    await client.request("subscribe", streams=[{"stream_type": "system_status"}])
    detail = json.dumps({"service": "order-router", "status": "degraded", "message": "slow fills"})
    endpoint, bus = local_stack.aws_endpoint_url, local_stack.event_bus_name
    publish_args = ["publish", "SystemStatus", detail, "--endpoint", endpoint, "--bus", bus]
    assert await asyncio.to_thread(main, publish_args) == 0
    event_id = json.loads(capsys.readouterr().out)["EventId"]
    status = await client.expect(lambda m: m.get("payload", {}).get("event_id") == event_id, what="the CLI event")
    assert status["message_type"] == "system_status"
    assert status["stream"] == "system_status"

    assert await asyncio.to_thread(main, ["stats", "--url", local_stack.http_url]) == 0
    assert json.loads(capsys.readouterr().out)["connections"] >= 1
    invalid = ["publish", "MarketData", '{"symbol": "AAPL"}', "--endpoint", endpoint, "--bus", bus]
    with pytest.raises(SystemExit, match="would dead-letter"):
        await asyncio.to_thread(main, invalid)
