"""The token bucket API Gateway throttles with: a steady rate, with bursts."""

from __future__ import annotations

import time


class TokenBucket:
    """Rate limit with bursts, as API Gateway throttles. Used from the event loop thread only."""

    __slots__ = ("_capacity", "_rate", "_stamp", "_tokens")

    def __init__(self, rate_per_second: float, burst: int | None) -> None:
        self._rate = float(rate_per_second)
        self._capacity = float(burst if burst is not None else max(1.0, rate_per_second))
        self._tokens = self._capacity
        self._stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True
