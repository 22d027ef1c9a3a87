"""Each Lambda handler with API Gateway-shaped events, against moto DynamoDB and an in-memory gateway."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

import handlers.admin
import handlers.connect
import handlers.delivery
import handlers.disconnect
import handlers.fanout
import handlers.message
import handlers.sweeper
from local.fakes import InMemoryGateway
from quanttrade_ws import topology
from quanttrade_ws.auth import ALL_PERMISSIONS, Identity
from quanttrade_ws.config import Settings
from quanttrade_ws.fanout import DEADLINE_RESERVE_SECONDS
from quanttrade_ws.models import Connection
from quanttrade_ws.runtime import Runtime
from quanttrade_ws.store.ports import JoinLimits
from tests.integration import events_builder as eb
from tests.lambda_events import DOMAIN, LambdaContext, request_context
from tests.provision import provision


@pytest.fixture
def rt(settings: Settings, aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """The handlers' runtime on moto, with the gateway replaced by the in-memory fake."""
    settings, _ = provision(aws["dynamodb"], aws["sqs"], aws["events"], settings)
    runtime = Runtime(settings, dynamodb=aws["dynamodb"], gateway=InMemoryGateway())
    modules = (handlers.connect, handlers.disconnect, handlers.message, handlers.sweeper, handlers.admin)
    for module in (*modules, handlers.fanout, handlers.delivery):
        monkeypatch.setattr(module, "runtime", lambda: runtime)
    return runtime


def authorizer_context(identity: Identity) -> dict[str, Any]:
    """How API Gateway hands the authorizer's context to $connect: flattened, with principalId."""
    return {"principalId": identity.user_id, "integrationLatency": 12, **identity.to_authorizer_context()}


def connect_event(connection_id: str, identity: Identity, connected_at: int | None = None) -> dict[str, Any]:
    context = request_context(connection_id, "$connect", "CONNECT", authorizer=authorizer_context(identity))
    if connected_at is not None:
        context["connectedAt"] = connected_at
    return {
        "headers": {"Host": DOMAIN, "Sec-WebSocket-Key": "x", "Sec-WebSocket-Version": "13"},
        "multiValueHeaders": {},
        "requestContext": context,
        "isBase64Encoded": False,
    }


def disconnect_event(connection_id: str) -> dict[str, Any]:
    return {
        "headers": {"Host": DOMAIN},
        "requestContext": request_context(
            connection_id, "$disconnect", "DISCONNECT", disconnectStatusCode=1001, disconnectReason="Going away"
        ),
        "isBase64Encoded": False,
    }


def message_event(
    connection_id: str, body: Any, route_key: str | None = None, base64_body: bool = False
) -> dict[str, Any]:
    text = body if isinstance(body, str) else json.dumps(body)
    if route_key is None:
        try:
            action = json.loads(text).get("action")
        except (ValueError, AttributeError):
            action = None
        route_key = action if action in {"hello", "subscribe", "joinRoom", "ping"} else "$default"
    return {
        "requestContext": request_context(connection_id, route_key, "MESSAGE", messageId=f"m-{connection_id}"),
        "body": base64.b64encode(text.encode()).decode() if base64_body else text,
        "isBase64Encoded": base64_body,
    }


def scheduled_event() -> dict[str, Any]:
    return {
        "version": "0",
        "id": "sched-1",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": "2027-01-01T00:00:00Z",
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/quanttrade-sweeper"],
        "detail": {},
    }


def admin_event(route_key: str, path: str, path_parameters: dict[str, str] | None = None) -> dict[str, Any]:
    """An HTTP API (payload 2.0) event, IAM-authorised."""
    return {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"host": "admin.example.com"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "admin1234",
            "http": {
                "method": route_key.split(" ", 1)[0],
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "198.51.100.1",
            },
            "requestId": "admin-req",
            "routeKey": route_key,
            "stage": "$default",
        },
        "pathParameters": path_parameters,
        "isBase64Encoded": False,
    }


def identity(user_id: str = "user-1", **kwargs: Any) -> Identity:
    values: dict[str, Any] = {
        "permissions": frozenset(ALL_PERMISSIONS),
        "subscription_level": "premium",
        "token_expires_at": int(time.time()) + 3600,
    }
    values.update(kwargs)
    return Identity(user_id=user_id, **values)


def open_connection(rt: Runtime, connection_id: str, who: Identity | None = None) -> None:
    rt.gateway.connect(connection_id)
    result = handlers.connect.handler(connect_event(connection_id, who or identity()), LambdaContext())
    assert result["statusCode"] == 200


def send(rt: Runtime, connection_id: str, body: Any, **kwargs: Any) -> dict[str, Any]:
    result = handlers.message.handler(message_event(connection_id, body, **kwargs), LambdaContext())
    assert result == {"statusCode": 200}
    return rt.gateway.messages(connection_id)[-1]


