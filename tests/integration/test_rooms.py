"""Room management on DynamoDB: join/leave/notices, messages, limits, permissions and concurrent joins."""

from __future__ import annotations

import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from quanttrade_ws.config import Limits, Settings
from quanttrade_ws.store.ports import JoinLimits, Outcome
from quanttrade_ws.store.rooms import ROOM_META
from tests.conftest import Clock, Wired
from tests.integration.conftest import connection_of, error_code, received
from tests.provision import provision

MEMBER = ("rooms:join", "rooms:send")


def count_item(wired: Wired, room: str) -> int:
    item = wired.store._db.get_item(
        TableName=wired.settings.rooms_table,
        Key={"room": {"S": room}, "member_id": {"S": ROOM_META}},
        ConsistentRead=True,
    ).get("Item")
    return int(item["member_count"]["N"]) if item else 0


def member_id(wired: Wired, room: str, user_id: str) -> str:
    return wired.service.member_aliases.of(room, user_id)


def with_limits(settings: Settings, aws: dict[str, Any], **limits: Any) -> Wired:
    """A wired service with its own limits (the shared fixture uses the defaults)."""
    settings = settings.model_copy(update={"limits": Limits(**limits)})
    provision(aws["dynamodb"], aws["sqs"], aws["events"], settings)
    return Wired(settings, aws["dynamodb"], Clock())


# ---------------------------------------------------------------- join and leave


def test_join_replies_to_the_joiner_and_notifies_the_others(wired: Wired) -> None:
    # GIVEN two members already in a room
    for cid in ("a", "b", "c"):
        wired.connect(cid, user_id=f"user-{cid}")
    wired.send("a", {"action": "joinRoom", "room": "lobby"})
    wired.send("b", {"action": "joinRoom", "room": "lobby"})
    seen_by_a, seen_by_b = len(received(wired, "a")), len(received(wired, "b"))
    # WHEN a third joins
    reply = wired.send("c", {"action": "joinRoom", "room": "lobby", "request_id": "j-1"})
    # THEN the joiner gets join_room echoing its request
    assert reply["message_type"] == "join_room"
    assert reply["room"] == "lobby"
    assert reply["request_id"] == "j-1"
    assert reply["payload"]["success"] is True
    assert reply["payload"]["already_member"] is False
    # AND each other member gets one join_room notice naming the joiner
    for cid, seen in (("a", seen_by_a), ("b", seen_by_b)):
        [notice] = received(wired, cid)[seen:]
        assert notice["message_type"] == "join_room"
        assert notice["room"] == "lobby"
        # ... by the joiner's pseudonymous id in this room: never its user id or connection id
        assert notice["source"] == member_id(wired, "lobby", "user-c")
        assert notice["payload"] == {"member_id": member_id(wired, "lobby", "user-c")}
        assert "request_id" not in notice
    # AND the joiner got no notice about itself
    assert [m["message_type"] for m in received(wired, "c")] == ["join_room"]
    assert sorted(wired.store.room_members("lobby")) == ["a", "b", "c"]
    assert count_item(wired, "lobby") == 3


def test_joining_twice_is_idempotent(wired: Wired) -> None:
    wired.connect("a")
    wired.connect("b", user_id="user-b")
    wired.send("a", {"action": "joinRoom", "room": "lobby"})
    wired.send("b", {"action": "joinRoom", "room": "lobby"})
    seen_by_a = len(received(wired, "a"))
    # WHEN b joins again
    reply = wired.send("b", {"action": "joinRoom", "room": "lobby"})
    # THEN it succeeds as already a member, with no second notice and no double count
    assert reply["message_type"] == "join_room"
    assert reply["payload"]["already_member"] is True
    assert len(received(wired, "a")) == seen_by_a
    assert count_item(wired, "lobby") == 2
    assert connection_of(wired, "b").room_count == 1


