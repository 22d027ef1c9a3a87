"""docs/asyncapi.yaml: current, valid AsyncAPI 3.0, complete, and true to what the service sends.

The AsyncAPI 3.0.0 JSON Schema in tests/fixtures/asyncapi-3.0.0.schema.json is
`schemas/3.0.0.json` of the npm package @asyncapi/specs 6.11.1 (Apache-2.0,
https://github.com/asyncapi/spec-json-schemas), vendored unchanged so the
validation runs offline. It bundles every definition it references by `$id`.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

from quanttrade_ws import protocol, topology
from quanttrade_ws.protocol import ErrorCode, MessageType
from tests.conftest import Wired

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "docs" / "asyncapi.yaml"
GENERATOR = ROOT / "scripts" / "generate_asyncapi.py"
ASYNCAPI_SCHEMA = ROOT / "tests" / "fixtures" / "asyncapi-3.0.0.schema.json"
PROTOCOL_GUIDE = ROOT / "docs" / "PROTOCOL.md"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_asyncapi", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # pydantic resolves the generator's postponed annotations through sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text())
    return loaded


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _pointer(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _validator(document: dict[str, Any], schema_ref: str) -> jsonschema.Draft7Validator:
    """A validator for one component schema, with the document's other components reachable by `$ref`."""
    return jsonschema.Draft7Validator({"$ref": schema_ref, "components": document["components"]})


# ---------------------------------------------------------------- current and valid


def test_regenerating_gives_exactly_the_checked_in_document() -> None:
    assert _load_generator().render() == DOCUMENT.read_text(), "docs/asyncapi.yaml drifted: run `make asyncapi`"


def test_the_generator_check_mode_agrees() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_document_validates_against_the_asyncapi_3_schema(document: dict[str, Any]) -> None:
    schema = json.loads(ASYNCAPI_SCHEMA.read_text())
    assert schema["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message[:300]}" for e in errors[:10])


def test_the_validator_rejects_a_broken_document(document: dict[str, Any]) -> None:
    # GIVEN the same document with an operation whose action is neither send nor receive
    broken = json.loads(json.dumps(document))
    broken["operations"]["receivePing"]["action"] = "publish"
    schema = json.loads(ASYNCAPI_SCHEMA.read_text())
    # THEN the vendored schema catches it, so the test above is not vacuous
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    refs = {node["$ref"] for node in _walk(document) if isinstance(node, dict) and "$ref" in node}
    assert refs
    for ref in refs:
        assert ref.startswith("#/"), ref
        _pointer(document, ref)


def test_every_component_schema_is_a_valid_json_schema(document: dict[str, Any]) -> None:
    for name, schema in document["components"]["schemas"].items():
        try:
            jsonschema.Draft7Validator.check_schema(schema)
        except jsonschema.SchemaError as error:
            pytest.fail(f"{name}: {error.message}")


# ---------------------------------------------------------------- complete


def test_it_names_every_message_type(document: dict[str, Any]) -> None:
    names = {message["name"] for message in document["components"]["messages"].values()}
    assert {t.value for t in MessageType} <= names
    assert document["components"]["schemas"]["MessageType"]["enum"] == [t.value for t in MessageType]


def test_it_names_every_error_code(document: dict[str, Any]) -> None:
    assert document["components"]["schemas"]["ErrorCode"]["enum"] == [c.value for c in ErrorCode]
    for code in ErrorCode:
        assert f"`{code.value}`" in document["info"]["description"], code
        assert f"`{code.value}`" in document["components"]["schemas"]["ErrorCode"]["description"], code


def test_every_action_is_a_receive_operation_with_its_replies(document: dict[str, Any]) -> None:
    received = {
        _pointer(document, op["messages"][0]["$ref"])["$ref"].rsplit("/", 1)[1]: op
        for op in document["operations"].values()
        if op["action"] == "receive"
    }
    assert set(received) == set(protocol.KNOWN_ACTIONS) == set(topology.ACTIONS)
    for action, operation in received.items():
        replies = [ref["$ref"].rsplit("/", 1)[1] for ref in operation["reply"]["messages"]]
        assert "error" in replies and len(replies) == 2, action


