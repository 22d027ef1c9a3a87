"""Cost per million delivered messages on AWS, from what the benchmarks counted.

Inputs are measured in the same `make bench` run: DynamoDB calls per event (by
operation, from bench.dynamodb_work) and the fan-out's CPU seconds per delivered
message (from bench.delivery_worker). Prices are AWS's public us-east-1 list
prices (arm64 Lambda, on-demand DynamoDB, FIFO SQS, EventBridge custom events,
API Gateway WebSocket messages), written down here so the arithmetic can be checked.
"""

from __future__ import annotations

from typing import Any

PRICES = {
    "apigw_message": 1.00 / 1e6,  # WebSocket messages, first billion, per 32 KB
    "apigw_connection_minute": 0.25 / 1e6,
    "lambda_gb_second_arm64": 0.0000133334,
    "lambda_request": 0.20 / 1e6,
    "sqs_fifo_request": 0.50 / 1e6,  # per 64 KB chunk
    "eventbridge_event": 1.00 / 1e6,  # custom events, per 64 KB chunk
    "dynamodb_write_unit": 0.625 / 1e6,  # on-demand write request unit
    "dynamodb_read_unit": 0.125 / 1e6,  # on-demand read request unit (strongly consistent 4 KB)
}
# Request units of each call the fan-out makes per event (items under 1 KB):
# the sequence transaction writes 3 items at 2 units each; a consistent GetItem
# reads 1 unit; a Query (eventually consistent) reads half a unit per 4 KB page.
UNITS_PER_CALL = {
    "GetItem": ("dynamodb_read_unit", 1.0),
    "Query": ("dynamodb_read_unit", 0.5),
    "UpdateItem": ("dynamodb_write_unit", 1.0),
    "TransactWriteItems": ("dynamodb_write_unit", 6.0),
    "PutItem": ("dynamodb_write_unit", 1.0),
}
FANOUT_MEMORY_GB = 1.0  # topology.FANOUT.memory_mb
BATCH_SIZE = 10  # topology.FANOUT.batch_size
POST_ROUND_TRIP_SECONDS = 0.010  # assumed Management API round trip from Lambda in the same region
POST_CONCURRENCY = 64  # Settings.post_concurrency


def cost_per_million(
    audience: int, dynamodb_calls_per_event: dict[str, float], cpu_seconds_per_message: float
) -> dict[str, float]:
    """Dollars per million delivered messages, by service, for events of one audience size."""
    events = 1e6 / audience
    dynamodb = 0.0
    for operation, calls in dynamodb_calls_per_event.items():
        unit, amount = UNITS_PER_CALL.get(operation, ("dynamodb_read_unit", 1.0))
        dynamodb += calls * amount * PRICES[unit]
    # Lambda bills wall time: posting is bounded by round trips at the configured concurrency.
    wall_seconds_per_event = max(
        audience * cpu_seconds_per_message, audience / POST_CONCURRENCY * POST_ROUND_TRIP_SECONDS
    )
    lines = {
        "api_gateway_messages": 1e6 * PRICES["apigw_message"],
        "eventbridge": events * PRICES["eventbridge_event"],
        # EventBridge's send, plus the event source mapping's receive and delete per batch.
        "sqs": events * (1 + 2 / BATCH_SIZE) * PRICES["sqs_fifo_request"],
        "lambda": events
        * (
            wall_seconds_per_event * FANOUT_MEMORY_GB * PRICES["lambda_gb_second_arm64"]
            + PRICES["lambda_request"] / BATCH_SIZE
        ),
        "dynamodb": events * dynamodb,
    }
    lines["total"] = sum(lines.values())
    lines["overhead_vs_api_gateway_percent"] = (lines["total"] / lines["api_gateway_messages"] - 1) * 100
    return lines


def run(dynamodb_calls_per_event: dict[str, float], cpu_seconds_per_message: float) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for audience in (10, 1000, 5000):
        lines = cost_per_million(audience, dynamodb_calls_per_event, cpu_seconds_per_message)
        for name, value in lines.items():
            figures[f"cost_per_million_audience_{audience}_{name}"] = round(value, 4)
    figures["cost_prices_used"] = PRICES
    return figures