def test_leave_replies_and_notifies_the_remaining_members(wired: Wired) -> None:
    wired.connect("a")
    wired.connect("b", user_id="user-b")
    wired.send("a", {"action": "joinRoom", "room": "lobby"})
    wired.send("b", {"action": "joinRoom", "room": "lobby"})
    seen_by_a = len(received(wired, "a"))
    # WHEN b leaves
    reply = wired.send("b", {"action": "leaveRoom", "room": "lobby", "request_id": "l-1"})
    # THEN b gets leave_room, a gets a leave_room notice naming b
    assert reply["message_type"] == "leave_room"
    assert reply["request_id"] == "l-1"
    assert reply["payload"]["success"] is True
    [notice] = received(wired, "a")[seen_by_a:]
    assert notice["message_type"] == "leave_room"
    assert notice["payload"] == {"member_id": member_id(wired, "lobby", "user-b")}
    assert notice["source"] == member_id(wired, "lobby", "user-b")
    assert notice["room"] == "lobby"
    # AND the membership, the room count and the connection's count all drop
    assert wired.store.room_members("lobby") == ["a"]
    assert count_item(wired, "lobby") == 1
    assert connection_of(wired, "b").room_count == 0


def test_leave_of_a_room_not_joined_is_not_in_room(wired: Wired) -> None:
    wired.connect("a")
    reply = wired.send("a", {"action": "leaveRoom", "room": "lobby", "request_id": "x"})
    assert error_code(reply) == "NOT_IN_ROOM"
    assert reply["request_id"] == "x"
    assert count_item(wired, "lobby") == 0


def test_leaving_twice_is_not_in_room_the_second_time(wired: Wired) -> None:
    wired.connect("a")
    wired.send("a", {"action": "joinRoom", "room": "lobby"})
    assert wired.send("a", {"action": "leaveRoom", "room": "lobby"})["message_type"] == "leave_room"
    assert error_code(wired.send("a", {"action": "leaveRoom", "room": "lobby"})) == "NOT_IN_ROOM"
    assert count_item(wired, "lobby") == 0


# ---------------------------------------------------------------- room messages


def test_room_message_reaches_every_member_including_the_sender(wired: Wired) -> None:
    for cid in ("a", "b", "c", "outsider"):
        wired.connect(cid, user_id=f"user-{cid}")
    for cid in ("a", "b", "c"):
        wired.send(cid, {"action": "joinRoom", "room": "desk"})
    before = {cid: len(received(wired, cid)) for cid in ("a", "b", "c", "outsider")}
    # WHEN a sends a message
    reply = wired.send("a", {"action": "sendRoomMessage", "room": "desk", "message": "buy the dip", "request_id": "m1"})
    # THEN every member, sender included, gets room_message from a
    for cid in ("a", "b", "c"):
        [message] = received(wired, cid)[before[cid] :]
        assert message["message_type"] == "room_message"
        assert message["payload"]["message"] == "buy the dip"
        assert message["source"] == member_id(wired, "desk", "user-a")
        assert message["payload"]["member_id"] == member_id(wired, "desk", "user-a")
        assert message["room"] == "desk"
    # AND the sender's copy echoes its request id
    assert reply["request_id"] == "m1"
    # AND someone outside the room gets nothing
    assert len(received(wired, "outsider")) == before["outsider"]


def test_room_message_from_a_non_member_is_not_in_room(wired: Wired) -> None:
    wired.connect("a")
    wired.connect("b")
    wired.send("b", {"action": "joinRoom", "room": "desk"})
    before = len(received(wired, "b"))
    assert error_code(wired.send("a", {"action": "sendRoomMessage", "room": "desk", "message": "hi"})) == "NOT_IN_ROOM"
    assert len(received(wired, "b")) == before