# ---------------------------------------------------------------- fan-out and delivery


def test_the_fanout_and_delivery_handlers_post_within_the_invocations_remaining_time(rt: Runtime) -> None:
    # GIVEN a subscriber of AAPL, and a gateway that records the deadline it is given
    open_connection(rt, "c1")
    send(rt, "c1", {"action": "subscribe", "streams": [{"stream_type": "market_data", "symbol": "AAPL"}]})
    gateway = rt.gateway
    assert isinstance(gateway, InMemoryGateway)
    chunk = json.dumps({"data": '{"n":1}', "connections": ["c1"], "stream": "market_data:AAPL", "seq": 1})
    # WHEN a tick reaches the fan-out handler and a chunk the delivery handler, with 20 s of the invocation left
    before = time.monotonic()
    context = LambdaContext(remaining_ms=20_000)
    fanned = handlers.fanout.handler({"Records": eb.records(eb.market_data("AAPL"))}, context)
    delivered = handlers.delivery.handler({"Records": [eb.sqs_record(chunk, group="market_data:AAPL#1")]}, context)
    after = time.monotonic()
    # THEN both were delivered, each post_many told to be done 20 s after its invocation began, less the reserve
    assert fanned == delivered == {"batchItemFailures": []}
    tick, chunk_message = gateway.messages("c1")[-2:]
    assert (tick["stream"], chunk_message) == ("market_data:AAPL", {"n": 1})
    assert len(gateway.deadlines) == 2
    for deadline in gateway.deadlines:
        assert deadline is not None
        began = deadline - (20.0 - DEADLINE_RESERVE_SECONDS)
        assert before <= began <= after


# ---------------------------------------------------------------- $connect


def test_connect_records_the_authorizer_identity(rt: Runtime) -> None:
    # GIVEN a $connect event carrying the authorizer's context
    who = identity("trader-9", client_type="mobile", subscription_level="basic", permissions=frozenset({"rooms:join"}))
    # WHEN the connect handler runs
    result = handlers.connect.handler(connect_event("conn-1=", who, connected_at=1_798_761_600_123), LambdaContext())
    # THEN it answers 200 and the row holds that identity and API Gateway's connectedAt
    assert result == {"statusCode": 200}
    connection = rt.store.get_connection("conn-1=")
    assert connection.identity == who
    assert connection.connected_at == 1_798_761_600_123


def test_connect_over_the_user_rate_is_refused_with_429(rt: Runtime) -> None:
    # GIVEN time held still (the limit counts the last 60 seconds) for every part the runtime builds
    rt.clock = lambda: 1_800_000_000.0
    who = identity("burst")
    limit = rt.settings.limits.connections_per_minute

    def connect_and_close(i: int) -> int:
        # each closes again, so the open-connection cap does not answer first
        status = handlers.connect.handler(connect_event(f"c{i}", who), LambdaContext())["statusCode"]
        rt.service.disconnect(f"c{i}")
        return int(status)

    # WHEN one more than the limit connect
    statuses = [{"statusCode": connect_and_close(i)} for i in range(limit + 1)]
    # THEN the last is refused with 429 and not recorded
    assert [s["statusCode"] for s in statuses[:-1]] == [200] * limit
    assert statuses[-1]["statusCode"] == 429
    assert rt.store.get_connection(f"c{limit}") is None


# ---------------------------------------------------------------- $default and action routes


def test_message_handler_answers_through_the_gateway(rt: Runtime) -> None:
    open_connection(rt, "c1")
    reply = send(rt, "c1", {"action": "hello", "request_id": "h"})
    assert reply["message_type"] == "connect"
    assert reply["payload"]["client_id"] == "c1"
    assert reply["request_id"] == "h"
    assert send(rt, "c1", {"action": "ping"})["message_type"] == "pong"


def test_message_handler_decodes_base64_bodies(rt: Runtime) -> None:
    open_connection(rt, "c1")
    assert send(rt, "c1", {"action": "ping", "request_id": "b64"}, base64_body=True)["request_id"] == "b64"


@pytest.mark.parametrize("body", ["not json", "", None, "[]", '{"action": 1}'])
def test_default_route_answers_bad_frames_with_invalid_message(rt: Runtime, body: Any) -> None:
    open_connection(rt, "c1")
    event = message_event("c1", "", route_key="$default")
    event["body"] = body
    assert handlers.message.handler(event, LambdaContext()) == {"statusCode": 200}
    reply = rt.gateway.messages("c1")[-1]
    assert reply["message_type"] == "error"
    assert reply["payload"]["error_code"] == "INVALID_MESSAGE"


