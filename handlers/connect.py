"""$connect: record the connection with the identity the authorizer verified."""

from __future__ import annotations

from typing import Any

from quanttrade_ws.auth import Identity
from quanttrade_ws.observability import logger, metrics, publish_metrics
from quanttrade_ws.runtime import runtime
from quanttrade_ws.service.lifecycle import ConnectRefused


@publish_metrics
@logger.inject_lambda_context(correlation_id_path="requestContext.connectionId", log_event=False)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    request = event["requestContext"]
    identity = Identity.from_authorizer_context(request.get("authorizer") or {})
    try:
        runtime().service.connect(request["connectionId"], identity, request.get("connectedAt"))
    except ConnectRefused as refused:
        logger.info("connection refused", extra={"reason": str(refused), "user_id": identity.user_id})
        return {"statusCode": refused.status_code, "body": str(refused)}
    metrics.add_metric(name="ConnectionsOpened", unit="Count", value=1)
    return {"statusCode": 200}
