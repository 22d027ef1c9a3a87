"""Shared fixtures: the service wired to moto's DynamoDB (tables from the real topology) and fakes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from local.fakes import CountingMetrics, InMemoryGateway, InMemorySender
from local.tokens import mint_token
from quanttrade_ws.auth import ALL_PERMISSIONS, Identity, SessionTokens, TokenVerifier
from quanttrade_ws.config import Settings
from quanttrade_ws.fanout import EventFanOut
from quanttrade_ws.rooms import MemberAliases
from quanttrade_ws.service.dispatch import RealtimeService
from quanttrade_ws.store.dynamo_store import DynamoStore
from quanttrade_ws.store.tables import Backoff
from tests.provision import provision

REPO_ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret"
SESSION_SECRET = "test-session-secret-0123456789abcdef"

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
# A Python child of the session (a script the tests run, `python app.py`) imports this tree, as the
# session does through pyproject's pytest paths, whatever checkout the venv's own paths name.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO_ROOT / root) for root in ("", "layers/shared/python", "clients/python")]
    + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)


class Clock:
    """A settable clock for tests of time-based behaviour (expiry, intervals, rate windows)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Stands in for time.sleep: time passes at once."""
        self.now += seconds


class Wired:
    """The domain wired to moto DynamoDB and in-memory fakes for the gateway and queues."""

    def __init__(self, settings: Settings, dynamodb: Any, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.store = DynamoStore(settings, dynamodb, clock=clock, backoff=Backoff(sleep=clock.advance))
        self.gateway = InMemoryGateway()
        self.sender = InMemorySender()
        self.metrics = CountingMetrics()
        self.verifier = TokenVerifier(settings)
        self.service = RealtimeService(
            settings,
            self.store,
            self.gateway,
            SessionTokens(SESSION_SECRET, clock=clock),
            lambda: self.verifier,
            clock=clock,
            sleep=clock.advance,
            metrics=self.metrics,
            member_aliases=MemberAliases(SECRET),
        )
        self.fanout = EventFanOut(
            settings,
            self.store,
            self.gateway,
            self.sender,
            self.service.disconnect,
            self.metrics,
            clock=clock,
            monotonic=clock,
        )

    def connect(
        self,
        connection_id: str,
        user_id: str = "user-1",
        permissions: tuple[str, ...] = ALL_PERMISSIONS,
        level: str = "premium",
        expires_in: int = 3600,
        issued_at: int = 0,
    ) -> str:
        identity = Identity(
            user_id=user_id,
            permissions=frozenset(permissions),
            subscription_level=level,
            token_expires_at=int(self.clock()) + expires_in,
            token_issued_at=issued_at,
        )
        self.gateway.connect(connection_id)
        self.service.connect(connection_id, identity)
        return connection_id

    def send(self, connection_id: str, frame: dict[str, Any] | str) -> dict[str, Any]:
        """Send one frame; returns the last message the sender received."""
        import json

        body = frame if isinstance(frame, str) else json.dumps(frame)
        self.service.handle_frame(connection_id, body)
        return self.gateway.messages(connection_id)[-1]

    def token(self, user_id: str = "user-1", **kwargs: Any) -> str:
        return mint_token(SECRET, user_id, **kwargs)


@pytest.fixture
def settings() -> Settings:
    return Settings(
        jwt_secret=SECRET,
        session_secret=SESSION_SECRET,
        delivery_queue_url="delivery.fifo",
        events_dlq_url="events-dlq.fifo",
    )


@pytest.fixture
def aws() -> Iterator[dict[str, Any]]:
    with mock_aws():
        yield {
            "dynamodb": boto3.client("dynamodb", region_name="us-east-1"),
            "sqs": boto3.client("sqs", region_name="us-east-1"),
            "events": boto3.client("events", region_name="us-east-1"),
        }


@pytest.fixture
def wired(settings: Settings, aws: dict[str, Any]) -> Wired:
    provision(aws["dynamodb"], aws["sqs"], aws["events"], settings)
    return Wired(settings, aws["dynamodb"], Clock())
