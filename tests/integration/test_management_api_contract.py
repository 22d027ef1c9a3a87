"""The ConnectionGateway contract, run against both implementations.

InMemoryGateway is what the unit tests of the domain use; ManagementApiGateway
is what production uses (here against the scripted Management API stand-in over
real sockets). Whatever passes here for one must pass for the other, so a test
that leans on the fake can't be fooled by behaviour the real client lacks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import pytest
from botocore.credentials import ReadOnlyCredentials

from local.fakes import InMemoryGateway
from quanttrade_ws.connection_gateway import ConnectionGateway, GatewayError, Post
from quanttrade_ws.management_api.client import ManagementApiGateway
from tests.unit.test_management_api import ScriptedServer

CREDENTIALS = ReadOnlyCredentials("AKIDEXAMPLE", "secret", "token")


class Harness(Protocol):
    gateway: ConnectionGateway

    def connect(self, *connection_ids: str) -> None:
        """Make these connections live."""

    def break_(self, connection_id: str) -> None:
        """Make every call to this connection fail with something other than gone."""

    def received(self, connection_id: str) -> list[bytes]:
        """What the client on this connection has been sent."""


class InMemoryHarness:
    def __init__(self) -> None:
        self.fake = InMemoryGateway()
        self.gateway: ConnectionGateway = self.fake

    def connect(self, *connection_ids: str) -> None:
        self.fake.connect(*connection_ids)

    def break_(self, connection_id: str) -> None:
        self.fake.failing.add(connection_id)

    def received(self, connection_id: str) -> list[bytes]:
        return self.fake.sent.get(connection_id, [])


class ManagementApiHarness:
    def __init__(self, server: ScriptedServer) -> None:
        self.server = server
        self.real = ManagementApiGateway(
            server.endpoint,
            "us-east-1",
            concurrency=8,
            max_attempts=3,
            timeout=5.0,
            credentials_provider=lambda: CREDENTIALS,
            backoff_base=0.001,
            backoff_cap=0.005,
        )
        self.gateway: ConnectionGateway = self.real

    def connect(self, *connection_ids: str) -> None:
        self.server.connect(*connection_ids)

    def break_(self, connection_id: str) -> None:
        self.server.script(connection_id, *[500] * 100)

    def received(self, connection_id: str) -> list[bytes]:
        return self.server.received.get(connection_id, [])


@pytest.fixture(params=["in-memory", "management-api"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "in-memory":
        yield InMemoryHarness()
        return
    server = ScriptedServer().start()
    wired = ManagementApiHarness(server)
    try:
        yield wired
    finally:
        wired.real.shutdown()
        server.stop()


def test_a_post_to_a_live_connection_is_delivered(harness: Harness) -> None:
    harness.connect("L0SM9cOFvHcCIhw=")
    assert harness.gateway.post("L0SM9cOFvHcCIhw=", b'{"message_type":"tick"}') is True
    assert harness.received("L0SM9cOFvHcCIhw=") == [b'{"message_type":"tick"}']


def test_a_post_to_an_unknown_connection_is_gone(harness: Harness) -> None:
    assert harness.gateway.post("never-connected", b"{}") is False


def test_a_closed_connection_is_gone_and_closing_it_again_is_fine(harness: Harness) -> None:
    harness.connect("a")
    harness.gateway.close("a")
    harness.gateway.close("a")
    harness.gateway.close("never-connected")
    assert harness.gateway.post("a", b"{}") is False
    assert harness.gateway.info("a") is None


def test_info_describes_live_connections_only(harness: Harness) -> None:
    harness.connect("a")
    info = harness.gateway.info("a")
    assert info is not None
    assert {"connectedAt", "lastActiveAt", "identity"} <= set(info)
    assert harness.gateway.info("never-connected") is None


def test_a_broken_connection_raises_gateway_error(harness: Harness) -> None:
    harness.connect("broken")
    harness.break_("broken")
    with pytest.raises(GatewayError):
        harness.gateway.post("broken", b"{}")


def test_post_many_puts_each_post_in_exactly_one_list(harness: Harness) -> None:
    # GIVEN live, gone and broken connections
    harness.connect("live-1", "live-2", "broken")
    harness.break_("broken")
    posts = [
        Post("live-1", b"1"),
        Post("gone", b"2"),
        Post("broken", b"3"),
        Post("live-2", b"4"),
        Post("live-1", b"5"),
        Post("gone", b"6"),
    ]
    # WHEN posted together
    report = harness.gateway.post_many(posts)
    # THEN each is classified once, in the order given, and only delivered posts reached clients, in order
    assert report.delivered == [posts[0], posts[3], posts[4]]
    assert report.gone == [posts[1], posts[5]]
    assert report.failed == [posts[2]]
    assert report.throttle_retries == 0
    assert harness.received("live-1") == [b"1", b"5"]
    assert harness.received("live-2") == [b"4"]
    assert harness.received("broken") == []


def test_post_many_with_nothing_to_send(harness: Harness) -> None:
    report = harness.gateway.post_many([])
    assert (report.delivered, report.gone, report.failed) == ([], [], [])


def test_many_posts_to_one_connection_arrive_in_order(harness: Harness) -> None:
    harness.connect("a")
    posts = [Post("a", str(i).encode()) for i in range(50)]
    assert harness.gateway.post_many(posts).delivered == posts
    assert harness.received("a") == [p.data for p in posts]
