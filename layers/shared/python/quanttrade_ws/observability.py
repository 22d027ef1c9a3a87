"""Logs and metrics through Powertools, configured once.

Structured JSON logs carry the connection id as correlation id; metrics go out
as EMF under the `QuantTrade` namespace. Traces come from Lambda's active X-Ray
tracing, set on every function by the stack: the X-Ray SDK (Powertools' Tracer)
would add over 100 ms of imports to every cold start for subsegments we do not
need. The query string never reaches a log line: it carries the access token.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

from aws_lambda_powertools import Logger, Metrics

from quanttrade_ws import topology

# The stack sets both variables from topology on every function; where they are unset (the tests,
# a function run by hand) the same constants apply, so a line or metric never says "service_undefined".
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or topology.SERVICE_NAME
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or topology.METRICS_NAMESPACE

# The one Logger of handlers and domain alike: every line, wherever it is written, carries the
# invocation's correlation id (the connection id) that the handler's decorator sets.
logger = Logger(service=SERVICE, log_uncaught_exceptions=False)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)

Result = TypeVar("Result")


def publish_metrics(handler: Callable[[Any, Any], Result]) -> Callable[[Any, Any], Result]:
    """Powertools' `log_metrics` for our handlers: the invocation's metrics go out as one EMF line
    when it ends, however it ends. Most frames (ping, subscribe) record no metric, which is normal:
    an invocation without metrics writes nothing, instead of Powertools' empty-flush warning (and
    without a process-wide warning filter)."""

    @functools.wraps(handler)
    def publishing(event: Any, context: Any) -> Result:
        try:
            return handler(event, context)
        finally:
            if metrics.metric_set:
                metrics.flush_metrics()

    return publishing


SECRET_KEYS = frozenset(
    {"token", "session_token", "authorization", "querystringparameters", "multivaluequerystringparameters"}
)


def redact(value: Any) -> Any:
    """A copy of an event with tokens and query strings removed, safe to log."""
    if isinstance(value, dict):
        return {k: "***" if str(k).lower() in SECRET_KEYS else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value