def test_the_channel_is_the_root_with_the_token_in_the_query(document: dict[str, Any]) -> None:
    channel = document["channels"]["root"]
    assert channel["address"] == "/"
    assert channel["bindings"]["ws"]["query"]["required"] == ["token"]
    assert document["components"]["securitySchemes"]["accessToken"] == {
        **document["components"]["securitySchemes"]["accessToken"],
        "type": "httpApiKey",
        "in": "query",
        "name": "token",
    }


def test_every_example_matches_its_schema(document: dict[str, Any]) -> None:
    for key, message in document["components"]["messages"].items():
        validator = _validator(document, message["payload"]["$ref"])
        for example in message["examples"]:
            errors = list(validator.iter_errors(example["payload"]))
            assert not errors, (key, errors[0].message)
            if key in protocol.KNOWN_ACTIONS:
                protocol.parse_client_frame(json.dumps(example["payload"]))


def test_the_schemas_reject_what_the_server_rejects(document: dict[str, Any]) -> None:
    subscribe = _validator(document, "#/components/schemas/Subscribe")
    assert not subscribe.is_valid({"action": "subscribe", "streams": []})
    assert not subscribe.is_valid({"action": "subscribe", "streams": [{"stream_type": "weather"}]})
    assert not subscribe.is_valid({"action": "subscribe", "streams": [{"stream_type": "alerts"}], "extra": 1})
    error = _validator(document, "#/components/schemas/ErrorMessage")
    assert not error.is_valid(
        {"message_id": "x", "message_type": "error", "timestamp": "t", "payload": {"error_code": "NOPE"}}
    )


# ---------------------------------------------------------------- true to the service


def _kinds_by_type(document: dict[str, Any]) -> dict[str, list[str]]:
    kinds: dict[str, list[str]] = {}
    for message in document["components"]["messages"].values():
        if message["title"].endswith("(server)"):
            kinds.setdefault(message["name"], []).append(message["payload"]["$ref"])
    return kinds


def _assert_documented(document: dict[str, Any], raw: bytes, seen: set[str]) -> None:
    """A frame the service sent matches one of the documented shapes for its message_type."""
    message = json.loads(raw)
    refs = _kinds_by_type(document)[message["message_type"]]
    problems = []
    for ref in refs:
        errors = list(_validator(document, ref).iter_errors(message))
        if not errors:
            seen.add(ref.rsplit("/", 1)[1])
            break
        problems.append(f"{ref}: {errors[0].message[:200]}")
    else:
        raise AssertionError(f"undocumented shape of {message['message_type']}: {problems}")
    if message["message_type"] == MessageType.BATCH:
        for inner in message["payload"]["messages"]:
            _assert_documented(document, json.dumps(inner).encode(), seen)


def _event(detail_type: str, source: str, detail: dict[str, Any]) -> dict[str, Any]:
    return {
        "messageId": uuid.uuid4().hex,
        "body": json.dumps(
            {
                "version": "0",
                "id": str(uuid.uuid4()),
                "source": source,
                "detail-type": detail_type,
                "account": "123456789012",
                "time": "2026-01-05T14:30:00Z",
                "region": "us-east-1",
                "resources": [],
                "detail": detail,
            }
        ),
        "attributes": {"MessageGroupId": source.split(".", 1)[1]},
    }


