"""$connect REQUEST authorizer: verifies the JWT in `?token=` and passes the identity on.

A refused token (missing, malformed, expired, forged) is an answer, not a
failure: the authorizer returns a Deny policy and API Gateway ends the
handshake with 403, without the invocation counting as a Lambda error. Only
an unexpected failure (the key could not be read, a bug) is counted, as the
`AuthorizerFailures` metric the on-call is paged on, and raised, so API
Gateway answers 500 and the client retries instead of dropping its token.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
    APIGatewayAuthorizerResponseWebSocket,
    parse_api_gateway_arn,
)

from quanttrade_ws.auth import AuthError
from quanttrade_ws.observability import logger, metrics, publish_metrics
from quanttrade_ws.runtime import runtime

# API Gateway's principal for a refused handshake; nothing downstream sees it.
REFUSED_PRINCIPAL = "refused"


def _policy(principal: str, allow: bool, method_arn: str, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Allow or deny exactly the route API Gateway asked about ($connect of this API and stage)."""
    arn = parse_api_gateway_arn(method_arn, is_websocket_authorizer=True)
    response = APIGatewayAuthorizerResponseWebSocket(
        principal, arn.region, arn.aws_account_id, arn.api_id, arn.stage, context, partition=arn.partition
    )
    (response.allow_route if allow else response.deny_route)(arn.resource)
    return response.asdict()


@publish_metrics
@logger.inject_lambda_context(correlation_id_path="requestContext.connectionId", log_event=False)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    method_arn = event["methodArn"]
    token = (event.get("queryStringParameters") or {}).get("token")
    if not token:
        # API Gateway refuses a handshake without the identity source itself (401)
        # before invoking anything; this covers an empty `?token=` all the same.
        return _refuse("Missing token", method_arn)
    try:
        identity = runtime().token_verifier.verify(token)
    except AuthError as error:
        return _refuse(str(error), method_arn)
    except Exception:
        logger.exception("authorizer failed")
        metrics.add_metric(name="AuthorizerFailures", unit="Count", value=1)
        raise
    return _policy(identity.user_id, True, method_arn, dict(identity.to_authorizer_context()))


def _refuse(reason: str, method_arn: str) -> dict[str, Any]:
    logger.info("token refused", extra={"reason": reason})
    metrics.add_metric(name="AuthorizerDenied", unit="Count", value=1)
    return _policy(REFUSED_PRINCIPAL, False, method_arn)
