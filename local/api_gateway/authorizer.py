"""The `$connect` REQUEST authorizer: its identity sources, its event, and what its policy answer allows."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from aiohttp import web

from local.api_gateway.config import GatewayConfig
from local.api_gateway.connection import Connection
from local.api_gateway.error_responses import Refusal
from local.api_gateway.lambda_events import event_headers, query_parameters, request_context
from local.lambda_runtime.function import LambdaFunction

logger = logging.getLogger("quanttrade.local.gateway")


class AuthorizerConfigurationError(Exception):
    """The authorizer answered with something API Gateway cannot use (a 500 to the client)."""


class RequestAuthorizer:
    """Calls the authorizer function for a handshake; its context (plus principalId), or a `Refusal`."""

    def __init__(self, function: LambdaFunction, identity_sources: tuple[tuple[str, str], ...]) -> None:
        self.function = function
        self._identity_sources = identity_sources  # (kind, name): see parse_identity_source

    async def authorize(
        self, config: GatewayConfig, request: web.Request, connection: Connection, request_id: str, trace_id: str
    ) -> dict[str, Any]:
        for kind, name in self._identity_sources:
            value = request.query.get(name) if kind == "querystring" else request.headers.get(name)
            if not value:
                raise Refusal(401, "Unauthorized", "UnauthorizedException")
        method_arn = f"arn:aws:execute-api:{config.region}:{config.account}:{config.api_id}/{config.stage}/$connect"
        headers, multi_headers = event_headers(config, request, trace_id, keep_hop_by_hop=True)
        event: dict[str, Any] = {
            "type": "REQUEST",
            "methodArn": method_arn,
            "headers": headers,
            "multiValueHeaders": multi_headers,
            **query_parameters(request, always=True),
            "stageVariables": {},
            "requestContext": request_context(config, connection, "$connect", "CONNECT", request_id, time.time()),
        }
        started = time.monotonic()
        try:
            answer = await self.function.invoke(event)
        except Exception as exc:
            if str(exc) == "Unauthorized":
                raise Refusal(401, "Unauthorized", "UnauthorizedException") from exc
            logger.error("authorizer failed: %s: %s", type(exc).__name__, exc)
            raise Refusal(500, None, "AuthorizerConfigurationException") from exc
        latency_ms = int((time.monotonic() - started) * 1000)
        try:
            principal, allowed, context = evaluate_authorizer_answer(answer, method_arn)
        except AuthorizerConfigurationError as exc:
            logger.error("authorizer answer unusable: %s", exc)
            raise Refusal(500, None, "AuthorizerConfigurationException") from exc
        if not allowed:
            raise Refusal(403, "Forbidden", "AccessDeniedException")
        return {**context, "principalId": principal, "integrationLatency": latency_ms}


def parse_identity_source(source: str) -> tuple[str, str]:
    """("querystring" or "header", name) from `route.request.querystring.X` or `route.request.header.X`."""
    parts = source.split(".", 3)
    if len(parts) != 4 or parts[:2] != ["route", "request"] or parts[2] not in ("querystring", "header"):
        raise ValueError(f"unsupported identity source {source!r}: use route.request.querystring.X or header.X")
    return parts[2], parts[3]


def evaluate_authorizer_answer(answer: Any, method_arn: str) -> tuple[str, bool, dict[str, str]]:
    """(principalId, allowed, stringified context) from an IAM-policy authorizer answer."""
    if not isinstance(answer, dict):
        raise AuthorizerConfigurationError("the answer is not an object")
    principal = answer.get("principalId")
    document = answer.get("policyDocument")
    if not isinstance(principal, str | int) or not isinstance(document, dict):
        raise AuthorizerConfigurationError("principalId and policyDocument are required")
    statements = document.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list):
        raise AuthorizerConfigurationError("policyDocument.Statement is missing")
    allowed = False
    for statement in statements:
        if not isinstance(statement, dict):
            raise AuthorizerConfigurationError("a policy statement is not an object")
        actions = _as_list(statement.get("Action"))
        resources = _as_list(statement.get("Resource"))
        if not any(_glob(action.lower(), "execute-api:invoke") for action in actions):
            continue
        if not any(_glob(resource, method_arn) for resource in resources):
            continue
        effect = statement.get("Effect")
        if effect == "Deny":
            return str(principal), False, {}
        if effect == "Allow":
            allowed = True
    context = answer.get("context") or {}
    if not isinstance(context, dict):
        raise AuthorizerConfigurationError("context is not an object")
    strings: dict[str, str] = {}
    for key, value in context.items():
        if isinstance(value, bool):
            strings[key] = "true" if value else "false"
        elif isinstance(value, str):
            strings[key] = value
        elif isinstance(value, int | float):
            strings[key] = json.dumps(value)
        else:
            raise AuthorizerConfigurationError(f"context value {key!r} is not a string, number or boolean")
    return str(principal), allowed, strings


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def _glob(pattern: str, value: str) -> bool:
    if "*" not in pattern and "?" not in pattern:
        return pattern == value
    expression = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return re.fullmatch(expression, value, flags=re.DOTALL) is not None
