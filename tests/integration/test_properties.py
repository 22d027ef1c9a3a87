"""Property tests: whatever a client sends, it gets exactly one well-formed reply and nothing escapes.

Thousands of random and malformed frames go through RealtimeService.handle_frame
on moto DynamoDB. The service state carries over between examples (as on a
real connection that keeps sending garbage), and the clock moves one second per
frame so the rate limit never interferes.
"""

from __future__ import annotations

import json
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from quanttrade_ws.auth import ALL_PERMISSIONS
from quanttrade_ws.protocol import KNOWN_ACTIONS, ErrorCode, MessageType, ServerMessage, StreamType
from tests.conftest import Wired

EXAMPLES = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
CID = "prop-conn"
ERROR_CODES = {code.value for code in ErrorCode}
MESSAGE_TYPES = {t.value for t in MessageType}
LEAKS = ("Traceback", 'File "', "quanttrade_ws", "botocore", "site-packages", "/var/task", "/work/", ".py")

# ---------------------------------------------------------------- strategies

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)
actions = st.sampled_from(sorted(KNOWN_ACTIONS)) | st.text(max_size=20)
field_names = st.sampled_from(
    [
        "request_id",
        "streams",
        "room",
        "message",
        "token",
        "session_token",
        "last_seq",
        "stream_type",
        "symbol",
        "filters",
        "interval",
    ]
) | st.text(max_size=12)
room_names = st.sampled_from(["lobby", "desk", "admin.ops", "market_data_AAPL", "alerts", "", "x" * 65]) | st.text(
    alphabet=string.ascii_letters + string.digits + "_.:- /#", max_size=70
)
symbols = st.sampled_from(["AAPL", "msft", "BRK.B", "^GSPC", "", "A" * 25]) | st.text(max_size=30)
filter_names = st.sampled_from(
    ["min_volume", "min_confidence", "direction", "min_severity", "alert_type", "metric", "service", "status"]
) | st.text(max_size=10)
stream_specs = st.fixed_dictionaries(
    {"stream_type": st.sampled_from([t.value for t in StreamType]) | json_scalars},
    optional={
        "symbol": symbols | json_scalars,
        "interval": st.floats(allow_nan=True, allow_infinity=True) | st.integers() | json_scalars,
        "filters": st.dictionaries(filter_names, st.text(max_size=10) | json_scalars, max_size=4) | json_values,
        "extra": json_values,
    },
)
request_ids = st.text(max_size=140) | json_scalars

random_dict_frames = st.fixed_dictionaries(
    {"action": actions | json_scalars}, optional={"request_id": request_ids}
).flatmap(lambda base: st.dictionaries(field_names, json_values, max_size=4).map(lambda extra: {**extra, **base}))

near_valid_frames = st.one_of(
    st.fixed_dictionaries(
        {"action": st.sampled_from(["subscribe", "unsubscribe"]), "streams": st.lists(stream_specs, max_size=4)},
        optional={"request_id": request_ids},
    ),
    st.fixed_dictionaries(
        {"action": st.sampled_from(["joinRoom", "leaveRoom"]), "room": room_names | json_scalars},
        optional={"request_id": request_ids},
    ),
    st.fixed_dictionaries(
        {
            "action": st.just("sendRoomMessage"),
            "room": room_names,
            "message": st.text(max_size=200) | st.just("x" * 5000) | json_scalars,
        },
        optional={"request_id": request_ids},
    ),
    st.fixed_dictionaries(
        {"action": st.just("refresh"), "token": st.text(max_size=100) | json_scalars},
        optional={"request_id": request_ids},
    ),
    st.fixed_dictionaries(
        {"action": st.just("resume"), "session_token": st.text(max_size=100) | json_scalars},
        optional={"last_seq": st.dictionaries(st.text(max_size=30), st.integers() | json_scalars, max_size=3)},
    ),
    st.fixed_dictionaries(
        {"action": st.sampled_from(["hello", "ping"])}, optional={"request_id": request_ids, "x": json_values}
    ),
)

