"""Wiring: builds the service's parts once per warm function from validated settings.

Each handler calls `runtime()` and uses the one part it needs (`runtime().service`,
`.fanout`, `.store`, `.token_verifier`): every part is typed, so readers and mypy
follow the edge from a handler into its domain object. Every part is created on
first use, so a function only pays (at cold start) for the clients it touches:
the domain modules are imported inside the properties, and only named for the
type checker here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from quanttrade_ws.clock import Clock, wall_clock
from quanttrade_ws.config import Settings
from quanttrade_ws.connection_gateway import ConnectionGateway, DeliveryReport, Post
from quanttrade_ws.observability import metrics

if TYPE_CHECKING:
    from quanttrade_ws.auth import KeySource, TokenVerifier
    from quanttrade_ws.fanout import EventFanOut
    from quanttrade_ws.service.dispatch import RealtimeService
    from quanttrade_ws.store.dynamo_store import DynamoStore


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        dynamodb: Any = None,
        gateway: Any = None,
        sqs: Any = None,
        clock: Clock = wall_clock,
    ) -> None:
        self.settings = settings
        self.clock = clock  # the one clock of every part built here
        self._dynamodb = dynamodb
        self._gateway = gateway
        self._sqs = sqs

    def _keys(self, value: str | None, arn: str | None) -> KeySource:
        """A key source: the value itself locally; on AWS the secret's current and previous
        versions, re-read once older than key_cache_seconds (never held for the function's life)."""
        if value:
            return value
        from quanttrade_ws.auth import KeyCache, secrets_manager_versions

        return KeyCache(
            secrets_manager_versions(lambda: self._secrets_manager, str(arn)),
            max_age_seconds=self.settings.key_cache_seconds,
        )

    @functools.cached_property
    def _secrets_manager(self) -> Any:
        import boto3

        return boto3.client(
            "secretsmanager", region_name=self.settings.region, endpoint_url=self.settings.aws_endpoint_url
        )

    @functools.cached_property
    def access_keys(self) -> KeySource:
        """The keys that verify HS256 access tokens."""
        return self._keys(self.settings.jwt_secret, self.settings.jwt_secret_arn)

    @functools.cached_property
    def session_keys(self) -> KeySource:
        """The keys that sign and verify session tokens (their own secret)."""
        return self._keys(self.settings.session_secret, self.settings.session_secret_arn)

    @functools.cached_property
    def token_verifier(self) -> TokenVerifier:
        from quanttrade_ws.auth import TokenVerifier

        return TokenVerifier(self.settings, keys=self.access_keys if self.settings.jwt_algorithm == "HS256" else None)

    @functools.cached_property
    def store(self) -> DynamoStore:
        from quanttrade_ws.store.dynamo_store import DynamoStore

        return DynamoStore(self.settings, self._dynamodb, clock=self.clock)

    @functools.cached_property
    def gateway(self) -> ConnectionGateway:
        if self._gateway is not None:
            return self._gateway
        endpoint = self.settings.management_endpoint
        if not endpoint:
            # Only functions that post are given the endpoint (and the ManageConnections permission);
            # one that reaches here without it is wired wrongly, so say which setting is missing.
            raise RuntimeError(
                "QT_MANAGEMENT_ENDPOINT is not set: this function has no Management API endpoint to post to"
            )
        from quanttrade_ws.management_api.client import ManagementApiGateway

        return ManagementApiGateway(
            endpoint,
            self.settings.region,
            concurrency=self.settings.post_concurrency,
            max_attempts=self.settings.max_post_attempts,
        )

    @functools.cached_property
    def service(self) -> RealtimeService:
        from quanttrade_ws.auth import SessionTokens, keys_of
        from quanttrade_ws.rooms import MemberAliases
        from quanttrade_ws.service.dispatch import RealtimeService

        return RealtimeService(
            self.settings,
            self.store,
            # $connect and $disconnect never post, and the template gives them no endpoint: the
            # Management API client is built on the first call that needs it, not with the service.
            _DeferredGateway(lambda: self.gateway),
            SessionTokens(lambda: keys_of(self.session_keys), clock=self.clock),
            token_verifier=lambda: self.token_verifier,
            clock=self.clock,
            metrics=metrics,
            # Derived from the current session key (only the message function names room members, and it reads
            # that key anyway); pseudonyms change when the key rotates.
            member_aliases=MemberAliases(lambda: keys_of(self.session_keys)[0]),
        )

    @functools.cached_property
    def fanout(self) -> EventFanOut:
        from quanttrade_ws.fanout import EventFanOut
        from quanttrade_ws.queues import SqsSender

        sqs = self._sqs
        if sqs is None:
            import boto3

            sqs = boto3.client("sqs", region_name=self.settings.region, endpoint_url=self.settings.aws_endpoint_url)
        return EventFanOut(
            self.settings, self.store, self.gateway, SqsSender(sqs), self.service.disconnect, metrics, clock=self.clock
        )


class _DeferredGateway:
    """A ConnectionGateway that builds the real one on first use."""

    def __init__(self, build: Callable[[], ConnectionGateway]) -> None:
        self._build = build

    def post_many(self, posts: Sequence[Post], deadline: float | None = None) -> DeliveryReport:
        return self._build().post_many(posts, deadline)

    def post(self, connection_id: str, data: bytes) -> bool:
        return self._build().post(connection_id, data)

    def close(self, connection_id: str) -> None:
        self._build().close(connection_id)

    def info(self, connection_id: str) -> dict[str, object] | None:
        return self._build().info(connection_id)


@functools.cache
def runtime() -> Runtime:
    """The warm function's runtime, built from the environment on first use."""
    return Runtime(Settings.from_env())