def test_default_route_answers_unknown_actions(rt: Runtime) -> None:
    open_connection(rt, "c1")
    reply = send(rt, "c1", {"action": "teleport"}, route_key="$default")
    assert reply["payload"]["error_code"] == "UNKNOWN_ACTION"


def test_message_handler_enforces_token_expiry(rt: Runtime) -> None:
    open_connection(rt, "c1", identity(token_expires_at=int(time.time()) - 10))
    reply = send(rt, "c1", {"action": "ping"})
    assert reply["payload"]["error_code"] == "AUTH_FAILED"
    assert rt.gateway.closed == ["c1"]


def test_room_message_through_handlers(rt: Runtime) -> None:
    open_connection(rt, "a")
    open_connection(rt, "b", identity("user-b"))
    member_id = send(rt, "a", {"action": "joinRoom", "room": "desk"})["payload"]["member_id"]
    send(rt, "b", {"action": "joinRoom", "room": "desk"})
    send(rt, "a", {"action": "sendRoomMessage", "room": "desk", "message": "hi"}, route_key="sendRoomMessage")
    message = rt.gateway.messages("b")[-1]
    # The runtime wires the member pseudonyms: the sender appears by its member id, not its connection id
    assert (message["message_type"], message["source"], message["payload"]["message"]) == (
        "room_message",
        member_id,
        "hi",
    )


# ---------------------------------------------------------------- $disconnect


def test_disconnect_removes_everything_and_is_idempotent(rt: Runtime) -> None:
    open_connection(rt, "a")
    send(rt, "a", {"action": "joinRoom", "room": "desk"})
    send(rt, "a", {"action": "subscribe", "streams": [{"stream_type": "alerts"}]})
    # WHEN $disconnect arrives (twice, as API Gateway may deliver it)
    assert handlers.disconnect.handler(disconnect_event("a"), LambdaContext()) == {"statusCode": 200}
    assert handlers.disconnect.handler(disconnect_event("a"), LambdaContext()) == {"statusCode": 200}
    # THEN the connection, memberships and subscriptions are gone
    assert rt.store.get_connection("a") is None
    assert rt.store.room_members("desk") == []
    assert rt.store.subscribers("alerts:*") == []


def test_disconnect_of_an_unknown_connection(rt: Runtime) -> None:
    assert handlers.disconnect.handler(disconnect_event("never-seen"), LambdaContext()) == {"statusCode": 200}


# ---------------------------------------------------------------- sweeper


def test_sweeper_removes_connections_left_behind(rt: Runtime) -> None:
    # GIVEN a row whose $disconnect never ran (the gateway no longer knows it) and an idle but open one
    long_ago = int(time.time()) - rt.settings.idle_timeout_seconds - 60
    for connection_id in ("left-behind", "idle-but-open"):
        rt.store.open_connection(
            Connection(connection_id, identity(), connected_at=long_ago * 1000, last_activity=long_ago), cap=10
        )
    rt.store.join_room("desk", "left-behind", "user-1", JoinLimits(capacity=1000, room_limit=10))
    rt.gateway.connect("idle-but-open")
    open_connection(rt, "active")
    # WHEN the scheduled sweeper runs
    result = handlers.sweeper.handler(scheduled_event(), LambdaContext())
    # THEN only the vanished connection and what it owned are removed
    assert result == {"removed": 1}
    assert rt.store.get_connection("left-behind") is None
    assert rt.store.room_members("desk") == []
    assert rt.store.get_connection("idle-but-open") is not None
    assert rt.store.get_connection("active") is not None


# ---------------------------------------------------------------- admin


def admin(route_key: str, path: str, **path_parameters: str) -> tuple[int, Any]:
    result = handlers.admin.handler(admin_event(route_key, path, path_parameters or None), LambdaContext())
    headers = {name.lower(): value for name, value in result["headers"].items()}
    assert headers["content-type"] == "application/json"
    return result["statusCode"], json.loads(result["body"])


def test_admin_connection_and_subscriptions(rt: Runtime) -> None:
    open_connection(rt, "a", identity("trader-1", subscription_level="enterprise"))
    send(rt, "a", {"action": "joinRoom", "room": "desk"})
    send(rt, "a", {"action": "subscribe", "streams": [{"stream_type": "market_data", "symbol": "AAPL"}]})
    status, body = admin("GET /connections/{connection_id}", "/connections/a", connection_id="a")
    assert status == 200
    assert body["user_id"] == "trader-1"
    assert body["subscription_level"] == "enterprise"
    assert body["rooms"] == ["desk"]
    assert body["subscription_count"] == 1
    status, body = admin(
        "GET /connections/{connection_id}/subscriptions", "/connections/a/subscriptions", connection_id="a"
    )
    assert status == 200
    assert [s["stream_type"] for s in body["subscriptions"]] == ["market_data"]
    assert body["subscriptions"][0]["symbol"] == "AAPL"


