"""The events API Gateway sends the routes' functions: request context, headers, query parameters, ids."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from local.api_gateway.config import GatewayConfig
from local.api_gateway.connection import Connection

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def new_id() -> str:
    # API Gateway's ids: 11 random bytes in URL-safe base64, 16 characters ending in '='.
    return base64.urlsafe_b64encode(os.urandom(11)).decode("ascii")


def request_time(epoch: float) -> str:
    """API Gateway's `requestTime` (the CLF timestamp its access logs use too)."""
    t = time.gmtime(epoch)
    return f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"


def request_context(
    config: GatewayConfig, connection: Connection, route_key: str, event_type: str, request_id: str, now: float
) -> dict[str, Any]:
    return {
        "routeKey": route_key,
        "eventType": event_type,
        "extendedRequestId": request_id,
        "requestTime": request_time(now),
        "messageDirection": "IN",
        "stage": config.stage,
        "connectedAt": connection.connected_at_ms,
        "requestTimeEpoch": int(now * 1000),
        "identity": dict(connection.identity),
        "requestId": request_id,
        "domainName": connection.domain_name,
        "connectionId": connection.connection_id,
        "apiId": config.api_id,
    }


def event_headers(
    config: GatewayConfig, request: web.Request, trace_id: str, *, keep_hop_by_hop: bool
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The handshake's headers as `headers` and `multiValueHeaders`, with those API Gateway adds."""
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for key, value in request.headers.items():
        if not keep_hop_by_hop and key.lower() in ("connection", "upgrade"):
            continue
        single[key] = value
        multi.setdefault(key, []).append(value)
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    added = {
        "X-Amzn-Trace-Id": trace_id,
        "X-Forwarded-For": request.remote or "127.0.0.1",
        "X-Forwarded-Port": str(sockname[1] if sockname else config.port),
        "X-Forwarded-Proto": request.scheme,
    }
    for key, value in added.items():
        single[key] = value
        multi[key] = [value]
    return single, multi


def query_parameters(request: web.Request, *, always: bool) -> dict[str, Any]:
    query = request.query
    if not query and not always:
        return {}
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for key, value in query.items():
        single[key] = value
        multi.setdefault(key, []).append(value)
    return {"queryStringParameters": single, "multiValueQueryStringParameters": multi}


def status_of(result: Any) -> int:
    """The status code a function's result answers with (200 unless it says otherwise)."""
    if isinstance(result, dict):
        try:
            return int(result.get("statusCode", 200))
        except (TypeError, ValueError):
            return 500
    return 200


def header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return str(value)
    return None
