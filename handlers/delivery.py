"""Delivery queue consumer: large-audience chunks and retried posts (partial batch response)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quanttrade_ws.observability import logger, publish_metrics
from quanttrade_ws.runtime import runtime

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse


@publish_metrics
@logger.inject_lambda_context(log_event=False)
def handler(event: dict[str, Any], context: Any) -> PartialItemFailureResponse:
    return runtime().fanout.process_chunks(event.get("Records", []))
