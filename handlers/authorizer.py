"""$connect REQUEST authorizer: verifies the JWT in `?token=` and passes the identity on.

Missing or invalid tokens raise "Unauthorized" (API Gateway answers 401); a
verified token whose user may not use the WebSocket API gets a Deny (403).
"""

from __future__ import annotations

from typing import Any

from quanttrade_ws.auth import AuthError
from quanttrade_ws.observability import logger, metrics
from quanttrade_ws.runtime import runtime


@metrics.log_metrics
@logger.inject_lambda_context(correlation_id_path="requestContext.connectionId", log_event=False)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    token = (event.get("queryStringParameters") or {}).get("token")
    if not token:
        raise Exception("Unauthorized")  # API Gateway's contract for a 401
    try:
        identity = runtime().token_verifier.verify(token)
    except AuthError as error:
        logger.info("token refused", extra={"reason": str(error)})
        metrics.add_metric(name="AuthorizerDenied", unit="Count", value=1)
        raise Exception("Unauthorized") from None
    return {
        "principalId": identity.user_id,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": event["methodArn"]}],
        },
        "context": identity.to_authorizer_context(),
    }
