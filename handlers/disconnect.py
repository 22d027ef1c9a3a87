"""$disconnect: remove the connection and everything it owns (idempotent, best effort by API Gateway)."""

from __future__ import annotations

from typing import Any

from quanttrade_ws.observability import logger, metrics, publish_metrics
from quanttrade_ws.runtime import runtime


@publish_metrics
@logger.inject_lambda_context(correlation_id_path="requestContext.connectionId", log_event=False)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if runtime().service.disconnect(event["requestContext"]["connectionId"]):
        metrics.add_metric(name="ConnectionsClosed", unit="Count", value=1)
    return {"statusCode": 200}
