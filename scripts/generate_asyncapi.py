"""Generate the AsyncAPI 3.0 document of the WebSocket protocol from the models the handlers use.

    python scripts/generate_asyncapi.py > docs/asyncapi.yaml     # regenerate
    python scripts/generate_asyncapi.py --check                   # fail if the checked-in file drifted

Every schema is a model of the quanttrade_protocol package: client frames (what
the service validates with), the envelope and reply payloads (what it builds its
replies from), data payloads (the fields upstream events are validated with, as
fan-out sends them) and the enums. The prose (summaries, error meanings) is
scripts/asyncapi/catalog.py, the examples scripts/asyncapi/examples.py; this
script checks those tables against the protocol and assembles the document;
tests/unit/test_asyncapi.py also drives the real service through every action
and validates what it sends against the result.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from quanttrade_ws import protocol, topology
from quanttrade_ws.protocol import ErrorCode, MessageType, ServerMessage, StreamType
from scripts.asyncapi.catalog import ACTIONS, ERROR_MEANINGS, SERVER_KINDS, ServerKind
from scripts.asyncapi.examples import batch_message_example, message_example

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "asyncapi.yaml"
REF = "#/components/schemas/{model}"

# ---------------------------------------------------------------- the document


def build() -> dict[str, Any]:
    actions = sorted(protocol.KNOWN_ACTIONS)
    if sorted(ACTIONS) != actions or sorted(topology.ACTIONS) != actions:
        raise SystemExit(f"action table out of date: protocol has {actions}, generator has {sorted(ACTIONS)}")
    if set(ERROR_MEANINGS) != set(ErrorCode):
        raise SystemExit("every ErrorCode needs a meaning in ERROR_MEANINGS")
    if {kind.message_type for kind in SERVER_KINDS} != set(MessageType) - {MessageType.BATCH}:
        raise SystemExit("every MessageType needs a ServerKind")

    schemas = _schemas()
    frames = {protocol.action_of(frame): frame for frame in protocol.CLIENT_FRAMES}
    messages: dict[str, Any] = {}
    for action in ACTIONS:
        summary, _replies, example = ACTIONS[action]
        messages[action] = {
            "name": action,
            "title": f"{action} (client)",
            "summary": summary,
            "payload": {"$ref": REF.format(model=frames[action].__name__)},
            "examples": [{"name": action, "payload": example}],
        }
    for kind in SERVER_KINDS:
        schemas[_envelope_name(kind)] = _envelope(kind)
        messages[kind.key] = {
            "name": kind.message_type.value,
            "title": f"{kind.message_type.value} (server)",
            "summary": kind.summary,
            "payload": {"$ref": REF.format(model=_envelope_name(kind))},
            "examples": [{"name": kind.key, "payload": message_example(kind)}],
        }
    data_kinds = [kind for kind in SERVER_KINDS if kind.data]
    schemas["BatchMessage"] = _batch_schema(data_kinds)
    messages["batch"] = {
        "name": MessageType.BATCH.value,
        "title": "batch (server)",
        "summary": "Several data messages for this connection in one frame, in order. Unpack and handle each.",
        "payload": {"$ref": REF.format(model="BatchMessage")},
        "examples": [{"name": "batch", "payload": batch_message_example(data_kinds[:1])}],
    }

    def ref(key: str) -> dict[str, str]:
        return {"$ref": f"#/channels/root/messages/{key}"}

    operations: dict[str, Any] = {}
    for action, (summary, replies, _frame) in ACTIONS.items():
        operations[f"receive{action[0].upper()}{action[1:]}"] = {
            "action": "receive",
            "channel": {"$ref": "#/channels/root"},
            "title": action,
            "summary": summary,
            "messages": [ref(action)],
            "reply": {"channel": {"$ref": "#/channels/root"}, "messages": [ref(key) for key in [*replies, "error"]]},
        }
    operations["sendStreamData"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/root"},
        "title": "Stream data",
        "summary": "Data messages of the subscribed streams and joined data rooms, one message or a `batch`.",
        "description": "Each carries `stream` and `seq`; `seq` grows by one per message of a stream. Filters and "
        "intervals skip messages, and `latest_only` drops all but the newest of a stream in one frame, so gaps are "
        "normal. Several messages to one connection go out as one `batch` (one per server batch, or per coalescing "
        "window when the stack sets one). A message can arrive twice (redelivery, resume): drop it by "
        "(`stream`, `seq`).",
        "messages": [ref(kind.key) for kind in data_kinds] + [ref("batch")],
    }
    operations["sendRoomActivity"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/root"},
        "title": "Room activity",
        "summary": "Messages of joined rooms and their members joining and leaving.",
        "messages": [ref("roomMessage"), ref("memberJoined"), ref("memberLeft")],
    }
    operations["sendNotices"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/root"},
        "title": "Notices",
        "summary": "Errors that answer no request (RATE_LIMIT) and heartbeats.",
        "messages": [ref("error"), ref("heartbeat")],
    }

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "QuantTrade WebSocket API",
            "version": _version(),
            "description": _description(),
        },
        "defaultContentType": "application/json",
        "servers": {
            "aws": {
                "host": "{apiId}.execute-api.{region}.amazonaws.com",
                "pathname": "/{stage}",
                "protocol": "wss",
                "title": "API Gateway WebSocket API",
                "variables": {
                    "apiId": {"description": "The WebSocket API id (stack output)"},
                    "region": {"default": "us-east-1"},
                    "stage": {"default": "prod"},
                },
                "security": [{"$ref": "#/components/securitySchemes/accessToken"}],
            },
            "local": {
                "host": "127.0.0.1:8081",
                "protocol": "ws",
                "title": "Local stack (`make dev`)",
                "security": [{"$ref": "#/components/securitySchemes/accessToken"}],
            },
        },
        "channels": {
            "root": {
                "address": "/",
                "title": "The WebSocket connection",
                "description": "One connection per client: `wss://<host>/<stage>?token=<access token>`. Client "
                "frames are JSON objects with an `action`; the API routes on `$request.body.action`.",
                "messages": {key: {"$ref": f"#/components/messages/{key}"} for key in messages},
                "bindings": {
                    "ws": {
                        "method": "GET",
                        "query": {
                            "type": "object",
                            "properties": {
                                "token": {
                                    "type": "string",
                                    "maxLength": 8192,
                                    "description": "The access token (JWT). Checked once, by the $connect "
                                    "authorizer: 401 when missing or invalid.",
                                }
                            },
                            "required": ["token"],
                        },
                        "bindingVersion": "0.1.0",
                    }
                },
            }
        },
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "securitySchemes": {
                "accessToken": {
                    "type": "httpApiKey",
                    "name": "token",
                    "in": "query",
                    "description": "JWT from the QuantTrade auth service (issuer `quanttrade-auth`, audience "
                    "`quanttrade-websocket`; claims `sub`, `exp`, `permissions`, `subscription_level`, "
                    "`client_type`).",
                }
            },
        },
    }


def _schemas() -> dict[str, Any]:
    models: list[tuple[type[BaseModel], Any]] = [(frame, "validation") for frame in protocol.CLIENT_FRAMES]
    models.append((ServerMessage, "serialization"))
    models += [(kind.payload, "serialization") for kind in SERVER_KINDS]
    _keys, document = models_json_schema(models, ref_template=REF)
    schemas: dict[str, Any] = document["$defs"]
    schemas["ErrorCode"]["description"] = "Error codes:\n\n" + "\n".join(
        f"- `{code.value}`: {meaning}" for code, meaning in ERROR_MEANINGS.items()
    )
    # The stream specs spell their stream type as a constant each; the enum still names them all in one place.
    schemas["StreamType"] = TypeAdapter(StreamType).json_schema()
    # The envelope's payload is described per message kind (_envelope); the common bases of the payload
    # models are no schemas of their own.
    schemas.pop("Payload", None)
    schemas.pop("DataPayload", None)
    return schemas


def _envelope_name(kind: ServerKind) -> str:
    return f"{kind.key[0].upper()}{kind.key[1:]}Message"


def _envelope(kind: ServerKind) -> dict[str, Any]:
    """The ServerMessage envelope narrowed to one kind: its message_type and payload shape."""
    properties: dict[str, Any] = {
        "message_type": {"const": kind.message_type.value},
        "payload": {"$ref": REF.format(model=kind.payload.__name__)},
    }
    required = ["message_id", "message_type", "payload", "timestamp"]
    if kind.data:
        properties["stream"] = {"type": "string", "description": "The stream: `market_data:AAPL`, `alerts`, ..."}
        properties["seq"] = {"type": "integer", "minimum": 1, "description": "Position in the stream, from 1"}
        properties["source"] = {"type": "string", "description": "The upstream EventBridge source"}
        required += ["stream", "seq"]
    if kind.room:
        properties["room"] = {"type": "string"}
        required.append("room")
    return {
        "title": _envelope_name(kind),
        "description": kind.summary,
        "allOf": [{"$ref": REF.format(model="ServerMessage")}, {"type": "object", "properties": properties}],
        "required": required,
    }


def _batch_schema(data_kinds: list[ServerKind]) -> dict[str, Any]:
    return {
        "title": "BatchMessage",
        "description": "Several messages for one connection in one frame (at most 128 KB), in delivery order.",
        "allOf": [
            {"$ref": REF.format(model="ServerMessage")},
            {
                "type": "object",
                "properties": {
                    "message_type": {"const": MessageType.BATCH.value},
                    "payload": {
                        "type": "object",
                        "properties": {
                            "messages": {
                                "type": "array",
                                "minItems": 2,
                                "items": {
                                    "anyOf": [{"$ref": REF.format(model=_envelope_name(kind))} for kind in data_kinds]
                                },
                            }
                        },
                        "required": ["messages"],
                        "additionalProperties": False,
                    },
                },
            },
        ],
        "required": ["message_id", "message_type", "payload", "timestamp"],
    }


def _version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def _description() -> str:
    rows = "\n".join(f"| `{code.value}` | {meaning} |" for code, meaning in ERROR_MEANINGS.items())
    return f"""Real-time trading data (market ticks, predictions, alerts, performance, market regime, system status)
