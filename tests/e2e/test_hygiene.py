"""Hygiene over real sockets: no token in any log line, no internals in any error a client sees.

Everything the local stack logs is captured at DEBUG (caplog on the root
logger): its own components, and the functions' log lines, which their worker
processes write to stderr and the runtime forwards to
`quanttrade.local.lambda.log` (the functions log at the template's level,
INFO). Records of the `websockets` loggers are left out: they belong to the
test's own client, which logs its request line.

Internal failures are injected where AWS produces them: the AWS front door
answers one DynamoDB operation of one function (matched by its name) with
DynamoDB's ResourceNotFoundException naming the table, a failure whose text is
full of internals the client must not see, and which the SDK does not retry
(a throttle or a 500 would be retried by botocore for ~25 s, past the
function's timeout).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import websockets

from local.aws_front_door.faults import FaultRule
from local.stack.local_stack import LocalStack
from quanttrade_ws import topology
from tests.e2e.conftest import Client, eventually

pytestmark = pytest.mark.e2e

Connect = Callable[..., Awaitable[Client]]
ACCESS_LOG = "quanttrade.local.gateway.access"
GENERIC = "Internal error, please retry"
INTERNAL_NAMES = ("Traceback", 'File "', ".py", "/", "quanttrade_ws", "botocore", "DynamoStore", "ClientError")


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Callable[[], str]:
    """Everything the stack logs from here on, at DEBUG, as one text (the test client's own records left out)."""
    caplog.set_level(logging.DEBUG)
    # The functions' forwarded lines have a level of their own (the stack's log_level): capture them all too.
    caplog.set_level(logging.DEBUG, logger="quanttrade.local.lambda.log")

    def text() -> str:
        records = [r for r in caplog.records if not r.name.startswith("websockets")]
        return "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''} {vars(r)!r}" for r in records)

    return text


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == ACCESS_LOG]


# ---------------------------------------------------------------- tokens in logs


async def test_the_gateway_logs_no_token_of_an_accepted_or_a_refused_handshake(
    local_stack: LocalStack, mint: Callable[..., str], logs: Callable[[], str], caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a token the stack accepts and one signed with another key
    accepted = mint("hygiene")
    forged = local_stack.token("hygiene").rsplit(".", 1)[0] + ".c2lnbmF0dXJlLW9mLWFub3RoZXIta2V5LTAxMjM0NTY3ODk"

    # WHEN a client connects with the first (says hello and leaves) and another tries the forged one
    async with websockets.connect(f"{local_stack.websocket_url}?token={accepted}&lang=en", open_timeout=10) as ws:
        await ws.send(json.dumps({"action": "hello", "request_id": "h"}))
        assert json.loads(await ws.recv())["message_type"] == "connect"
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(f"{local_stack.websocket_url}?token={forged}", open_timeout=10)
    assert refused.value.response.status_code == 403  # the authorizer's Deny

    # THEN the access log has both handshakes, with the token redacted and the rest of the query kept
    def handshakes() -> list[str]:
        return [line for line in access_lines(caplog) if '"GET /?' in line]

    await eventually(lambda: len(handshakes()) >= 2, timeout=10, what="both handshakes in the access log")
    lines = handshakes()
    assert any("token=REDACTED&lang=en" in line and '" 101 ' in line for line in lines), lines
    assert any("token=REDACTED" in line and '" 403 ' in line for line in lines), lines
    # ... and neither token, nor any part of its claims or signature, is anywhere in what the stack logged
    # (the authorizer function's own INFO line about the refusal included, once its worker has written it)
    await eventually(lambda: "token refused" in logs(), timeout=10, what="the authorizer's refusal in its log")
    text = logs()
    for token in (accepted, forged):
        for part in (token, *token.split(".")[1:]):
            assert part not in text


# ---------------------------------------------------------------- internals in errors


@contextlib.contextmanager
def fail_dynamodb(local_stack: LocalStack, handler: str, operation: str) -> Iterator[FaultRule]:
    """While open, the front door answers `operation` of the function whose handler is `handler` (and only
    that function) with DynamoDB's ResourceNotFoundException naming the table."""
    assert local_stack.front_door is not None
    function = local_stack.function(handler).name
    with local_stack.front_door.fault_rule(
        "dynamodb", "ResourceNotFoundException", operation=operation, function=function
    ) as rule:
        yield rule


def table_names(local_stack: LocalStack) -> list[str]:
    assert local_stack.settings is not None
    return [str(getattr(local_stack.settings, table.env_var.lower())) for table in topology.TABLES]


def internals_in(text: str, local_stack: LocalStack, operation: str) -> list[str]:
    names = (*INTERNAL_NAMES, *table_names(local_stack), operation, "ResourceNotFound", "dynamodb", "amazonaws")
    return [name for name in names if name in text]


FAILING_FRAMES: dict[str, tuple[str, dict[str, Any]]] = {
    # action: (the DynamoDB operation that fails, the frame)
    "subscribe": ("TransactWriteItems", {"action": "subscribe", "streams": [{"stream_type": "alerts"}]}),
    "joinRoom": ("TransactWriteItems", {"action": "joinRoom", "room": "hygiene"}),
    "resume": ("GetItem", {"action": "resume", "session_token": None, "last_seq": {"alerts:*": 0}}),
    "ping": ("UpdateItem", {"action": "ping"}),  # fails before the frame is even read
}


@pytest.mark.parametrize("action", FAILING_FRAMES)
async def test_an_internal_failure_reaches_the_client_as_a_plain_internal_error(
    local_stack: LocalStack, connect: Connect, action: str
) -> None:
    # GIVEN a connected client with a session, and DynamoDB failing one operation of the message function
    client = await connect("hygiene-errors")
    await client.hello()
    operation, frame = FAILING_FRAMES[action]
    frame = {**frame, "request_id": f"{action}-1"}
    if action == "resume":
        frame["session_token"] = client.session_token

    # WHEN it sends a frame that needs that operation
    with fail_dynamodb(local_stack, "message.handler", operation) as fault:
        await client.send(frame)
        reply = await client.expect(lambda m: m.get("message_type") == "error", what="the error reply")

    # THEN it gets INTERNAL with the generic text: no trace, path, module, class, table or operation name
    assert fault.injected >= 1
    assert reply["payload"]["error_code"] == "INTERNAL", reply
    assert reply["payload"]["message"] == GENERIC
    assert internals_in(json.dumps(reply), local_stack, operation) == []
    # ... for its request, when the frame had been read before the failure
    assert reply.get("request_id") == (None if action == "ping" else frame["request_id"])
    # ... and the connection carries on once the fault is gone
    assert (await client.request("ping"))["message_type"] == "pong"


async def test_a_connect_that_fails_internally_is_refused_without_internals(
    local_stack: LocalStack, mint: Callable[..., str]
) -> None:
    # GIVEN DynamoDB failing the $connect function's one transaction (the connection's row and the user's
    # claim), WHEN a client with a good token connects
    url = f"{local_stack.websocket_url}?token={mint('hygiene-connect')}"
    with (
        fail_dynamodb(local_stack, "connect.handler", "TransactWriteItems") as fault,
        pytest.raises(websockets.InvalidStatus) as refused,
    ):
        await websockets.connect(url, open_timeout=10)

    # THEN the handshake is refused with API Gateway's plain 500 and nothing of the failure in the body
    assert fault.injected >= 1
    response = refused.value.response
    assert response.status_code == 500
    body = response.body.decode()
    assert json.loads(body) == {"message": "Internal server error"}
    assert internals_in(body, local_stack, "TransactWriteItems") == []
