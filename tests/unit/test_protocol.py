"""The wire protocol: client frames are parsed strictly, server messages are well formed."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import pytest

from quanttrade_protocol.enums import Severity
from quanttrade_protocol.frames import (
    STREAM_SPECS,
    AlertsFilters,
    AlertsStream,
    MarketDataFilters,
    PredictionsFilters,
)
from quanttrade_ws.protocol import (
    KNOWN_ACTIONS,
    ErrorCode,
    Hello,
    JoinRoom,
    LeaveRoom,
    MessageType,
    Ping,
    ProtocolError,
    Refresh,
    Resume,
    SendRoomMessage,
    ServerMessage,
    StreamId,
    StreamType,
    Subscribe,
    Unsubscribe,
    error_message,
    pack_batches,
    parse_client_frame,
    stream_spec,
    subscription_cost,
)


def parse(frame: dict[str, Any]) -> Any:
    return parse_client_frame(json.dumps(frame))


def rejected(body: str | bytes | None) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse_client_frame(body)
    return caught.value


# ---------------------------------------------------------------- every action parses


@pytest.mark.parametrize(
    ("frame", "model"),
    [
        ({"action": "hello"}, Hello),
        ({"action": "subscribe", "streams": [{"stream_type": "market_data", "symbol": "AAPL"}]}, Subscribe),
        ({"action": "unsubscribe", "streams": [{"stream_type": "alerts"}]}, Unsubscribe),
        ({"action": "joinRoom", "room": "lobby"}, JoinRoom),
        ({"action": "leaveRoom", "room": "lobby"}, LeaveRoom),
        ({"action": "sendRoomMessage", "room": "lobby", "message": "hi"}, SendRoomMessage),
        ({"action": "ping"}, Ping),
        ({"action": "refresh", "token": "a.b.c"}, Refresh),
        ({"action": "resume", "session_token": "x.y", "last_seq": {"market_data:AAPL": 3}}, Resume),
    ],
)
def test_every_action_parses_into_its_model(frame: dict[str, Any], model: type) -> None:
    # GIVEN a well-formed frame for one action, WHEN parsed, THEN it becomes that action's model
    parsed = parse(frame)
    assert (type(parsed), parsed.action) == (model, frame["action"])


def test_known_actions_are_exactly_the_nine_routes() -> None:
    assert {
        "hello",
        "subscribe",
        "unsubscribe",
        "joinRoom",
        "leaveRoom",
        "sendRoomMessage",
        "ping",
        "refresh",
        "resume",
    } == KNOWN_ACTIONS


def test_subscribe_parses_every_stream_field() -> None:
    # GIVEN a subscription with symbol, interval and filters
    frame = parse(
        {
            "action": "subscribe",
            "request_id": "r1",
            "streams": [
                {"stream_type": "predictions", "symbol": "msft", "interval": 2.5, "filters": {"min_confidence": "0.8"}}
            ],
        }
    )
    # THEN every field arrives typed
    spec = frame.streams[0]
    assert spec.stream_type is StreamType.PREDICTIONS
    assert spec.symbol == "msft"
    assert spec.interval == 2.5
    assert spec.filters == PredictionsFilters(min_confidence="0.8")
    assert spec.filters.as_dict() == {"min_confidence": "0.8"}
    assert frame.request_id == "r1"


@pytest.mark.parametrize("stream_type", [t.value for t in StreamType])
def test_every_stream_type_is_accepted(stream_type: str) -> None:
    frame = parse({"action": "subscribe", "streams": [{"stream_type": stream_type}]})
    assert frame.streams[0].stream_type.value == stream_type


def test_bytes_body_is_parsed_like_text() -> None:
    # GIVEN a base64-decoded body (bytes), WHEN parsed, THEN it is the same frame
    assert isinstance(parse_client_frame(b'{"action": "ping"}'), Ping)


# ---------------------------------------------------------------- INVALID_MESSAGE


@pytest.mark.parametrize("body", ["{not json", "", None, "{'action': 'ping'}", '{"action": "ping"', b"\xff\xfe\x00"])
def test_invalid_json_is_invalid_message(body: str | bytes | None) -> None:
    error = rejected(body)
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert "JSON" in error.message


@pytest.mark.parametrize("body", ["[]", '["ping"]', '"ping"', "42", "null", "true"])
def test_non_object_json_is_invalid_message(body: str) -> None:
    error = rejected(body)
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert "object" in error.message


@pytest.mark.parametrize("frame", [{}, {"request_id": "r"}, {"action": None}, {"action": 7}, {"action": ""}])
def test_missing_or_non_string_action_is_invalid_message(frame: dict[str, Any]) -> None:
    error = rejected(json.dumps(frame))
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert "action" in error.message


@pytest.mark.parametrize(
    "frame",
    [
        {"action": "subscribe", "streams": "market_data"},
        {"action": "subscribe", "streams": []},
        {"action": "subscribe", "streams": [{"stream_type": "weather"}]},
        {"action": "subscribe", "streams": [{"stream_type": "market_data", "symbol": 5}]},
        {"action": "subscribe", "streams": [{"stream_type": "market_data", "symbol": "AA PL"}]},
        {"action": "subscribe", "streams": [{"stream_type": "market_data", "interval": -1}]},
        {"action": "subscribe", "streams": [{"stream_type": "market_data", "interval": "fast"}]},
        {"action": "subscribe", "streams": [{"stream_type": "market_data", "filters": {"min_volume": 5}}]},
        {"action": "joinRoom", "room": 12},
        {"action": "joinRoom"},
        {"action": "sendRoomMessage", "room": "lobby", "message": {"text": "hi"}},
        {"action": "refresh", "token": ""},
        {"action": "resume", "session_token": "x.y", "last_seq": {"market_data:AAPL": -1}},
        {"action": "resume", "session_token": "x.y", "last_seq": ["market_data:AAPL"]},
        {"action": "ping", "request_id": 5},
    ],
)
def test_wrong_types_are_invalid_message(frame: dict[str, Any]) -> None:
    error = rejected(json.dumps(frame))
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert error.message


@pytest.mark.parametrize(
    "frame",
    [
        {"action": "ping", "extra": 1},
        {"action": "hello", "token": "x"},
        {"action": "subscribe", "streams": [{"stream_type": "alerts", "colour": "red"}]},
        {"action": "joinRoom", "room": "lobby", "password": "x"},
    ],
)
def test_extra_fields_are_invalid_message(frame: dict[str, Any]) -> None:
    error = rejected(json.dumps(frame))
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert "xtra" in error.message or "not permitted" in error.message


@pytest.mark.parametrize(
    "frame",
    [
        {"action": "joinRoom", "room": "r" * 257},
        {"action": "sendRoomMessage", "room": "lobby", "message": "m" * (128 * 1024 + 1)},
        {"action": "refresh", "token": "t" * 8193},
        {"action": "resume", "session_token": "s" * 2049},
        {"action": "subscribe", "streams": [{"stream_type": "alerts"}] * 51},
        {"action": "subscribe", "streams": [{"stream_type": "market_data", "symbol": "A" * 25}]},
        {"action": "subscribe", "streams": [{"stream_type": "alerts", "filters": {"alert_type": "x" * 129}}]},
        {"action": "subscribe", "streams": [{"stream_type": "alerts", "filters": {f"k{i}": "v" for i in range(17)}}]},
        {"action": "resume", "session_token": "x", "last_seq": {f"s{i}": 1 for i in range(101)}},
        {"action": "ping", "request_id": "r" * 129},
    ],
)
def test_oversized_fields_are_invalid_message(frame: dict[str, Any]) -> None:
    error = rejected(json.dumps(frame))
    assert error.code is ErrorCode.INVALID_MESSAGE


def test_validation_messages_do_not_echo_the_input() -> None:
    # GIVEN a wrong value that carries a recognisable marker
    error = rejected(json.dumps({"action": "joinRoom", "room": ["SECRET-MARKER"]}))
    # THEN the plain-words reason names the field but not the value
    assert "room" in error.message
    assert "SECRET-MARKER" not in error.message


def test_deeply_nested_json_is_invalid_message_not_a_crash() -> None:
    # GIVEN a frame nested deeper than the JSON parser's recursion limit (fits in one 32 KB frame)
    body = '{"action": "ping", "x": ' + "[" * 20000 + "]" * 20000 + "}"
    # THEN it is refused as INVALID_MESSAGE, never a RecursionError
    assert rejected(body).code is ErrorCode.INVALID_MESSAGE
    assert rejected("[" * 30000).code is ErrorCode.INVALID_MESSAGE


def test_huge_integer_is_invalid_message() -> None:
    # Python refuses to parse integers of more than 4300 digits (a ValueError, not a crash)
    assert rejected('{"action": "ping", "n": ' + "9" * 5000 + "}").code is ErrorCode.INVALID_MESSAGE


# ---------------------------------------------------------------- UNKNOWN_ACTION and request_id


@pytest.mark.parametrize("action", ["dance", "Subscribe", "join_room", "$default", "x" * 500])
def test_unknown_action_is_unknown_action(action: str) -> None:
    error = rejected(json.dumps({"action": action, "request_id": "r-9"}))
    assert error.code is ErrorCode.UNKNOWN_ACTION
    assert error.request_id == "r-9"
    assert len(error.message) < 120  # the echoed action is cut short


def test_request_id_is_carried_on_the_parsed_frame() -> None:
    assert parse({"action": "ping", "request_id": "abc-1"}).request_id == "abc-1"
    assert parse({"action": "ping"}).request_id is None


def test_request_id_is_echoed_on_invalid_message() -> None:
    # GIVEN a known action with a wrong field and a request_id
    error = rejected(json.dumps({"action": "joinRoom", "room": 5, "request_id": "req-7"}))
    # THEN the error carries the request id so the client can match it
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert error.request_id == "req-7"


def test_missing_action_still_echoes_request_id() -> None:
    assert rejected(json.dumps({"request_id": "req-8"})).request_id == "req-8"


def test_oversized_or_non_string_request_id_is_not_echoed() -> None:
    assert rejected(json.dumps({"action": "nope", "request_id": "r" * 129})).request_id is None
    assert rejected(json.dumps({"action": "nope", "request_id": 12})).request_id is None


# ---------------------------------------------------------------- StreamSpec.key


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ({"stream_type": "market_data", "symbol": "AAPL"}, "market_data:AAPL"),
        ({"stream_type": "market_data", "symbol": "aapl"}, "market_data:AAPL"),
        ({"stream_type": "market_data"}, "market_data:*"),
        ({"stream_type": "predictions", "symbol": "BRK.B"}, "predictions:BRK.B"),
        ({"stream_type": "system_status"}, "system_status:*"),
    ],
)
def test_stream_spec_key(spec: dict[str, Any], key: str) -> None:
    assert stream_spec(spec).key == key


def test_stream_specs_are_hashable_and_equal_by_value() -> None:
    a = stream_spec({"stream_type": "alerts"})
    b = stream_spec({"stream_type": "alerts"})
    assert a == b
    assert hash(a) == hash(b)
    assert a.key == b.key


# ---------------------------------------------------------------- filters: one model per stream type


def test_every_stream_type_has_its_own_spec_and_filter_model() -> None:
    # GIVEN the discriminated union of stream specs
    by_type = {spec.model_fields["stream_type"].annotation.__args__[0]: spec for spec in STREAM_SPECS}  # type: ignore[union-attr]
    # THEN each stream type has exactly one, and parsing picks it by stream_type
    assert set(by_type) == set(StreamType)
    for stream_type, model in by_type.items():
        parsed = stream_spec({"stream_type": stream_type.value})
        assert type(parsed) is model
        assert type(parsed.filters).stream_type is stream_type
        assert parsed.filters.as_dict() == {}


def test_filters_are_typed_values() -> None:
    # WHEN an alerts subscription names a severity
    spec = stream_spec({"stream_type": "alerts", "filters": {"min_severity": "high", "alert_type": "price"}})
    # THEN the severity is the protocol's enum, and the stored form is the text the client sent
    assert isinstance(spec, AlertsStream)
    assert spec.filters == AlertsFilters(min_severity=Severity.HIGH, alert_type="price")
    assert spec.filters.as_dict() == {"min_severity": "high", "alert_type": "price"}
    assert stream_spec({"stream_type": "market_data", "filters": {"min_volume": "1e3"}}).filters == MarketDataFilters(
        min_volume="1e3"
    )


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"colour": "red"}, "Unknown filter 'colour' for market_data; known: min_volume"),
        ({"min_confidence": "0.5"}, "Unknown filter 'min_confidence' for market_data"),
        ({"min_volume": "lots"}, "needs a number"),
    ],
)
def test_a_bad_filter_is_invalid_message_in_plain_words(filters: dict[str, str], expected: str) -> None:
    frame = {"action": "subscribe", "streams": [{"stream_type": "market_data", "filters": filters}]}
    error = rejected(json.dumps(frame))
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert expected in error.message


def test_an_unknown_filter_name_that_no_reply_could_encode_is_not_echoed() -> None:
    # GIVEN a filter name with a lone surrogate (a JSON escape can carry one)
    body = '{"action": "subscribe", "streams": [{"stream_type": "alerts", "filters": {"\\ud800x": "1"}}]}'
    # WHEN it is parsed
    error = rejected(body)
    # THEN the error is INVALID_MESSAGE, and the reply carrying it serialises
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert "Unknown filter '?x'" in error.message
    assert error_message(error.code, error.message).to_json()


def test_min_severity_takes_only_the_severities() -> None:
    frame = {"action": "subscribe", "streams": [{"stream_type": "alerts", "filters": {"min_severity": "apocalyptic"}}]}
    error = rejected(json.dumps(frame))
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert all(severity.value in error.message for severity in Severity)


# ---------------------------------------------------------------- stream ids


@pytest.mark.parametrize(
    ("text", "stream_type", "symbol"),
    [
        ("market_data:AAPL", StreamType.MARKET_DATA, "AAPL"),
        ("market_data:*", StreamType.MARKET_DATA, "*"),
        ("alerts", StreamType.ALERTS, None),
        ("alerts:*", StreamType.ALERTS, "*"),
        ("performance:momentum-1", StreamType.PERFORMANCE, "momentum-1"),
    ],
)
def test_stream_ids_parse_and_spell_back(text: str, stream_type: StreamType, symbol: str | None) -> None:
    stream = StreamId.parse(text)
    assert stream == StreamId(stream_type, symbol)
    assert str(stream) == text


@pytest.mark.parametrize("text", ["weather:AAPL", "", ":AAPL", "Market_Data:AAPL"])
def test_a_stream_of_no_known_type_parses_to_none(text: str) -> None:
    assert StreamId.parse(text) is None


@pytest.mark.parametrize(
    ("key", "cost"),
    [("market_data:*", 10), ("predictions:*", 10), ("market_data:AAPL", 1), ("alerts:*", 1), ("weather:*", 1)],
)
def test_only_a_wildcard_over_a_per_symbol_feed_costs_a_block(key: str, cost: int) -> None:
    assert subscription_cost(key) == cost


# ---------------------------------------------------------------- server messages

ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def test_server_message_has_the_envelope_fields() -> None:
    message = json.loads(ServerMessage(message_type=MessageType.PONG, payload={"a": 1}, request_id="r").to_json())
    assert set(message) >= {"message_id", "message_type", "payload", "timestamp", "request_id"}
    assert message["message_type"] == "pong"
    assert ISO_UTC.match(message["timestamp"])
    offset = datetime.fromisoformat(message["timestamp"].replace("Z", "+00:00")).utcoffset()
    assert offset is not None and offset.total_seconds() == 0
    assert "source" not in message  # unset optional fields are left out, not null


def test_message_ids_are_unique() -> None:
    ids = {ServerMessage(message_type=MessageType.PONG).message_id for _ in range(1000)}
    assert len(ids) == 1000


def test_error_message_shape() -> None:
    message = json.loads(error_message(ErrorCode.ROOM_FULL, "Room 'x' is full", "r2").to_json())
    assert message["message_type"] == "error"
    assert message["payload"] == {"error_code": "ROOM_FULL", "message": "Room 'x' is full"}
    assert message["request_id"] == "r2"


# ---------------------------------------------------------------- pack_batches


def _messages(count: int, size: int) -> list[str]:
    return [
        ServerMessage(message_type=MessageType.MARKET_DATA, payload={"i": i, "pad": "x" * size}).to_json()
        for i in range(count)
    ]


def test_single_message_goes_out_as_itself() -> None:
    [message] = _messages(1, 10)
    assert pack_batches([message], 128 * 1024) == [message.encode()]


def test_no_messages_no_frames() -> None:
    assert pack_batches([], 1024) == []


def test_several_messages_become_one_valid_batch() -> None:
    messages = _messages(5, 10)
    [frame] = pack_batches(messages, 128 * 1024)
    batch = json.loads(frame)
    assert batch["message_type"] == "batch"
    assert batch["payload"]["messages"] == [json.loads(m) for m in messages]


@pytest.mark.parametrize("max_bytes", [600, 1000, 4096, 32 * 1024])
def test_batches_split_under_max_bytes_and_keep_order(max_bytes: int) -> None:
    # GIVEN many messages that together exceed the frame limit
    messages = _messages(200, 150)
    # WHEN packed
    frames = pack_batches(messages, max_bytes)
    # THEN every frame fits, is valid JSON, and the messages come out once each, in order
    assert len(frames) > 1
    unpacked: list[dict[str, Any]] = []
    for frame in frames:
        assert len(frame) <= max_bytes
        decoded = json.loads(frame)
        unpacked.extend(decoded["payload"]["messages"] if decoded["message_type"] == "batch" else [decoded])
    assert [m["payload"]["i"] for m in unpacked] == list(range(200))


def test_message_larger_than_the_limit_goes_alone() -> None:
    small, big, small2 = _messages(3, 10)[0], _messages(1, 5000)[0], _messages(3, 10)[2]
    frames = pack_batches([small, big, small2], 1024)
    assert big.encode() in frames
    assert len(frames) == 3


# ---------------------------------------------------------------- text a reply cannot carry


def test_lone_surrogate_action_gets_a_serialisable_unknown_action() -> None:
    # GIVEN an action that JSON escapes into a lone surrogate (valid JSON, not valid UTF-8)
    error = rejected('{"action": "\\ud800x", "request_id": "r"}')
    # THEN UNKNOWN_ACTION, and the reply built from it serialises
    assert error.code is ErrorCode.UNKNOWN_ACTION
    assert json.loads(error_message(error.code, error.message, error.request_id).to_json())["request_id"] == "r"


def test_lone_surrogate_request_id_is_not_echoed() -> None:
    error = rejected('{"action": "ping", "request_id": "\\udfff"}')
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert error.request_id is None
    error_message(error.code, error.message, error.request_id).to_json()


def test_client_supplied_key_names_are_cut_short_in_error_messages() -> None:
    # GIVEN extra fields with very long names (they appear in the validation error's location)
    frame = {"action": "ping", **{f"{i}" + "k" * 100_000: 1 for i in range(3)}}
    error = rejected(json.dumps(frame))
    # THEN the reply stays short instead of echoing 300 KB back
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert len(error.message) < 1024
