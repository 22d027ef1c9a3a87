"""Every action route and $default: one client frame, answered through the Management API."""

from __future__ import annotations

import base64
from typing import Any

from quanttrade_ws.observability import logger, publish_metrics
from quanttrade_ws.runtime import runtime


@publish_metrics
@logger.inject_lambda_context(correlation_id_path="requestContext.connectionId", log_event=False)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    body = event.get("body")
    if body is not None and event.get("isBase64Encoded"):
        body = base64.b64decode(body)
    request = event["requestContext"]
    received_ms = request.get("requestTimeEpoch")
    runtime().service.handle_frame(
        request["connectionId"], body, received_at=received_ms / 1000 if isinstance(received_ms, int) else None
    )
    return {"statusCode": 200}
