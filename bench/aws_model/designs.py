"""How market data reaches the fan-out (the ordering designs), and the throttling policy variant."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Design:
    """How market data reaches the fan-out: the queue, its groups and what feeds it."""

    name: str
    queue: str  # "fifo" | "standard" | "kinesis"
    group_by: str  # "source" | "stream"
    high_throughput: bool = False
    via_pipe: bool = False  # EventBridge -> ingest queue -> Pipe -> FIFO (a dynamic MessageGroupId)
    kinesis_shards: int = 1
    kinesis_parallelization: int = 10
    max_concurrency: int | None = None


# A design name with this suffix runs with 429s retried until THROTTLE_DEADLINE into a post_many call
# instead of six attempts a post (the policy ManagementApiGateway takes on), the delivery functions capped
# as the stack declares (topology.DELIVERY.max_concurrency). Without it, six attempts a post, with the cap
# that policy needs (SIX_ATTEMPTS_DELIVERY_CAP: more delivery functions only fail throttled posts).
VARIANT = "+429_until_deadline"
THROTTLE_DEADLINE = 25.0  # under the 30 s timeout of the fan-out and delivery functions
SIX_ATTEMPTS_DELIVERY_CAP = 5

DESIGNS: dict[str, Design] = {
    "source_group": Design("source_group", "fifo", "source"),
    "symbol_group": Design("symbol_group", "fifo", "stream", high_throughput=True, via_pipe=True),
    "standard": Design("standard", "standard", "stream"),
    "kinesis": Design("kinesis", "kinesis", "stream", kinesis_shards=2, kinesis_parallelization=10),
}


# The design the stack ships: one group per symbol through the pipe, 429s retried to the deadline.
SHIPPED = "symbol_group" + VARIANT
