"""Scheduled: removes connections left behind when $disconnect never ran."""

from __future__ import annotations

from typing import Any

from quanttrade_ws.observability import logger, metrics, publish_metrics
from quanttrade_ws.runtime import runtime


@publish_metrics
@logger.inject_lambda_context(log_event=False)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    removed = runtime().service.sweep()
    metrics.add_metric(name="StaleConnectionsRemoved", unit="Count", value=removed)
    logger.info("sweep finished", extra={"removed": removed})
    return {"removed": removed}
