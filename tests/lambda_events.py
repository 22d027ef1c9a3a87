"""What Lambda hands a handler in the tests: a context object and API Gateway's request context."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

API_ID = "abcdef1234"
DOMAIN = f"{API_ID}.execute-api.us-east-1.amazonaws.com"


@dataclass
class LambdaContext:
    """The attributes Powertools' inject_lambda_context reads."""

    function_name: str = "quanttrade-test"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:quanttrade-test"
    aws_request_id: str = "req-1"
    remaining_ms: int = 30_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def request_context(connection_id: str, route_key: str, event_type: str, **extra: Any) -> dict[str, Any]:
    """A WebSocket event's requestContext as API Gateway builds it."""
    now_ms = int(time.time() * 1000)
    return {
        "routeKey": route_key,
        "eventType": event_type,
        "extendedRequestId": f"ext-{connection_id}",
        "requestTime": "01/Jan/2027:00:00:00 +0000",
        "messageDirection": "IN",
        "stage": "production",
        "connectedAt": now_ms,
        "requestTimeEpoch": now_ms,
        "identity": {"sourceIp": "203.0.113.7", "userAgent": "pytest"},
        "requestId": f"req-{connection_id}",
        "domainName": DOMAIN,
        "connectionId": connection_id,
        "apiId": API_ID,
        **extra,
    }
