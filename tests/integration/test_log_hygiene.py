"""Tokens never reach a log line, and internal failures reach the client as a plain INTERNAL error.

The handlers run as Lambda runs them (API Gateway-shaped events, a Lambda
context) on moto DynamoDB and the in-memory gateway, with everything logged at
DEBUG captured: the handlers' Powertools logger (through its own JSON
formatter, extra keys included), every standard logger (the shared package,
botocore, Powertools itself) with each record's attributes, and stdout/stderr.
Access tokens travel in `?token=` (queryStringParameters), refresh frames and
the authorizer; session tokens in hello/resume.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

import handlers.authorizer
import handlers.connect
import handlers.disconnect
import handlers.message
from local.fakes import InMemoryGateway
from local.tokens import mint_token
from quanttrade_ws.config import Settings
from quanttrade_ws.observability import SERVICE
from quanttrade_ws.runtime import Runtime
from tests.lambda_events import API_ID, DOMAIN, LambdaContext, request_context
from tests.provision import provision

SECRET = "log-hygiene-secret-0123456789abcdef"
OTHER_SECRET = "not-the-service-secret-0123456789abc"
SESSION_SECRET = "log-hygiene-session-secret-0123456789"
METHOD_ARN = f"arn:aws:execute-api:us-east-1:123456789012:{API_ID}/production/$connect"
INTERNAL_NAMES = ("Traceback", 'File "', ".py", "quanttrade_ws", "botocore", "DynamoStore", "ClientError")


@pytest.fixture
def settings() -> Settings:
    return Settings(
        jwt_secret=SECRET,
        session_secret=SESSION_SECRET,
        delivery_queue_url="delivery.fifo",
        events_dlq_url="events-dlq.fifo",
    )


@pytest.fixture
def rt(settings: Settings, aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """The handlers' runtime on moto, with the gateway replaced by the in-memory fake."""
    settings, _ = provision(aws["dynamodb"], aws["sqs"], aws["events"], settings)
    runtime = Runtime(settings, dynamodb=aws["dynamodb"], gateway=InMemoryGateway())
    for module in (handlers.authorizer, handlers.connect, handlers.disconnect, handlers.message):
        monkeypatch.setattr(module, "runtime", lambda: runtime)
    return runtime


@pytest.fixture
def logs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> Iterator[Callable[[], str]]:
    """Everything logged or printed from here on, at DEBUG, as one text."""
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "DEBUG")
    caplog.set_level(logging.DEBUG)
    powertools = logging.getLogger(SERVICE)  # the Powertools Logger's own logger
    formatter = next(h.formatter for h in powertools.handlers if h.formatter is not None)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    level = powertools.level
    powertools.setLevel(logging.DEBUG)
    powertools.addHandler(handler)
    printed: list[str] = []

    def text() -> str:
        out, err = capsys.readouterr()
        printed.extend((out, err))
        records = [repr(vars(record)) for record in caplog.records]  # message, args, extra keys, exc_text
        return "\n".join([stream.getvalue(), caplog.text, *records, *printed])

    try:
        yield text
    finally:
        powertools.removeHandler(handler)
        powertools.setLevel(level)


def secrets_in(text: str, *tokens: str) -> list[str]:
    """The tokens, or the signed parts of them, that appear in `text`."""
    found = []
    for token in tokens:
        parts = token.split(".")
        # A JWT's header (eyJhbGciOi...) is the same for every token: only the claims and signature are telling.
        telling = [token, *(parts[1:] if len(parts) == 3 else parts)]
        found += [part for part in telling if len(part) >= 16 and part in text]
    return found


# ---------------------------------------------------------------- events as API Gateway sends them


def query(token: str) -> dict[str, Any]:
    return {"queryStringParameters": {"token": token}, "multiValueQueryStringParameters": {"token": [token]}}


def authorizer_event(connection_id: str, token: str) -> dict[str, Any]:
    return {
        "type": "REQUEST",
        "methodArn": METHOD_ARN,
        "headers": {"Host": DOMAIN, "Sec-WebSocket-Version": "13"},
        "multiValueHeaders": {},
        **query(token),
        "stageVariables": {},
        "requestContext": request_context(connection_id, "$connect", "CONNECT"),
    }


def connect(rt: Runtime, connection_id: str, token: str) -> dict[str, Any]:
    """$connect as API Gateway runs it: the authorizer, then the connect route with the authorizer's context."""
    allowed = handlers.authorizer.handler(authorizer_event(connection_id, token), LambdaContext())
    rt.gateway.connect(connection_id)
    event = {
        "headers": {"Host": DOMAIN, "Sec-WebSocket-Key": "x", "Sec-WebSocket-Version": "13"},
        **query(token),
        "requestContext": request_context(
            connection_id,
            "$connect",
            "CONNECT",
            authorizer={"principalId": allowed["principalId"], **allowed["context"]},
        ),
        "isBase64Encoded": False,
    }
    return handlers.connect.handler(event, LambdaContext())


def send(rt: Runtime, connection_id: str, frame: dict[str, Any]) -> dict[str, Any]:
    """One frame through the message handler; the reply the connection got."""
    event = {
        "requestContext": request_context(connection_id, frame["action"], "MESSAGE", messageId=f"m-{connection_id}"),
        "body": json.dumps(frame),
        "isBase64Encoded": False,
    }
    assert handlers.message.handler(event, LambdaContext()) == {"statusCode": 200}
    return rt.gateway.messages(connection_id)[-1]


