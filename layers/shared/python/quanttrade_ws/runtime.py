"""Wiring: builds the service's parts once per warm function from validated settings.

Handlers call `runtime()` and use what they need; every part is created on first
use, so a function only pays (at cold start) for the clients it touches.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from quanttrade_ws.config import Settings
from quanttrade_ws.observability import metrics

logger = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings, *, dynamodb: Any = None, gateway: Any = None, sqs: Any = None) -> None:
        self.settings = settings
        self._dynamodb = dynamodb
        self._gateway = gateway
        self._sqs = sqs

    @functools.cached_property
    def secret(self) -> str:
        """The HS256 key: from settings locally, from Secrets Manager (cached) on AWS."""
        if self.settings.jwt_secret:
            return self.settings.jwt_secret
        from aws_lambda_powertools.utilities.parameters import get_secret

        return str(get_secret(str(self.settings.jwt_secret_arn), max_age=300))

    @functools.cached_property
    def token_verifier(self):  # type: ignore[no-untyped-def]
        from quanttrade_ws.auth import TokenVerifier

        return TokenVerifier(self.settings, secret=self.secret if self.settings.jwt_algorithm == "HS256" else None)

    @functools.cached_property
    def store(self):  # type: ignore[no-untyped-def]
        from quanttrade_ws.store import DynamoStore

        return DynamoStore(self.settings, self._dynamodb)

    @functools.cached_property
    def gateway(self):  # type: ignore[no-untyped-def]
        if self._gateway is not None:
            return self._gateway
        from quanttrade_ws.management_api import ManagementApiGateway

        return ManagementApiGateway(
            str(self.settings.management_endpoint),
            self.settings.region,
            concurrency=self.settings.post_concurrency,
            max_attempts=self.settings.max_post_attempts,
        )

    @functools.cached_property
    def service(self):  # type: ignore[no-untyped-def]
        from quanttrade_ws.auth import SessionTokens
        from quanttrade_ws.rooms import MemberAliases
        from quanttrade_ws.service import RealtimeService

        return RealtimeService(
            self.settings,
            self.store,
            self.gateway,
            SessionTokens(lambda: self.secret),
            token_verifier=lambda: self.token_verifier,
            member_aliases=MemberAliases(lambda: self.secret),
        )

    @functools.cached_property
    def fanout(self):  # type: ignore[no-untyped-def]
        from quanttrade_ws.fanout import FanOut
        from quanttrade_ws.queues import SqsSender

        sqs = self._sqs
        if sqs is None:
            import boto3

            sqs = boto3.client("sqs", region_name=self.settings.region, endpoint_url=self.settings.aws_endpoint_url)
        return FanOut(self.settings, self.store, self.gateway, SqsSender(sqs), self.service.disconnect, metrics)


@functools.cache
def runtime() -> Runtime:
    """The warm function's runtime, built from the environment on first use."""
    return Runtime(Settings.from_env())
