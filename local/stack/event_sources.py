"""What invokes the functions besides the gateway: the event source mappings (queue pumps) and the schedule."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from local.cloud.deployment import Deployment
from local.cloud.template import Template
from local.lambda_runtime.environment import DEFAULT_ACCOUNT
from local.lambda_runtime.function import LambdaFunction
from local.pump import QueuePump
from local.stack.config import SCHEDULED, StackStartError

logger = logging.getLogger("quanttrade.local.stack")

_RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days|second|seconds)\)$")
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def queue_pumps(
    template: Template,
    deployment: Deployment,
    functions: Mapping[str, LambdaFunction],
    sqs_client: Callable[[], Any],
    *,
    region: str,
) -> list[QueuePump]:
    """One pump per enabled event source mapping, with as many pollers as its ScalingConfig allows (local.pump)."""
    pumps = []
    for mapping in template.event_source_mappings.values():
        if not mapping.enabled:
            continue
        if not mapping.reports_batch_item_failures:
            raise StackStartError(
                f"{mapping.logical_id}: the event source mapping of {mapping.function_logical_id} does not "
                "report batch item failures, so one failed record would redeliver the whole batch"
            )
        queue = template.queues[mapping.queue_logical_id]
        pumps.append(
            QueuePump(
                functions[mapping.function_logical_id],
                sqs_client,
                deployment.ref(mapping.queue_logical_id),
                deployment.get_att(mapping.queue_logical_id, "Arn"),
                batch_size=mapping.batch_size or 10,
                maximum_concurrency=mapping.maximum_concurrency,
                fifo=queue.fifo,
                region=region,
            )
        )
    return pumps


def sweep_interval(template: Template, configured: float | str | None) -> float | None:
    """Seconds between sweeps: the template's rate(...) schedule, unless `configured` is not `SCHEDULED`."""
    if configured != SCHEDULED:
        return configured  # type: ignore[return-value]
    for expression, _ in template.scheduled_functions():
        match = _RATE.match(expression)
        if match is None:
            raise StackStartError(f"schedule {expression!r}: only rate(...) expressions run locally")
        return int(match.group(1)) * _UNIT_SECONDS[match.group(2).rstrip("s")]
    return None


def scheduled_event(region: str, rule_logical_id: str) -> dict[str, Any]:
    """The event EventBridge Scheduler hands a rule's target."""
    return {
        "version": "0",
        "id": os.urandom(16).hex(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": DEFAULT_ACCOUNT,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": region,
        "resources": [f"arn:aws:events:{region}:{DEFAULT_ACCOUNT}:rule/{rule_logical_id}"],
        "detail": {},
    }


async def sweep_every(
    interval: float, template: Template, functions: Mapping[str, LambdaFunction], region: str
) -> None:
    """Invoke every scheduled rule's target functions every `interval` seconds, until cancelled."""
    schedules = [
        (rule, functions[target.target_logical_id])
        for rule in template.schedules.values()
        for target in rule.targets
        if target.target_logical_id is not None and target.target_logical_id in functions
    ]
    while True:
        await asyncio.sleep(interval)
        for rule, function in schedules:
            try:
                await function.invoke(scheduled_event(region, rule.logical_id))
            except Exception as error:
                logger.warning("scheduled %s failed: %s: %s", rule.logical_id, type(error).__name__, error)