def test_admin_room_members(rt: Runtime) -> None:
    open_connection(rt, "a")
    open_connection(rt, "b")
    send(rt, "a", {"action": "joinRoom", "room": "desk"})
    send(rt, "b", {"action": "joinRoom", "room": "desk"})
    status, body = admin("GET /rooms/{room}/members", "/rooms/desk/members", room="desk")
    assert status == 200
    assert sorted(body["members"]) == ["a", "b"]


def test_admin_stats(rt: Runtime) -> None:
    open_connection(rt, "a")
    open_connection(rt, "b")
    send(rt, "a", {"action": "joinRoom", "room": "desk"})
    send(rt, "a", {"action": "joinRoom", "room": "empty-later"})
    send(rt, "a", {"action": "leaveRoom", "room": "empty-later"})
    send(rt, "b", {"action": "subscribe", "streams": [{"stream_type": "alerts"}, {"stream_type": "performance"}]})
    status, body = admin("GET /stats", "/stats")
    assert status == 200
    # the per-user connect counters and session rows are not connections; an emptied room is not a room
    assert body == {"connections": 2, "rooms": 1, "subscriptions": 2}


def test_admin_unknown_connection_and_route_are_404(rt: Runtime) -> None:
    assert admin("GET /connections/{connection_id}", "/connections/nope", connection_id="nope") == (
        404,
        {"message": "no connection nope"},
    )
    assert admin("GET /rooms/{room}/members", "/rooms/bad%20room/members", room="bad room")[0] == 404
    assert admin("DELETE /everything", "/everything")[0] == 404


def test_admin_path_parameters_are_api_gateways_decoded_values(rt: Runtime) -> None:
    # GIVEN a connection whose id ends in `=`, as API Gateway's ids do
    open_connection(rt, "conn-1=")
    # WHEN an operator asks for it, the id percent-encoded in the raw path
    status, body = admin("GET /connections/{connection_id}", "/connections/conn-1%3D", connection_id="conn-1=")
    # THEN the connection is found
    assert status == 200
    assert body["connection_id"] == "conn-1="


NAMING_NOTHING = {"connection_id": "nobody", "room": "nowhere"}


def test_every_admin_route_the_stack_declares_reaches_a_query(rt: Runtime) -> None:
    # GIVEN the routes the HTTP API declares, with parameters that name nothing
    for route_key in topology.ADMIN_ROUTES:
        path = route_key.split(" ", 1)[1]
        used = {name: value for name, value in NAMING_NOTHING.items() if "{" + name + "}" in path}
        for name, value in used.items():
            path = path.replace("{" + name + "}", value)
        # WHEN each is called
        status, body = admin(route_key, path, **used)
        # THEN a query answered it (the router's own 404 says only "Not found")
        assert body.get("message") != "Not found", route_key
        assert status in (200, 404), route_key


def test_a_bug_in_an_admin_query_fails_the_invocation_instead_of_answering_404(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a query that hits a KeyError (a bug, not a missing connection)
    def broken(self: object, connection_id: str) -> dict[str, Any]:
        return {}["connection_id"]

    monkeypatch.setattr("quanttrade_ws.admin.AdminQueries.connection", broken)
    # WHEN an operator asks for a connection THEN the error surfaces (API Gateway answers 500)
    with pytest.raises(KeyError):
        admin("GET /connections/{connection_id}", "/connections/a", connection_id="a")


def test_connect_and_disconnect_need_no_management_endpoint(
    settings: Settings, aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the runtime as the template builds it for $connect and $disconnect: no Management API endpoint
    settings, _ = provision(aws["dynamodb"], aws["sqs"], aws["events"], settings)
    settings = settings.model_copy(update={"management_endpoint": None})
    runtime = Runtime(settings, dynamodb=aws["dynamodb"])
    for module in (handlers.connect, handlers.disconnect, handlers.message):
        monkeypatch.setattr(module, "runtime", lambda: runtime)
    identity = Identity(user_id="u-endpointless", permissions=ALL_PERMISSIONS)

    # WHEN a client connects and goes away
    connected = handlers.connect.handler(connect_event("c-endpointless", identity), LambdaContext())
    disconnected = handlers.disconnect.handler(disconnect_event("c-endpointless"), LambdaContext())

    # THEN both answer 200, and only a function that posts would need the endpoint, with a clear error
    assert connected["statusCode"] == 200
    assert disconnected["statusCode"] == 200
    with pytest.raises(RuntimeError, match="QT_MANAGEMENT_ENDPOINT is not set"):
        runtime.service.gateway.post("c-endpointless", b"{}")