# Well-typed frames, so the success paths and the domain's own errors (limits, permissions) are reached too.
valid_rooms = st.sampled_from(
    ["lobby", "desk", "admin.ops", "market_data_AAPL", "predictions_TSLA", "alerts"]
) | st.text(alphabet=string.ascii_letters + string.digits + "_.:-", min_size=1, max_size=8)
valid_specs = st.fixed_dictionaries(
    {"stream_type": st.sampled_from([t.value for t in StreamType])},
    optional={
        "symbol": st.sampled_from(["AAPL", "msft", "BRK.B", "TSLA"]) | st.from_regex(r"[A-Z]{1,5}", fullmatch=True),
        "interval": st.floats(min_value=0.1, max_value=60),
        "filters": st.dictionaries(filter_names, st.sampled_from(["1", "0.5", "high", "low", "up", "x"]), max_size=2),
    },
)
plausible_frames = st.one_of(
    st.fixed_dictionaries(
        {
            "action": st.sampled_from(["subscribe", "unsubscribe"]),
            "streams": st.lists(valid_specs, min_size=1, max_size=4),
        },
        optional={"request_id": st.text(max_size=20)},
    ),
    st.fixed_dictionaries(
        {"action": st.sampled_from(["joinRoom", "leaveRoom"]), "room": valid_rooms},
        optional={"request_id": st.text(max_size=20)},
    ),
    st.fixed_dictionaries(
        {"action": st.just("sendRoomMessage"), "room": valid_rooms, "message": st.text(max_size=100)},
        optional={"request_id": st.text(max_size=20)},
    ),
    st.fixed_dictionaries(
        {"action": st.sampled_from(["hello", "ping"])}, optional={"request_id": st.text(max_size=20)}
    ),
    st.fixed_dictionaries({"action": st.just("refresh"), "token": st.text(min_size=1, max_size=50)}),
)


def mutate(frame: str, data: st.DataObject) -> str:
    """A valid frame, cut, spliced or corrupted."""
    kind = data.draw(st.sampled_from(["truncate", "insert", "delete"]))
    at = data.draw(st.integers(0, len(frame)))
    if kind == "truncate":
        return frame[:at]
    if kind == "insert":
        return frame[:at] + data.draw(st.text(min_size=1, max_size=5)) + frame[at:]
    return frame[:at] + frame[at + data.draw(st.integers(1, 5)) :]


VALID_FRAMES = [
    {"action": "hello"},
    {"action": "ping", "request_id": "p"},
    {"action": "subscribe", "streams": [{"stream_type": "market_data", "symbol": "AAPL"}]},
    {"action": "joinRoom", "room": "lobby"},
    {"action": "sendRoomMessage", "room": "lobby", "message": "hi"},
    {"action": "resume", "session_token": "a.b", "last_seq": {"market_data:AAPL": 1}},
]

# ---------------------------------------------------------------- the property


@pytest.fixture
def conn(wired: Wired) -> Wired:
    # Long-lived token: the clock moves a second per frame across thousands of frames.
    # Free level, no admin and no read:predictions: the limits and FORBIDDEN are reachable too.
    permissions = tuple(p for p in ALL_PERMISSIONS if p not in ("admin", "read:predictions"))
    wired.connect(CID, user_id="prop-user", permissions=permissions, level="free", expires_in=10**8)
    return wired


def _keys(value: Any) -> list[str]:
    """Every key of every object in a decoded frame."""
    if isinstance(value, dict):
        return [str(key) for key in value] + [key for child in value.values() for key in _keys(child)]
    if isinstance(value, list):
        return [key for child in value for key in _keys(child)]
    return []


def exactly_one_good_reply(
    wired: Wired, body: str | bytes, sent: dict[str, Any] | None = None, record: bool = True
) -> dict[str, Any]:
    """Send one frame; check the one reply it gets; return it."""
    wired.clock.now += 1  # a new rate window per frame
    before = len(wired.gateway.sent[CID])
    wired.service.handle_frame(CID, body)  # must not raise
    new = wired.gateway.sent[CID][before:]
    assert len(new) == 1, f"expected one reply, got {len(new)}"
    reply = json.loads(new[0])
    ServerMessage.model_validate(reply)  # the envelope, strictly
    assert reply["message_type"] in MESSAGE_TYPES
    assert reply["target"] == CID
    if reply["message_type"] == "error":
        payload = reply["payload"]
        assert payload["error_code"] in ERROR_CODES
        assert payload["error_code"] != "INTERNAL", payload  # nothing a client sends is an internal failure
        assert isinstance(payload["message"], str) and payload["message"]
        assert len(payload["message"]) <= 1024, "error messages stay short whatever the input"
        text = body if isinstance(body, str) else body.decode(errors="replace")
        # A problem's location joins the client's own keys with dots (`last_seq.py` for a key "py").
        own = text + "".join(f".{key}" for key in _keys(sent))
        for leak in LEAKS:
            # a client may see its own key names echoed (cut short); anything else is a leak
            assert leak not in payload["message"] or leak in own, leak
    if record:  # --hypothesis-show-statistics shows which replies the random frames reached
        event(reply["payload"].get("error_code", reply["message_type"]))
    if isinstance(sent, dict):
        request_id = sent.get("request_id")
        if isinstance(request_id, str) and len(request_id) <= 128:
            assert reply.get("request_id") == request_id  # echoed on answers and errors alike
    return reply