def test_room_message_over_the_limit_is_message_too_large(wired: Wired) -> None:
    wired.connect("a")
    wired.connect("b")
    wired.send("a", {"action": "joinRoom", "room": "desk"})
    wired.send("b", {"action": "joinRoom", "room": "desk"})
    limit = wired.settings.limits.room_message_bytes
    assert limit == 4096
    before = len(received(wired, "b"))
    # WHEN one byte over the limit is sent, THEN MESSAGE_TOO_LARGE and nobody receives it
    reply = wired.send("a", {"action": "sendRoomMessage", "room": "desk", "message": "x" * (limit + 1)})
    assert error_code(reply) == "MESSAGE_TOO_LARGE"
    assert len(received(wired, "b")) == before
    # AND the size is counted in bytes, not characters
    reply = wired.send("a", {"action": "sendRoomMessage", "room": "desk", "message": "\u00e9" * (limit // 2 + 1)})
    assert error_code(reply) == "MESSAGE_TOO_LARGE"
    # AND exactly the limit goes through
    assert wired.send("a", {"action": "sendRoomMessage", "room": "desk", "message": "x" * limit})["message_type"] == (
        "room_message"
    )


def test_room_message_limit_is_configurable(settings: Settings, aws: dict[str, Any]) -> None:
    wired = with_limits(settings, aws, room_message_bytes=10)
    wired.connect("a")
    wired.send("a", {"action": "joinRoom", "room": "desk"})
    assert error_code(wired.send("a", {"action": "sendRoomMessage", "room": "desk", "message": "x" * 11})) == (
        "MESSAGE_TOO_LARGE"
    )
    assert wired.send("a", {"action": "sendRoomMessage", "room": "desk", "message": "x" * 10})["message_type"] == (
        "room_message"
    )


def test_room_message_to_a_member_that_is_gone_removes_it(wired: Wired) -> None:
    # GIVEN a member whose socket closed without $disconnect
    wired.connect("a")
    wired.connect("ghost")
    wired.send("a", {"action": "joinRoom", "room": "desk"})
    wired.send("ghost", {"action": "joinRoom", "room": "desk"})
    wired.gateway.gone.add("ghost")
    # WHEN a message is sent to the room, THEN the sender still gets its copy and the ghost is cleaned up
    assert wired.send("a", {"action": "sendRoomMessage", "room": "desk", "message": "hi"})["message_type"] == (
        "room_message"
    )
    assert wired.store.room_members("desk") == ["a"]
    assert wired.store.get_connection("ghost") is None
    assert count_item(wired, "desk") == 1


# ---------------------------------------------------------------- limits


def test_room_full(settings: Settings, aws: dict[str, Any]) -> None:
    wired = with_limits(settings, aws, clients_per_room=2)
    for cid in ("a", "b", "c"):
        wired.connect(cid, user_id=f"user-{cid}")
    wired.send("a", {"action": "joinRoom", "room": "small"})
    wired.send("b", {"action": "joinRoom", "room": "small"})
    # WHEN a third joins a room of capacity 2, THEN ROOM_FULL and nothing changes
    reply = wired.send("c", {"action": "joinRoom", "room": "small", "request_id": "f"})
    assert error_code(reply) == "ROOM_FULL"
    assert reply["request_id"] == "f"
    assert sorted(wired.store.room_members("small")) == ["a", "b"]
    assert count_item(wired, "small") == 2
    assert connection_of(wired, "c").room_count == 0
    # AND once someone leaves there is room again
    wired.send("a", {"action": "leaveRoom", "room": "small"})
    assert wired.send("c", {"action": "joinRoom", "room": "small"})["message_type"] == "join_room"


def test_default_capacity_is_a_thousand_clients(wired: Wired) -> None:
    # GIVEN a room holding 999 members (the count item, as 999 joins would leave it)
    assert wired.settings.limits.clients_per_room == 1000
    wired.store._db.put_item(
        TableName=wired.settings.rooms_table,
        Item={"room": {"S": "arena"}, "member_id": {"S": ROOM_META}, "member_count": {"N": "999"}},
    )
    wired.connect("a", user_id="user-a")
    wired.connect("b", user_id="user-b")
    # THEN the 1000th joins and the 1001st gets ROOM_FULL
    assert wired.send("a", {"action": "joinRoom", "room": "arena"})["message_type"] == "join_room"
    assert error_code(wired.send("b", {"action": "joinRoom", "room": "arena"})) == "ROOM_FULL"
    assert count_item(wired, "arena") == 1000


def test_room_limit_per_client(wired: Wired) -> None:
    limit = wired.settings.limits.rooms_per_client
    assert limit == 10
    wired.connect("a")
    for i in range(limit):
        assert wired.send("a", {"action": "joinRoom", "room": f"room-{i}"})["message_type"] == "join_room"
        wired.clock.advance(1)  # joins weigh 10 against the rate budget, which is not under test here
    # WHEN an eleventh room is joined, THEN ROOM_LIMIT, and the room gains no member
    reply = wired.send("a", {"action": "joinRoom", "room": "one-too-many"})
    assert error_code(reply) == "ROOM_LIMIT"
    assert wired.store.room_members("one-too-many") == []
    assert count_item(wired, "one-too-many") == 0
    assert connection_of(wired, "a").room_count == limit
    # AND rejoining a room it is already in is still fine, and leaving one frees a place
    assert wired.send("a", {"action": "joinRoom", "room": "room-0"})["payload"]["already_member"] is True
    wired.send("a", {"action": "leaveRoom", "room": "room-0"})
    assert wired.send("a", {"action": "joinRoom", "room": "one-too-many"})["message_type"] == "join_room"


def test_room_limit_is_configurable(settings: Settings, aws: dict[str, Any]) -> None:
    wired = with_limits(settings, aws, rooms_per_client=1)
    wired.connect("a")
    wired.send("a", {"action": "joinRoom", "room": "one"})
    assert error_code(wired.send("a", {"action": "joinRoom", "room": "two"})) == "ROOM_LIMIT"


# ---------------------------------------------------------------- names and permissions


INVALID_ROOM_NAMES = [
    "",
    "has space",
    "slash/room",
    "r" * 65,
    "caf\u00e9",
    "semi;colon",
    "tab\t",
    "*",
    "#meta",
    "desk\n",  # `$` in a `match` pattern would let a trailing newline through
    "Market_Data_AAPL",  # a look-alike of a data room: data rooms have one spelling
    "market_data_aapl",
    "ALERTS",
    "predictions_",
]


@pytest.mark.parametrize("action", ["joinRoom", "leaveRoom", "sendRoomMessage"])
def test_invalid_room_names(wired: Wired, action: str) -> None:
    # GIVEN names outside ^[A-Za-z0-9_.:-]{1,64}$ (including the count item's own key)
    wired.connect("a")
    for room in INVALID_ROOM_NAMES:
        frame: dict[str, Any] = {"action": action, "room": room}
        if action == "sendRoomMessage":
            frame["message"] = "hi"
        # THEN each is INVALID_ROOM and creates nothing
        assert error_code(wired.send("a", frame)) == "INVALID_ROOM", room
        wired.clock.advance(1)  # room actions weigh 10 against the rate budget, which is not under test here
    assert wired.store.rooms_of("a") == []


@pytest.mark.parametrize("room", ["a", "A-z_0.9:x", "r" * 64, "market_data", "administrator", "alerts_x", "systems"])
def test_valid_room_names(wired: Wired, room: str) -> None:
    wired.connect("a", permissions=MEMBER)
    assert wired.send("a", {"action": "joinRoom", "room": room})["message_type"] == "join_room"


@pytest.mark.parametrize(
    ("room", "permission"),
    [
        ("market_data_AAPL", "read:market_data"),
        ("predictions_TSLA", "read:predictions"),
        ("alerts", "read:alerts"),
        ("admin.ops", "admin"),
    ],
)
def test_data_and_admin_rooms_need_their_permission(wired: Wired, room: str, permission: str) -> None:
    # GIVEN a client allowed to join rooms but without the room's read permission
    wired.connect("plain", user_id="plain", permissions=MEMBER)
    wired.connect("reader", user_id="reader", permissions=(*MEMBER, permission))
    # THEN it gets FORBIDDEN and does not become a member
    reply = wired.send("plain", {"action": "joinRoom", "room": room})
    assert error_code(reply) == "FORBIDDEN"
    assert wired.store.room_members(room) == []
    # AND a client with the permission joins
    assert wired.send("reader", {"action": "joinRoom", "room": room})["message_type"] == "join_room"


@pytest.mark.parametrize(
    "room", ["admin", "ADMIN", "Admin.ops", "ADMIN.x", "admin.ops", "system", "System", "system.x"]
)
def test_reserved_names_and_prefixes_need_admin_whatever_their_case(wired: Wired, room: str) -> None:
    # GIVEN a member who may join and send, but is not an admin, and an admin
    wired.connect("plain", user_id="plain", permissions=MEMBER)
    wired.connect("root", user_id="root", permissions=("admin",))
    # WHEN the member joins or writes to a reserved name in any case
    # THEN FORBIDDEN, and nothing is created
    assert error_code(wired.send("plain", {"action": "joinRoom", "room": room})) == "FORBIDDEN"
    reply = wired.send("plain", {"action": "sendRoomMessage", "room": room, "message": "hi"})
    assert error_code(reply) == "FORBIDDEN"
    assert wired.store.room_members(room) == []
    # AND the admin may join it
    assert wired.send("root", {"action": "joinRoom", "room": room})["message_type"] == "join_room"


def test_admin_may_join_every_room(wired: Wired) -> None:
    wired.connect("root", permissions=("admin",))
    for room in ("admin.ops", "market_data_AAPL", "alerts", "predictions_X", "lobby"):
        assert wired.send("root", {"action": "joinRoom", "room": room})["message_type"] == "join_room"


def test_other_read_permissions_do_not_open_a_data_room(wired: Wired) -> None:
    wired.connect("a", permissions=(*MEMBER, "read:predictions", "read:alerts"))
    assert error_code(wired.send("a", {"action": "joinRoom", "room": "market_data_AAPL"})) == "FORBIDDEN"


def test_joining_needs_rooms_join(wired: Wired) -> None:
    wired.connect("a", permissions=("rooms:send", "read:market_data"))
    assert error_code(wired.send("a", {"action": "joinRoom", "room": "lobby"})) == "FORBIDDEN"
    assert wired.store.room_members("lobby") == []


def test_sending_needs_rooms_send(wired: Wired) -> None:
    wired.connect("a", permissions=("rooms:join",))
    wired.connect("b")
    wired.send("a", {"action": "joinRoom", "room": "lobby"})
    wired.send("b", {"action": "joinRoom", "room": "lobby"})
    before = len(received(wired, "b"))
    assert error_code(wired.send("a", {"action": "sendRoomMessage", "room": "lobby", "message": "hi"})) == "FORBIDDEN"
    assert len(received(wired, "b")) == before


def test_sending_to_an_admin_room_needs_admin(wired: Wired) -> None:
    wired.connect("a", permissions=MEMBER)
    reply = wired.send("a", {"action": "sendRoomMessage", "room": "admin.ops", "message": "hi"})
    assert error_code(reply) == "FORBIDDEN"


# ---------------------------------------------------------------- concurrency


@pytest.fixture
def atomic_requests(aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """One DynamoDB request at a time, as DynamoDB makes each request atomic.

    moto's in-process backend is not thread-safe for transactions: it snapshots a
    table before a transaction and restores the snapshot on failure, which can
    undo another thread's write in between. DynamoDB itself never does that. The
    lock restores per-request atomicity and nothing more: threads still interleave
    between requests, which is exactly where a read-then-write limit would let two
    joins take the last place.
    """
    client = aws["dynamodb"]
    lock = threading.Lock()
    make_api_call = client._make_api_call

    def atomic(operation_name: str, api_params: dict[str, Any]) -> Any:
        with lock:
            return make_api_call(operation_name, api_params)

    monkeypatch.setattr(client, "_make_api_call", atomic)


def _race(count: int, work: Any) -> list[Any]:
    """Run `work(i)` on `count` threads released together."""
    barrier = threading.Barrier(count)

    def run(i: int) -> Any:
        barrier.wait()
        return work(i)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def test_concurrent_joins_race_for_the_last_places(
    settings: Settings, aws: dict[str, Any], atomic_requests: None
) -> None:
    # GIVEN a room of capacity 5 and 20 clients joining it at the same moment
    capacity, clients = 5, 20
    wired = with_limits(settings, aws, clients_per_room=capacity)
    for i in range(clients):
        wired.connect(f"c{i:02d}", user_id=f"user-{i}")

    def join(i: int) -> str:
        cid = f"c{i:02d}"
        wired.service.handle_frame(cid, '{"action": "joinRoom", "room": "hot"}')
        [reply] = [m for m in received(wired, cid) if m.get("target") == cid]
        return reply["message_type"] if reply["message_type"] != "error" else reply["payload"]["error_code"]

    # WHEN they race
    results = Counter(_race(clients, join))
    # THEN exactly `capacity` win, the rest get ROOM_FULL, and the count item equals the members
    assert results == {"join_room": capacity, "ROOM_FULL": clients - capacity}
    members = wired.store.room_members("hot")
    assert len(members) == capacity
    assert count_item(wired, "hot") == capacity
    assert sum(connection_of(wired, f"c{i:02d}").room_count for i in range(clients)) == capacity


def test_concurrent_joins_of_one_client_respect_its_room_limit(
    settings: Settings, aws: dict[str, Any], atomic_requests: None
) -> None:
    # GIVEN one connection joining 12 rooms at once with a limit of 4
    wired = with_limits(settings, aws, rooms_per_client=4)
    wired.connect("a")
    outcomes = Counter(
        _race(12, lambda i: wired.store.join_room(f"room-{i}", "a", "user-1", JoinLimits(capacity=1000, room_limit=4)))
    )
    # THEN exactly 4 joins win and the counter agrees with the memberships
    assert outcomes == {Outcome.DONE: 4, Outcome.LIMIT: 8}
    assert len(wired.store.rooms_of("a")) == 4
    assert connection_of(wired, "a").room_count == 4


def test_concurrent_joins_and_leaves_keep_the_count_equal_to_the_members(
    settings: Settings, aws: dict[str, Any], atomic_requests: None
) -> None:
    # GIVEN ten members of a room for fifteen, five of whom leave while five others join, all at once
    wired = with_limits(settings, aws, clients_per_room=15)
    for i in range(15):
        wired.connect(f"c{i:02d}", user_id=f"u{i}")
    for i in range(10):
        wired.store.join_room("mixed", f"c{i:02d}", f"u{i}", JoinLimits(capacity=15, room_limit=10))

    def move(i: int) -> Outcome | None:
        if i < 5:
            return wired.store.leave_room("mixed", f"c{i:02d}")
        return wired.store.join_room("mixed", f"c{i + 5:02d}", f"u{i + 5}", JoinLimits(capacity=15, room_limit=10))

    results = _race(10, move)
    # THEN every change went through (capacity 15 leaves room for all joins before any leave)
    assert results == [Outcome.DONE] * 10
    # AND the count item equals the members: 10 - 5 + 5
    assert len(wired.store.room_members("mixed")) == 10
    assert count_item(wired, "mixed") == 10


def test_leaving_a_data_room_needs_no_permission(wired: Wired) -> None:
    # GIVEN a client that is in a data room it may no longer read (it joined before its permissions changed)
    wired.connect("a", permissions=MEMBER)
    assert (
        wired.store.join_room("market_data_AAPL", "a", "user-1", JoinLimits(capacity=10, room_limit=10)) is Outcome.DONE
    )
    # WHEN it leaves the room, THEN it may: leaving only ever reduces what it receives
    assert wired.send("a", {"action": "leaveRoom", "room": "market_data_AAPL"})["message_type"] == "leave_room"
    assert wired.store.room_members("market_data_AAPL") == []


# ---------------------------------------------------------------- what one frame may cost


def presence_notices(wired: Wired, connection_id: str) -> list[dict[str, Any]]:
    """Join and leave notices about others (answers to the member's own requests carry `success`)."""
    return [
        m
        for m in received(wired, connection_id)
        if m["message_type"] in ("join_room", "leave_room") and "success" not in m["payload"]
    ]


def test_data_rooms_announce_no_joins_or_leaves(wired: Wired) -> None:
    # GIVEN a member of a data room
    wired.connect("a", user_id="user-a")
    wired.connect("b", user_id="user-b")
    wired.send("a", {"action": "joinRoom", "room": "market_data_AAPL"})
    # WHEN someone else joins and leaves it
    assert (
        wired.send("b", {"action": "joinRoom", "room": "market_data_AAPL", "request_id": "j"})["message_type"]
        == "join_room"
    )
    assert (
        wired.send("b", {"action": "leaveRoom", "room": "market_data_AAPL", "request_id": "l"})["message_type"]
        == "leave_room"
    )
    # THEN the member hears of neither
    assert presence_notices(wired, "a") == []


def test_rooms_above_the_presence_threshold_announce_no_joins_or_leaves(
    settings: Settings, aws: dict[str, Any]
) -> None:
    # GIVEN presence announced up to 2 members, and a room with 2
    wired = with_limits(settings, aws, presence_max_members=2)
    for cid in ("a", "b", "c"):
        wired.connect(cid, user_id=f"user-{cid}")
    wired.send("a", {"action": "joinRoom", "room": "busy"})
    wired.send("b", {"action": "joinRoom", "room": "busy"})
    assert len(presence_notices(wired, "a")) == 1  # b's join, while the room was small
    # WHEN a third joins (the room is above the threshold) and leaves again
    wired.send("c", {"action": "joinRoom", "room": "busy"})
    wired.send("c", {"action": "leaveRoom", "room": "busy"})
    # THEN nobody is told of either
    assert len(presence_notices(wired, "a")) == 1
    assert presence_notices(wired, "b") == []


def test_flapping_in_and_out_of_a_room_is_limited_and_leaving_never_is(settings: Settings, aws: dict[str, Any]) -> None:
    # GIVEN 3 joins per minute, a member of a chat room, and a user on two connections
    wired = with_limits(settings, aws, room_joins_per_minute=3)
    wired.connect("member", user_id="quiet")
    wired.send("member", {"action": "joinRoom", "room": "desk"})
    wired.connect("web", user_id="flapper")
    wired.connect("bot", user_id="flapper")
    # WHEN the user joins and leaves the room three times, from either connection
    for cid in ("web", "bot", "web"):
        assert wired.send(cid, {"action": "joinRoom", "room": "desk"})["message_type"] == "join_room"
        assert wired.send(cid, {"action": "leaveRoom", "room": "desk"})["message_type"] == "leave_room"
    # THEN the fourth join is refused with RATE_LIMIT and announced to nobody
    reply = wired.send("bot", {"action": "joinRoom", "room": "desk", "request_id": "j"})
    assert (error_code(reply), reply["request_id"]) == ("RATE_LIMIT", "j")
    assert len(presence_notices(wired, "member")) == 6
    # AND another room has its own allowance
    assert wired.send("web", {"action": "joinRoom", "room": "other"})["message_type"] == "join_room"
    # AND a minute later the user may join again
    wired.clock.now += 120
    assert wired.send("bot", {"action": "joinRoom", "room": "desk"})["message_type"] == "join_room"


def test_a_rooms_count_expires_with_its_last_possible_member(wired: Wired) -> None:
    def count_item(room: str) -> dict[str, Any]:
        key = {"room": {"S": room}, "member_id": {"S": ROOM_META}}
        return wired.store._db.get_item(TableName=wired.settings.rooms_table, Key=key)["Item"]

    def membership_expiry(room: str, connection_id: str) -> int:
        key = {"room": {"S": room}, "member_id": {"S": connection_id}}
        return int(wired.store._db.get_item(TableName=wired.settings.rooms_table, Key=key)["Item"]["expires_at"]["N"])

    # GIVEN a room named once, joined and left
    wired.connect("a", user_id="u")
    wired.send("a", {"action": "joinRoom", "room": "once"})
    wired.send("a", {"action": "leaveRoom", "room": "once"})
    # THEN its count item expires (TTL), as its memberships do, rather than staying forever
    assert int(count_item("once")["expires_at"]["N"]) > wired.clock.now
    # GIVEN a room the user joins, and later joins again from a second connection (the same seat)
    wired.send("a", {"action": "joinRoom", "room": "desk"})
    wired.clock.now += 600
    wired.connect("b", user_id="u")
    wired.send("b", {"action": "joinRoom", "room": "desk"})
    # THEN the count lives as long as the newest membership
    assert int(count_item("desk")["expires_at"]["N"]) == membership_expiry("desk", "b") > membership_expiry("desk", "a")


def test_room_messages_are_limited_per_user_and_room(settings: Settings, aws: dict[str, Any]) -> None:
    # GIVEN 3 room messages per minute, and a user on two connections in two rooms
    wired = with_limits(settings, aws, room_messages_per_minute=3)
    wired.connect("web", user_id="chatty")
    wired.connect("bot", user_id="chatty")
    wired.connect("reader", user_id="quiet")
    for cid in ("web", "bot", "reader"):
        wired.send(cid, {"action": "joinRoom", "room": "desk"})
    wired.send("web", {"action": "joinRoom", "room": "other"})
    heard = len(received(wired, "reader"))
    # WHEN the user sends 3 messages to desk from one connection, then one more from the other
    for i in range(3):
        assert (
            wired.send("web", {"action": "sendRoomMessage", "room": "desk", "message": f"m{i}"})["message_type"]
            == "room_message"
        )
    reply = wired.send(
        "bot", {"action": "sendRoomMessage", "room": "desk", "message": "one too many", "request_id": "x"}
    )
    # THEN the fourth is refused with RATE_LIMIT and reaches nobody
    assert error_code(reply) == "RATE_LIMIT"
    assert reply["request_id"] == "x"
    assert len(received(wired, "reader")) == heard + 3
    # AND another room has its own allowance
    assert (
        wired.send("web", {"action": "sendRoomMessage", "room": "other", "message": "hi"})["message_type"]
        == "room_message"
    )
    # AND the window slides (refused attempts count too): in the next minute the earlier ones still weigh,
    # two minutes on they do not
    wired.clock.advance(70)
    assert (
        error_code(wired.send("web", {"action": "sendRoomMessage", "room": "desk", "message": "still?"}))
        == "RATE_LIMIT"
    )
    wired.clock.advance(60)
    assert (
        wired.send("web", {"action": "sendRoomMessage", "room": "desk", "message": "ok"})["message_type"]
        == "room_message"
    )


# ---------------------------------------------------------------- data rooms and identities


@pytest.mark.parametrize("room", ["alerts", "market_data_AAPL", "predictions_TSLA"])
def test_nobody_may_post_into_a_data_room(wired: Wired, room: str) -> None:
    # GIVEN two members of a data room, one of them an admin
    wired.connect("user", user_id="user-u")
    wired.connect("root", user_id="root", permissions=("admin",))
    for cid in ("user", "root"):
        assert wired.send(cid, {"action": "joinRoom", "room": room})["message_type"] == "join_room"
    before = len(received(wired, "root"))
    # WHEN either sends a room message into it
    for cid in ("user", "root"):
        reply = wired.send(cid, {"action": "sendRoomMessage", "room": room, "message": "CRITICAL: halted, sell now"})
        # THEN FORBIDDEN, and no member gets anything
        assert error_code(reply) == "FORBIDDEN"
    assert [m["message_type"] for m in received(wired, "root")[before:]] == ["error"]


def test_room_traffic_names_members_by_a_pseudonym_per_room(wired: Wired) -> None:
    # GIVEN a user whose subject is an e-mail address, and a watcher, in two rooms
    wired.connect("alice-conn", user_id="alice@example.com")
    wired.connect("watcher", user_id="watcher")
    for room in ("desk", "lobby"):
        wired.send("watcher", {"action": "joinRoom", "room": room})
    # WHEN she joins both and speaks in both
    replies = {room: wired.send("alice-conn", {"action": "joinRoom", "room": room}) for room in ("desk", "lobby")}
    for room in ("desk", "lobby"):
        wired.send("alice-conn", {"action": "sendRoomMessage", "room": room, "message": "hi"})
    seen = [json.dumps(m) for m in received(wired, "watcher")]
    # THEN nothing the watcher received carries her subject or her connection id
    assert seen and not [m for m in seen if "alice@example.com" in m or "alice-conn" in m]
    # AND she appears under one id per room, different between rooms, which her join reply tells her
    ids = {room: replies[room]["payload"]["member_id"] for room in ("desk", "lobby")}
    assert ids["desk"] != ids["lobby"]
    for room in ("desk", "lobby"):
        from_her = [m for m in received(wired, "watcher") if m["room"] == room and m["message_type"] != "join_room"]
        notices = [m for m in received(wired, "watcher") if m["room"] == room and "success" not in m["payload"]]
        assert {m["source"] for m in from_her + notices} == {ids[room]}


# ---------------------------------------------------------------- one seat per user


def test_a_user_holds_one_seat_in_a_room_whatever_their_connections(settings: Settings, aws: dict[str, Any]) -> None:
    # GIVEN a room for 2, and a user on three connections
    wired = with_limits(settings, aws, clients_per_room=2)
    for cid in ("web", "mobile", "bot"):
        wired.connect(cid, user_id="hog")
    wired.connect("other", user_id="other")
    wired.connect("third", user_id="third")
    # WHEN all three of the user's connections join
    replies = [wired.send(cid, {"action": "joinRoom", "room": "small"}) for cid in ("web", "mobile", "bot")]
    # THEN all are in, on one seat, under one member id
    assert [r["message_type"] for r in replies] == ["join_room"] * 3
    assert len({r["payload"]["member_id"] for r in replies}) == 1
    assert count_item(wired, "small") == 1
    assert sorted(wired.store.room_members("small")) == ["bot", "mobile", "web"]
    # AND another user still gets the second seat, and only then is the room full
    assert wired.send("other", {"action": "joinRoom", "room": "small"})["message_type"] == "join_room"
    assert error_code(wired.send("third", {"action": "joinRoom", "room": "small"})) == "ROOM_FULL"
    heard = len(presence_notices(wired, "other"))
    # WHEN two of the user's connections leave, THEN the seat stays, and nobody is told the user left
    for cid in ("web", "mobile"):
        assert wired.send(cid, {"action": "leaveRoom", "room": "small"})["message_type"] == "leave_room"
    assert count_item(wired, "small") == 2
    assert len(presence_notices(wired, "other")) == heard
    # WHEN the last one goes (by disconnecting), THEN the seat is free for someone else
    wired.service.disconnect("bot")
    assert count_item(wired, "small") == 1
    assert wired.send("third", {"action": "joinRoom", "room": "small"})["message_type"] == "join_room"
    assert connection_of(wired, "web").room_count == 0
