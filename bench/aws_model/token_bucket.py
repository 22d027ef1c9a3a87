"""The token bucket every quota of the model is (the Management API, queue sends, partitions)."""

from __future__ import annotations


class TokenBucket:
    """A token bucket as a generic cell rate algorithm: `try_take` refuses beyond the bucket."""

    def __init__(self, rate: float, burst: float) -> None:
        self.interval = 1.0 / rate
        self.tolerance = max(0.0, burst - 1) * self.interval
        self.tat = 0.0
        self.taken = 0
        self.refused = 0

    def try_take(self, now: float) -> bool:
        tat = max(self.tat, now)
        if tat - now > self.tolerance:
            self.refused += 1
            return False
        self.tat = tat + self.interval
        self.taken += 1
        return True

    def wait(self, now: float, units: float = 1.0) -> float:
        """Queueing form: how long a request of `units` waits for its tokens (and takes them)."""
        tat = max(self.tat, now)
        delay = max(0.0, tat - now - self.tolerance)
        self.tat = tat + units * self.interval
        self.taken += 1
        return delay