@EXAMPLES
@given(value=json_values)
def test_random_json_values(conn: Wired, value: Any) -> None:
    reply = exactly_one_good_reply(conn, json.dumps(value), value if isinstance(value, dict) else None)
    if not isinstance(value, dict):
        assert reply["payload"]["error_code"] == "INVALID_MESSAGE"


@EXAMPLES
@given(frame=random_dict_frames)
def test_random_dicts_with_random_actions_and_fields(conn: Wired, frame: dict[str, Any]) -> None:
    reply = exactly_one_good_reply(conn, json.dumps(frame), frame)
    action = frame["action"]
    if isinstance(action, str) and action and action not in KNOWN_ACTIONS:
        assert reply["payload"]["error_code"] == "UNKNOWN_ACTION"
        request_id = frame.get("request_id")
        if isinstance(request_id, str) and len(request_id) <= 128:
            assert reply["request_id"] == request_id


@EXAMPLES
@given(frame=near_valid_frames)
# A client's key that looks like a file suffix is echoed in the problem's location, which is not a leak.
@example(frame={"action": "resume", "session_token": None, "last_seq": {"py": -1}})
def test_near_valid_frames(conn: Wired, frame: dict[str, Any]) -> None:
    exactly_one_good_reply(conn, json.dumps(frame), frame)


@EXAMPLES
@given(frame=plausible_frames)
def test_plausible_frames(conn: Wired, frame: dict[str, Any]) -> None:
    exactly_one_good_reply(conn, json.dumps(frame), frame)


@EXAMPLES
@given(text=st.text(max_size=300))
def test_random_text(conn: Wired, text: str) -> None:
    exactly_one_good_reply(conn, text)


@EXAMPLES
@given(data=st.binary(max_size=300))
def test_random_bytes(conn: Wired, data: bytes) -> None:
    exactly_one_good_reply(conn, data)


@EXAMPLES
@given(frame=st.sampled_from(VALID_FRAMES), data=st.data())
def test_corrupted_valid_frames(conn: Wired, frame: dict[str, Any], data: st.DataObject) -> None:
    exactly_one_good_reply(conn, mutate(json.dumps(frame), data))


@settings(EXAMPLES, max_examples=100)
@given(
    escape=st.sampled_from(["\\ud800", "\\udfff", "\\u0000", "\\ufeff", "\\ud83d\\ude00"]),
    where=st.sampled_from(["action", "request_id", "room", "key", "symbol", "token"]),
)
def test_unusual_unicode_escapes(conn: Wired, escape: str, where: str) -> None:
    # GIVEN JSON escapes that are valid JSON but awkward text (lone surrogates, NUL, BOM)
    frames = {
        "action": f'{{"action": "{escape}"}}',
        "request_id": f'{{"action": "ping", "request_id": "{escape}"}}',
        "room": f'{{"action": "joinRoom", "room": "{escape}"}}',
        "key": f'{{"action": "ping", "{escape}": 1}}',
        "symbol": f'{{"action": "subscribe", "streams": [{{"stream_type": "market_data", "symbol": "{escape}"}}]}}',
        "token": f'{{"action": "refresh", "token": "{escape}"}}',
    }
    exactly_one_good_reply(conn, frames[where])


def test_deeply_nested_and_huge_frames(conn: Wired) -> None:
    # The edges random generation rarely reaches
    for body in (
        "[" * 50_000,
        '{"action": "ping", "x": ' + "[" * 5000 + "]" * 5000 + "}",
        '{"action": "ping", "n": ' + "9" * 10_000 + "}",
        json.dumps({"action": "ping", "k" * 100_000: 1}),
        json.dumps({"action": "x" * 100_000}),
        json.dumps({"action": "joinRoom", "room": "r" * 100_000}),
        json.dumps({"action": "subscribe", "streams": [{"stream_type": "alerts"}] * 1000}),
        json.dumps({"action": "sendRoomMessage", "room": "lobby", "message": "m" * 127_000}),
    ):
        exactly_one_good_reply(conn, body, record=False)