def disconnect(connection_id: str) -> None:
    event = {
        "headers": {"Host": DOMAIN},
        "requestContext": request_context(connection_id, "$disconnect", "DISCONNECT", disconnectStatusCode=1001),
        "isBase64Encoded": False,
    }
    assert handlers.disconnect.handler(event, LambdaContext()) == {"statusCode": 200}


# ---------------------------------------------------------------- access tokens


REFUSED = {
    "expired": lambda: mint_token(SECRET, "trader", expires_in=-60),
    "foreign signature": lambda: mint_token(OTHER_SECRET, "trader"),
    "not a JWT": lambda: "not-a-jwt-but-a-secret-" + "x" * 24,
}


@pytest.mark.parametrize("kind", REFUSED)
def test_a_refused_token_is_logged_as_refused_but_never_itself(rt: Runtime, logs: Callable[[], str], kind: str) -> None:
    # GIVEN a token the authorizer must refuse
    token = REFUSED[kind]()

    # WHEN a client presents it in ?token= on $connect
    answer = handlers.authorizer.handler(authorizer_event("conn-refused", token), LambdaContext())
    assert answer["policyDocument"]["Statement"][0]["Effect"] == "Deny"

    # THEN the refusal is in the log, the token is not
    text = logs()
    assert "token refused" in text
    assert secrets_in(text, token) == []


def test_connect_refresh_and_disconnect_log_no_access_token(rt: Runtime, logs: Callable[[], str]) -> None:
    # GIVEN a client that connects with a token, then refreshes with a good one and with a forged one
    token = mint_token(SECRET, "trader")
    fresh = mint_token(SECRET, "trader", expires_in=7200)
    forged = mint_token(OTHER_SECRET, "trader", expires_in=7200)

    # WHEN the authorizer, $connect, the refresh frames and $disconnect run
    assert connect(rt, "conn-1", token) == {"statusCode": 200}
    assert send(rt, "conn-1", {"action": "refresh", "token": fresh, "request_id": "r1"})["message_type"] == "refresh"
    refused = send(rt, "conn-1", {"action": "refresh", "token": forged, "request_id": "r2"})
    assert refused["payload"]["error_code"] == "AUTH_FAILED"
    disconnect("conn-1")

    # THEN the handlers did log (DynamoDB calls at least), and no token or query string is in it
    text = logs()
    assert "TransactWriteItems" in text and "UpdateItem" in text
    assert secrets_in(text, token, fresh, forged) == []
    assert "queryStringParameters" not in text
    assert "token=" not in text


# ---------------------------------------------------------------- session tokens


def test_hello_and_resume_log_no_session_token(rt: Runtime, logs: Callable[[], str]) -> None:
    # GIVEN a client with a session whose connection went away
    token = mint_token(SECRET, "trader")
    connect(rt, "conn-1", token)
    session_token = send(rt, "conn-1", {"action": "hello", "request_id": "h"})["payload"]["session_token"]
    send(rt, "conn-1", {"action": "subscribe", "streams": [{"stream_type": "alerts"}], "request_id": "s"})
    disconnect("conn-1")

    # WHEN it resumes on a new connection, and someone else tries a tampered copy of the session token
    connect(rt, "conn-2", token)
    resumed = send(rt, "conn-2", {"action": "resume", "session_token": session_token, "request_id": "r"})
    tampered = session_token[:-4] + ("AAAA" if not session_token.endswith("AAAA") else "BBBB")
    connect(rt, "conn-3", token)
    refused = send(rt, "conn-3", {"action": "resume", "session_token": tampered, "request_id": "t"})

    # THEN neither session token (nor the new one the resume handed out) is in any log output
    assert resumed["message_type"] == "resumed", resumed
    assert refused["payload"]["error_code"] == "AUTH_FAILED"
    text = logs()
    assert "GetItem" in text
    assert secrets_in(text, session_token, tampered, resumed["payload"]["session_token"], token) == []


# ---------------------------------------------------------------- internal failures


def test_an_internal_failure_is_logged_for_operators_and_answered_without_internals(
    rt: Runtime, logs: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a client with a session, and DynamoDB failing the session look-up with an error full of internals
    token = mint_token(SECRET, "trader")
    connect(rt, "conn-1", token)
    session_token = send(rt, "conn-1", {"action": "hello", "request_id": "h"})["payload"]["session_token"]
    table = rt.settings.connections_table

    def broken(*_: Any, **__: Any) -> None:
        raise ClientError(
            {
                "Error": {
                    "Code": "ResourceNotFoundException",
                    "Message": f"Requested resource not found: Table: {table}",
                }
            },
            "GetItem",
        )

    monkeypatch.setattr(rt.store, "load_session", broken)

    # WHEN it resumes
    reply = send(rt, "conn-1", {"action": "resume", "session_token": session_token, "request_id": "r"})

    # THEN it gets a plain INTERNAL error for its request: no trace, no module, class, file or table name
    assert reply["message_type"] == "error"
    assert reply["request_id"] == "r"
    assert reply["payload"]["error_code"] == "INTERNAL"
    wire = json.dumps(reply)
    assert [name for name in (*INTERNAL_NAMES, table, "ResourceNotFound", "GetItem") if name in wire] == []
    # ... while the log has the traceback for operators, still without the session token
    text = logs()
    assert "frame failed" in text and "Traceback" in text and "ResourceNotFoundException" in text
    assert secrets_in(text, session_token, token) == []