and chat rooms over one WebSocket connection, served by API Gateway's managed WebSocket API.

Generated by `scripts/generate_asyncapi.py` from the pydantic models the Lambda handlers validate with;
do not edit by hand. `docs/PROTOCOL.md` walks through a session.

## Connection

Connect to `wss://<host>/<stage>?token=<JWT>`, send `hello`, keep the `session_token` from `connect`.
Every client frame is a JSON object with an `action` and an optional `request_id` (at most 128 characters);
the answer to a frame, or its `error`, carries the same `request_id`.

API Gateway closes a connection after 10 minutes without a client frame (send `ping` every few minutes;
WebSocket ping frames do not count) and after 2 hours in any case. Reconnect with exponential backoff and
jitter, then `resume` with the session token and the last `seq` of every stream to get what was missed.

## Data messages

Each data message carries `stream` and `seq`. Several messages for one connection may arrive as one
`batch` message whose `payload.messages` holds them in order.

## Error codes

| code | meaning |
| --- | --- |
{rows}
"""


# ---------------------------------------------------------------- output


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line text, so the descriptions read as Markdown in the file."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def render() -> str:
    header = "# Generated by scripts/generate_asyncapi.py from quanttrade_ws.protocol and quanttrade_ws.upstream.\n"
    header += "# Do not edit: run `make asyncapi` (tests/unit/test_asyncapi.py fails when this file drifts).\n"
    body = yaml.dump(build(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
    return header + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help=f"exit 1 if {OUTPUT.relative_to(ROOT)} is not current")
    parser.add_argument("--output", type=Path, help="write here instead of standard output")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current == text:
            return 0
        diff = difflib.unified_diff(current.splitlines(True), text.splitlines(True), str(OUTPUT), "generated", n=1)
        sys.stderr.writelines(list(diff)[:80])
        sys.stderr.write("\ndocs/asyncapi.yaml is out of date: run `make asyncapi`\n")
        return 1
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
