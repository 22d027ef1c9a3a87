"""Admin HTTP API (IAM-authorised): connection info, room members, subscriptions, statistics."""

from __future__ import annotations

from typing import Any

from quanttrade_ws.admin import AdminQueries, route
from quanttrade_ws.observability import logger
from quanttrade_ws.runtime import runtime


@logger.inject_lambda_context(log_event=False)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    status, body = route(AdminQueries(runtime().store), event.get("routeKey", ""), event.get("pathParameters") or {})
    return {"statusCode": status, "headers": {"content-type": "application/json"}, "body": body}
