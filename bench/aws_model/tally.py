"""What one run used and paid for, and where it waited."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class Tally:
    """What one run used and paid for, and where it waited."""

    posts: int = 0
    first_post: float = math.inf
    last_post: float = 0.0
    post_attempts: int = 0
    throttled: int = 0
    failed_posts: int = 0
    deliveries: int = 0  # messages that reached a client (a batch post carries several)
    lambda_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    invocations: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    cold_starts: int = 0
    peak_concurrency: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    sqs_requests: int = 0
    eventbridge_events: int = 0
    pipe_requests: int = 0
    read_units: float = 0.0
    write_units: float = 0.0
    partition_wait: float = 0.0
    send_wait: float = 0.0
    transaction_conflicts: int = 0
    redelivered_records: int = 0
    group_busy: dict[str, float] = field(default_factory=lambda: defaultdict(float))
