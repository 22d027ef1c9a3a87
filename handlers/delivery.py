"""Delivery queue consumer: large-audience chunks and retried posts (partial batch response)."""

from __future__ import annotations

from typing import Any

from quanttrade_ws.observability import logger, publish_metrics
from quanttrade_ws.runtime import runtime


@publish_metrics
@logger.inject_lambda_context(log_event=False)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return runtime().fanout.process_chunks(event.get("Records", []), context.get_remaining_time_in_millis())