def test_everything_the_service_sends_is_documented(document: dict[str, Any], wired: Wired) -> None:
    # GIVEN two connections of the real service (moto DynamoDB, in-memory gateway)
    me, other = wired.connect("me"), wired.connect("other", user_id="user-2")
    start = {"action": "hello", "request_id": "h"}
    session_token = wired.send(me, start)["payload"]["session_token"]
    wired.send(other, start)

    # The service's clock is in the future; the refreshed token must outlive it.
    fresh_token = wired.token(expires_in=int(wired.clock() - time.time()) + 3600)

    # WHEN each action is used, successfully and not
    frames: list[tuple[str, dict[str, Any] | str]] = [
        (me, {"action": "subscribe", "request_id": "s", "streams": [{"stream_type": "market_data", "symbol": "AAPL"}]}),
        (me, {"action": "subscribe", "streams": [{"stream_type": t.value} for t in protocol.StreamType]}),
        (me, {"action": "unsubscribe", "streams": [{"stream_type": "market_data", "symbol": "MSFT"}]}),
        (other, {"action": "joinRoom", "room": "desk"}),
        (me, {"action": "joinRoom", "request_id": "j", "room": "desk"}),
        (me, {"action": "sendRoomMessage", "request_id": "m", "room": "desk", "message": "hi"}),
        (other, {"action": "leaveRoom", "room": "desk"}),
        (me, {"action": "ping", "request_id": "p"}),
        (me, {"action": "refresh", "request_id": "t", "token": fresh_token}),
        (me, {"action": "refresh", "token": "not-a-jwt"}),
        (me, {"action": "leaveRoom", "room": "nowhere"}),
        (me, {"action": "joinRoom", "room": "bad room!"}),
        (me, {"action": "dance"}),
        (me, "{not json"),
    ]
    for connection_id, frame in frames:
        wired.service.handle_frame(connection_id, frame if isinstance(frame, str) else json.dumps(frame))

    # and every kind of upstream event is fanned out, twice, so some arrive as a batch
    details: dict[str, dict[str, Any]] = {
        "MarketData": {"symbol": "AAPL", "price": 189.5, "volume": 1200, "timestamp": "2026-01-05T14:30:00Z"},
        "Prediction": {
            "symbol": "AAPL",
            "direction": "up",
            "confidence": 0.8,
            "horizon": "1h",
            "predicted_price": 191,
            "model": "lstm",
            "timestamp": "2026-01-05T14:30:00Z",
        },
        "Alert": {"alert_type": "spike", "message": "moved", "severity": "high", "symbol": "AAPL"},
        "Performance": {"metrics": {"sharpe": 1.2}, "strategy": "momentum"},
        "MarketRegime": {"market": "SPX", "regime": "trending", "confidence": 0.7},
        "SystemStatus": {"service": "pricing", "status": "healthy"},
    }
    records = [
        _event(source.detail_type, source.source, details[source.detail_type])
        for _ in range(2)
        for source in topology.SOURCES
    ]
    assert wired.fanout.process_events(records) == {"batchItemFailures": []}

    # and the connection resumes on a new connection with a replay
    wired.service.disconnect(me)
    again = wired.connect("again")
    wired.send(again, {"action": "resume", "session_token": session_token, "last_seq": {"market_data:AAPL": 0}})

    # THEN every frame sent matches the document, and every documented kind was seen
    seen: set[str] = set()
    for connection_id in (me, other, again):
        for raw in wired.gateway.sent[connection_id]:
            _assert_documented(document, raw, seen)
    documented = {ref.rsplit("/", 1)[1] for refs in _kinds_by_type(document).values() for ref in refs}
    assert documented - seen == {"HeartbeatMessage"}, "the service never sends heartbeats; all else must be seen"


# ---------------------------------------------------------------- the human guide


def test_the_worked_example_in_protocol_md_follows_the_document(document: dict[str, Any]) -> None:
    """Every JSON frame in docs/PROTOCOL.md is a valid client frame or a documented server message."""
    blocks = re.findall(r"```json\n(.*?)```", PROTOCOL_GUIDE.read_text(), flags=re.DOTALL)
    seen: set[str] = set()
    checked = 0
    for block in blocks:
        for line in block.strip().splitlines():
            if not line.startswith(("→", "←")):
                continue
            direction, text = line[0], line[1:].strip()
            frame = json.loads(text)
            checked += 1
            if direction == "→":
                protocol.parse_client_frame(text)
            else:
                _assert_documented(document, json.dumps(frame).encode(), seen)
    assert checked >= 20
    assert {"ConnectMessage", "SubscribedMessage", "MarketDataMessage", "BatchMessage", "ResumedMessage"} <= seen
