"""Resume and replay: a client that reconnects gets what it missed, in order, once, or is told it cannot.

A subscriber says hello (session token), disconnects, events are fanned out while it
is away, and a new connection of the same user resumes with the token and the last
seq it saw per stream.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from quanttrade_ws.auth import Session, SessionTokens
from quanttrade_ws.config import Limits
from tests.conftest import Wired
from tests.integration import events_builder as eb
from tests.integration.test_fanout import AAPL, MSFT, data, seqs, subscribe

STREAM = "market_data:AAPL"


@pytest.fixture
def wired(wired: Wired) -> Wired:
    # Retention follows the test clock, so moving it past history_seconds expires history.
    wired.store.clock = wired.clock
    return wired


def hello(wired: Wired, connection_id: str) -> str:
    reply = wired.send(connection_id, {"action": "hello"})
    assert reply["message_type"] == "connect", reply
    return str(reply["payload"]["session_token"])


def drop(wired: Wired, connection_id: str) -> None:
    """The socket closes: the gateway forgets it and $disconnect runs."""
    wired.gateway.gone.add(connection_id)
    wired.service.disconnect(connection_id)


def publish(wired: Wired, *events: dict[str, Any]) -> None:
    response = wired.fanout.process_events(eb.records(*events))
    assert response == {"batchItemFailures": []}


def resume(wired: Wired, connection_id: str, token: str, last_seq: dict[str, int]) -> list[dict[str, Any]]:
    """Send resume; returns everything the connection received in answer, in order."""
    before = len(wired.gateway.messages(connection_id))
    wired.send(connection_id, {"action": "resume", "session_token": token, "last_seq": last_seq})
    return wired.gateway.messages(connection_id)[before:]


def ticks(count: int, symbol: str = "AAPL", start: float = 100.0) -> list[dict[str, Any]]:
    return [eb.market_data(symbol, price=start + i) for i in range(count)]


@pytest.fixture
def away(wired: Wired) -> dict[str, Any]:
    """GIVEN a client of user-1 on AAPL that saw seq 1-2 and went away, a witness that stays,
    and 3 more AAPL ticks fanned out while the client was away."""
    wired.connect("old")
    wired.connect("witness", user_id="user-2")
    token = hello(wired, "old")
    subscribe(wired, "old", AAPL)
    subscribe(wired, "witness", AAPL)
    publish(wired, *ticks(2))
    assert seqs(wired, "old") == [1, 2]
    drop(wired, "old")
    publish(wired, *ticks(3, start=200))
    return {"token": token}


def test_hello_returns_a_session_token(wired: Wired):
    # GIVEN a connected client  WHEN it says hello
    wired.connect("c")
    reply = wired.send("c", {"action": "hello"})
    # THEN the answer carries its client id and a session token that the service's key verifies
    assert reply["payload"]["client_id"] == "c"
    session = wired.service.session_tokens.verify(reply["payload"]["session_token"])
    assert session.user_id == "user-1"


def test_resume_replays_the_missed_messages_in_order_with_their_seq_then_says_resumed(wired: Wired, away):
    # WHEN a new connection of the same user resumes after seq 2
    wired.connect("new")
    received = resume(wired, "new", away["token"], {STREAM: 2})

    # THEN it receives 3, 4, 5 exactly as the witness received them live, then `resumed`
    replayed, resumed = received[:-1], received[-1]
    assert [m["seq"] for m in replayed] == [3, 4, 5]
    assert replayed == data(wired, "witness")[2:]
    assert resumed["message_type"] == "resumed"
    assert resumed["payload"]["recovered"] is True
    assert resumed["payload"]["streams"] == {STREAM: {"recovered": True, "replayed": 3, "first_seq": 3, "last_seq": 5}}
    assert resumed["payload"]["subscriptions"] == [STREAM]
    assert resumed["payload"]["client_id"] == "new"


def test_after_resume_live_data_continues_without_loss_or_doubles(wired: Wired, away):
    # GIVEN the client resumed on a new connection after seq 2
    wired.connect("new")
    resume(wired, "new", away["token"], {STREAM: 2})

    # WHEN more ticks arrive (after the fan-out's audience cache time)
    wired.clock.now += 1
    publish(wired, *ticks(2, start=300))

    # THEN the restored subscription delivers them: 3..7, each once, in order
    assert seqs(wired, "new", STREAM) == [3, 4, 5, 6, 7]
    assert seqs(wired, "witness", STREAM) == [1, 2, 3, 4, 5, 6, 7]


def test_events_right_after_a_resume_are_not_lost(wired: Wired, away):
    # GIVEN the fan-out has the AAPL audience cached (without the resumed connection)
    publish(wired, *ticks(1, start=250))  # seq 6, cached audience: the witness only
    wired.connect("new")
    resume(wired, "new", away["token"], {STREAM: 2})  # replays 3..6

    # WHEN the next tick is fanned out 0.1 s later, and another one a second later
    wired.clock.now += 0.1
    publish(wired, *ticks(1, start=300))  # seq 7
    wired.clock.now += 1
    publish(wired, *ticks(1, start=400))  # seq 8

    # THEN the resumed client has every seq from 3 on, without a gap
    assert seqs(wired, "new", STREAM) == [3, 4, 5, 6, 7, 8]


def test_a_stream_without_symbol_replays_too(wired: Wired):
    # GIVEN a client on alerts that saw alert 1 and went away while two more were raised
    wired.connect("old")
    token = hello(wired, "old")
    subscribe(wired, "old", {"stream_type": "alerts"})
    publish(wired, eb.alert())
    drop(wired, "old")
    publish(wired, eb.alert(severity="critical"), eb.alert(severity="low"))
    # WHEN it resumes after alerts seq 1
    wired.connect("new")
    received = resume(wired, "new", token, {"alerts": 1})
    # THEN alerts 2 and 3 arrive and the stream is recovered
    assert [(m["stream"], m["seq"], m["payload"]["severity"]) for m in received[:-1]] == [
        ("alerts", 2, "critical"),
        ("alerts", 3, "low"),
    ]
    assert received[-1]["payload"]["streams"]["alerts"]["recovered"] is True


def test_resume_with_nothing_missed_replays_nothing(wired: Wired, away):
    # WHEN the client resumes at the head of the stream
    wired.connect("new")
    received = resume(wired, "new", away["token"], {STREAM: 5})
    # THEN only `resumed` arrives, recovered
    assert [m["message_type"] for m in received] == ["resumed"]
    assert received[0]["payload"]["recovered"] is True
    assert received[0]["payload"]["streams"][STREAM]["replayed"] == 0


def test_resume_covers_each_stream_separately(wired: Wired):
    # GIVEN a client on AAPL and MSFT that saw AAPL 1 and MSFT 1-2, then went away while both moved on
    wired.connect("old")
    token = hello(wired, "old")
    subscribe(wired, "old", AAPL, MSFT)
    publish(wired, eb.market_data("AAPL"), eb.market_data("MSFT"), eb.market_data("MSFT"))
    drop(wired, "old")
    publish(wired, *ticks(2, "AAPL"), *ticks(1, "MSFT"))

    # WHEN it resumes with its last seq per stream
    wired.connect("new")
    received = resume(wired, "new", token, {STREAM: 1, "market_data:MSFT": 2})

    # THEN each stream's missed messages arrive, in order, and the report is per stream
    got = [(m["stream"], m["seq"]) for m in received[:-1]]
    assert [s for s in got if s[0] == STREAM] == [(STREAM, 2), (STREAM, 3)]
    assert [s for s in got if s[0] == "market_data:MSFT"] == [("market_data:MSFT", 3)]
    streams = received[-1]["payload"]["streams"]
    assert streams[STREAM]["recovered"] and streams["market_data:MSFT"]["recovered"]
    assert (streams[STREAM]["replayed"], streams["market_data:MSFT"]["replayed"]) == (2, 1)


def test_more_missed_than_retained_messages_is_not_recovered(wired: Wired, rewire_history):
    # GIVEN history keeps 3 messages per stream, and a client away for 5
    short = rewire_history(history_messages=3)
    short.connect("old")
    token = hello(short, "old")
    subscribe(short, "old", AAPL)
    short.fanout.process_events(eb.records(*ticks(1)))
    drop(short, "old")
    short.fanout.process_events(eb.records(*ticks(5, start=200)))

    # WHEN it resumes after seq 1
    short.connect("new")
    received = resume(short, "new", token, {STREAM: 1})

    # THEN it is told the stream was not recovered (seq 2 and 3 are gone), with what history still had
    resumed = received[-1]
    assert resumed["payload"]["recovered"] is False
    assert resumed["payload"]["streams"][STREAM]["recovered"] is False
    assert resumed["payload"]["streams"][STREAM]["first_seq"] == 4
    assert [m["seq"] for m in received[:-1]] == [4, 5, 6]


def test_history_older_than_history_seconds_is_not_recovered(wired: Wired, away):
    # GIVEN the client stays away longer than history is retained (300 s)
    wired.clock.now += wired.settings.history_seconds + 1

    # WHEN it resumes after seq 2
    wired.connect("new")
    received = resume(wired, "new", away["token"], {STREAM: 2})

    # THEN nothing is replayed and it is told so
    assert [m["message_type"] for m in received] == ["resumed"]
    assert received[0]["payload"]["recovered"] is False
    assert received[0]["payload"]["streams"][STREAM]["replayed"] == 0


def test_partly_expired_history_is_not_recovered(wired: Wired):
    # GIVEN a client that saw seq 1, then seq 2 was fanned out, and 200 s later seq 3 and 4
    wired.connect("old")
    token = hello(wired, "old")
    subscribe(wired, "old", AAPL)
    publish(wired, *ticks(1))
    drop(wired, "old")
    publish(wired, *ticks(1, start=200))
    wired.clock.now += 200
    publish(wired, *ticks(2, start=300))

    # WHEN it resumes 150 s later (seq 2 is now 350 s old, past the 300 s retention)
    wired.clock.now += 150
    wired.connect("new")
    received = resume(wired, "new", token, {STREAM: 1})

    # THEN it gets 3 and 4, but is told seq 2 could not be recovered
    assert [m["seq"] for m in received[:-1]] == [3, 4]
    assert received[-1]["payload"]["recovered"] is False


def test_another_users_session_token_is_refused(wired: Wired, away):
    # WHEN a connection of another user presents user-1's session token
    wired.connect("intruder", user_id="user-9")
    received = resume(wired, "intruder", away["token"], {STREAM: 0})

    # THEN AUTH_FAILED, nothing replayed, and no subscription was taken over
    assert [m["message_type"] for m in received] == ["error"]
    assert received[0]["payload"]["error_code"] == "AUTH_FAILED"
    assert wired.store.subscriptions_of("intruder") == []


def _tampered(token: str) -> str:
    body, _, mac = token.partition(".")
    claims = json.loads(_unb64(body))
    claims["uid"] = "user-9"
    return f"{_b64(json.dumps(claims).encode())}.{mac}"


def _b64(raw: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda token: "not-a-token", id="garbage"),
        pytest.param(lambda token: token[:-2] + ("AA" if not token.endswith("AA") else "BB"), id="bad-mac"),
        pytest.param(_tampered, id="other-user-in-body"),
        pytest.param(
            lambda token: SessionTokens("another-secret").issue(Session("s", "user-9", 2_000_000_000)),
            id="signed-with-another-key",
        ),
    ],
)
def test_a_forged_session_token_is_refused(wired: Wired, away, forge):
    # WHEN a user-9 connection resumes with a forged token
    wired.connect("forger", user_id="user-9")
    received = resume(wired, "forger", forge(away["token"]), {STREAM: 0})
    # THEN AUTH_FAILED and nothing replayed
    assert [m["message_type"] for m in received] == ["error"]
    assert received[0]["payload"]["error_code"] == "AUTH_FAILED"


def test_an_expired_session_token_is_refused(wired: Wired, away):
    # GIVEN the session token's lifetime has passed
    wired.clock.now += wired.settings.token_expiry_hours * 3600 + 1
    # WHEN the client resumes with it (its access token is fresh)
    wired.connect("new", expires_in=3600)
    received = resume(wired, "new", away["token"], {STREAM: 2})
    # THEN AUTH_FAILED
    assert received[-1]["payload"]["error_code"] == "AUTH_FAILED"


def test_a_replay_larger_than_128_kb_is_split_into_several_frames(wired: Wired):
    # GIVEN a client away while 12 ticks of about 20 KB each were fanned out (about 240 KB)
    wired.connect("old")
    token = hello(wired, "old")
    subscribe(wired, "old", AAPL)
    drop(wired, "old")
    big = []
    for i in range(12):
        event = eb.market_data(price=100 + i)
        event["detail"]["depth"] = "x" * 20_000
        big.append(event)
    for start in range(0, 12, 4):
        publish(wired, *big[start : start + 4])

    # WHEN it resumes from seq 0
    wired.connect("new")
    before = len(wired.gateway.sent["new"])
    received = resume(wired, "new", token, {STREAM: 0})

    # THEN the replay came in several frames, none above 128 KB, together holding seq 1-12 in order
    frames = wired.gateway.sent["new"][before:-1]
    limit = wired.settings.limits.max_message_bytes
    assert len(frames) >= 2
    assert all(len(frame) <= limit for frame in frames)
    assert [m["seq"] for m in received[:-1]] == list(range(1, 13))
    assert received[-1]["payload"]["recovered"] is True


def test_the_token_from_resumed_resumes_again(wired: Wired, away):
    # GIVEN the client resumed once and got a fresh session token
    wired.connect("new")
    first = resume(wired, "new", away["token"], {STREAM: 2})
    token = first[-1]["payload"]["session_token"]
    # WHEN that connection drops, two more ticks arrive, and it resumes again with the new token
    drop(wired, "new")
    wired.clock.now += 1
    publish(wired, *ticks(2, start=400))
    wired.connect("newer")
    second = resume(wired, "newer", token, {STREAM: 5})
    # THEN it gets 6 and 7, recovered, with its subscription restored once more
    assert [m["seq"] for m in second[:-1]] == [6, 7]
    assert second[-1]["payload"]["recovered"] is True
    assert second[-1]["payload"]["subscriptions"] == [STREAM]


def test_chaining_resumes_on_one_connection_is_limited_and_keeps_the_token(wired: Wired, away):
    # GIVEN a connection that resumed and then chains each answer's token into the next resume
    wired.connect("new")
    token = away["token"]
    for _ in range(3):
        answer = resume(wired, "new", token, {STREAM: 0})
        assert answer[-1]["message_type"] == "resumed", answer[-1]
        token = answer[-1]["payload"]["session_token"]
    # WHEN it resumes a fourth time within the minute
    refused = resume(wired, "new", token, {STREAM: 0})
    # THEN it is refused with RATE_LIMIT and nothing is replayed
    assert [m["message_type"] for m in refused] == ["error"]
    assert refused[0]["payload"]["error_code"] == "RATE_LIMIT"
    # AND the token was not spent: a new connection (a reconnect) resumes with it
    wired.connect("next")
    assert resume(wired, "next", token, {STREAM: 5})[-1]["message_type"] == "resumed"


@pytest.fixture
def rewire_history(wired: Wired, aws: dict[str, Any]):
    def make(**overrides: Any) -> Wired:
        other = Wired(wired.settings.model_copy(update=overrides), aws["dynamodb"], wired.clock)
        other.store.clock = other.clock
        return other

    return make


# ---------------------------------------------------------------- what one resume may cost


def test_resume_replays_only_streams_the_session_held(wired: Wired, away):
    # GIVEN the client held AAPL only, and MSFT and predictions moved on while it was away
    publish(wired, *ticks(3, "MSFT"), eb.prediction("AAPL"))
    wired.connect("new")
    # WHEN it asks to replay AAPL, MSFT and AAPL predictions from the start
    received = resume(wired, "new", away["token"], {STREAM: 2, "market_data:MSFT": 0, "predictions:AAPL": 0})
    # THEN only AAPL is replayed; the others are refused without a message sent
    assert [(m["stream"], m["seq"]) for m in received[:-1]] == [(STREAM, 3), (STREAM, 4), (STREAM, 5)]
    streams = received[-1]["payload"]["streams"]
    assert streams[STREAM]["recovered"] is True
    for other in ("market_data:MSFT", "predictions:AAPL"):
        assert streams[other] == {"recovered": False, "replayed": 0, "error": "FORBIDDEN"}


def test_what_a_resume_re_attaches_is_replayed_before_the_index_shows_it(wired: Wired, monkeypatch):
    # GIVEN a client on AAPL and in the MSFT data room, away while both moved on
    wired.connect("old")
    token = hello(wired, "old")
    subscribe(wired, "old", AAPL)
    assert wired.send("old", {"action": "joinRoom", "room": "market_data_MSFT"})["message_type"] == "join_room"
    publish(wired, eb.market_data("AAPL"), eb.market_data("MSFT"))
    drop(wired, "old")
    publish(wired, *ticks(2), *ticks(2, "MSFT"))
    # AND the by_connection index lags behind the new connection's rows, as a global secondary index may
    lagging = {"new"}
    subscriptions_of, rooms_of = wired.store.subscriptions_of, wired.store.rooms_of
    monkeypatch.setattr(wired.store, "subscriptions_of", lambda c: [] if c in lagging else subscriptions_of(c))
    monkeypatch.setattr(wired.store, "rooms_of", lambda c: [] if c in lagging else rooms_of(c))
    # WHEN a new connection resumes both
    wired.connect("new")
    received = resume(wired, "new", token, {STREAM: 1, "market_data:MSFT": 1})
    # THEN both are replayed: what the resume itself re-attached counts as held
    assert [(m["stream"], m["seq"]) for m in received[:-1]] == [
        (STREAM, 2),
        (STREAM, 3),
        ("market_data:MSFT", 2),
        ("market_data:MSFT", 3),
    ]
    assert received[-1]["payload"]["recovered"] is True


def test_a_data_room_counts_as_holding_its_stream(wired: Wired):
    # GIVEN a client that received MSFT through its data room, not a subscription, and went away
    wired.connect("old")
    token = hello(wired, "old")
    assert wired.send("old", {"action": "joinRoom", "room": "market_data_MSFT"})["message_type"] == "join_room"
    publish(wired, eb.market_data("MSFT"))
    drop(wired, "old")
    publish(wired, *ticks(2, "MSFT"))
    # WHEN it resumes after MSFT seq 1
    wired.connect("new")
    received = resume(wired, "new", token, {"market_data:MSFT": 1})
    # THEN the room's stream is replayed
    assert [m["seq"] for m in received[:-1]] == [2, 3]


def test_one_resume_replays_at_most_the_configured_number_of_messages(wired: Wired, rewire_history):
    # GIVEN a resume budget of 5 messages, and a client on every symbol that missed 4 AAPL and 4 MSFT ticks
    small = rewire_history(limits=Limits(resume_messages=5))
    small.connect("old")
    token = hello(small, "old")
    subscribe(small, "old", {"stream_type": "market_data"})
    drop(small, "old")
    small.fanout.process_events(eb.records(*ticks(4, "AAPL"), *ticks(4, "MSFT")))
    # WHEN it resumes both from the start
    small.connect("new")
    received = resume(small, "new", token, {STREAM: 0, "market_data:MSFT": 0})
    # THEN 5 messages are replayed in all, and the resume says it did not recover everything
    replayed = received[:-1]
    assert len(replayed) == 5
    payload = received[-1]["payload"]
    assert payload["recovered"] is False
    assert payload["streams"][STREAM]["replayed"] + payload["streams"]["market_data:MSFT"]["replayed"] == 5
    assert small.send("new", {"action": "hello"})["payload"]["limits"]["max_resume_messages"] == 5
