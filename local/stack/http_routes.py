"""The stack's HTTP routes beside the WebSocket API, on the gateway's port: the admin HTTP API (IAM-authorised,
as deployed), `/local/stats` (what CloudWatch would show on AWS) and the dashboard."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from local.lambda_runtime.environment import DEFAULT_ACCOUNT
from local.principals import Principals
from local.signed_http import PRINCIPAL_KEY, require_invoke
from local.stack.config import ADMIN_API_ID, MANAGEMENT_FAULTS

if TYPE_CHECKING:
    from local.stack.local_stack import LocalStack

logger = logging.getLogger("quanttrade.local.stack")

ADMIN_PREFIX = "/admin"
DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard"


def stack_routes(stack: LocalStack) -> list[web.AbstractRouteDef]:
    """The admin API's routes under /admin, /local/stats and, with the dashboard, its static files."""
    # IAM-authorised as the deployed admin API is: SigV4 by a principal allowed execute-api:Invoke.
    guard = require_invoke(
        stack.principals,
        region=stack.config.region,
        account=DEFAULT_ACCOUNT,
        api_id=ADMIN_API_ID,
        strip_prefix=ADMIN_PREFIX,
    )
    routes: list[web.AbstractRouteDef] = []
    admin = stack.template.http_api
    for route_key, route in admin.routes.items():
        method, path = route_key.split(" ", 1)
        routes.append(
            web.route(method, ADMIN_PREFIX + path, guard(_admin_handler(stack, route_key, route.function_logical_id)))
        )

    async def local_stats(request: web.Request) -> web.Response:
        return web.json_response(_local_stats(stack))

    routes.append(web.get("/local/stats", guard(local_stats)))
    if stack.config.dashboard:
        routes.append(web.get(r"/{name:[A-Za-z0-9_-]+\.(?:js|css|html|svg|ico)}", _serve_static))
    return routes


def _admin_handler(
    stack: LocalStack, route_key: str, function_logical_id: str
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        event = http_api_event(request, route_key, stack.principals)
        try:
            result = await stack.functions[function_logical_id].invoke(event)
        except Exception as error:
            logger.error("admin route %s failed: %s: %s", route_key, type(error).__name__, error)
            return web.json_response({"message": "Internal Server Error"}, status=500)
        headers = dict(result.get("headers") or {})
        headers.pop("content-length", None)
        return web.Response(status=int(result.get("statusCode", 200)), text=result.get("body", ""), headers=headers)

    return handle


def http_api_event(request: web.Request, route_key: str, principals: Principals) -> dict[str, Any]:
    """The HTTP API (payload format 2.0) event an IAM-authorised route gets on AWS."""
    now = time.time()
    path = request.path.removeprefix(ADMIN_PREFIX) or "/"
    headers = {key.lower(): value for key, value in request.headers.items()}
    request_id = os.urandom(8).hex()
    caller = request.get(PRINCIPAL_KEY) or principals.admin
    return {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": request.query_string,
        "headers": headers,
        **({"queryStringParameters": dict(request.query)} if request.query else {}),
        "requestContext": {
            "accountId": DEFAULT_ACCOUNT,
            "apiId": ADMIN_API_ID,
            "authorizer": {
                "iam": {
                    "accessKey": caller.credentials.access_key_id,
                    "accountId": DEFAULT_ACCOUNT,
                    "callerId": caller.name,
                    "principalOrgId": None,
                    "userArn": caller.arn,
                    "userId": caller.name,
                }
            },
            "domainName": request.host,
            "domainPrefix": request.host.split(".", 1)[0],
            "http": {
                "method": request.method,
                "path": path,
                "protocol": f"HTTP/{request.version.major}.{request.version.minor}",
                "sourceIp": request.remote or "127.0.0.1",
                "userAgent": request.headers.get("User-Agent", ""),
            },
            "requestId": request_id,
            "routeKey": route_key,
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "pathParameters": dict(request.match_info),
        "isBase64Encoded": False,
    }


def _local_stats(stack: LocalStack) -> dict[str, Any]:
    """What CloudWatch would show on AWS: invocations (and those in flight), errors, cold starts (Init Duration
    lines) and the pumps' counters; and the execution environments shut down for idleness (`reaped`), which AWS
    does not report."""
    gateway = stack.running_gateway()
    front_door = stack.front_door
    return {
        "functions": {
            name: {
                "invocations": f.invocations,
                "in_flight": f.in_flight,
                "errors": f.errors,
                "timeouts": f.timeouts,
                "cold_starts": f.cold_starts,
                "reaped": f.reaped,
            }
            for name, f in stack.functions.items()
        },
        "pumps": {pump.function.name: pump.stats.as_dict() for pump in stack.pumps},
        "pipes": {pipe.name: pipe.stats.as_dict() for pipe in stack.pipes},
        "simulator": dict(stack.simulator.published) if stack.simulator else None,
        "connections": len(gateway.connection_ids),
        "aws_calls": front_door.call_counts() if front_door is not None else {},
        "faults_injected": {
            **(front_door.fault_counts() if front_door is not None else {}),
            MANAGEMENT_FAULTS: gateway.management_fault_counts(),
        },
    }


async def serve_dashboard(request: web.Request) -> web.StreamResponse:
    return await _file_response(DASHBOARD_DIR / "index.html")


async def _serve_static(request: web.Request) -> web.StreamResponse:
    return await _file_response(DASHBOARD_DIR / request.match_info["name"])


async def _file_response(path: Path) -> web.StreamResponse:
    if not path.is_file() or path.parent != DASHBOARD_DIR:
        raise web.HTTPNotFound()
    # The dashboard has no build step and changes while `make dev` runs: never let the browser cache it.
    return web.FileResponse(path, headers={"Cache-Control": "no-store"})
