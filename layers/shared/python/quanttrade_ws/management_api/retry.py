"""When a failed Management API call goes again: full-jitter backoff, bounded by attempts or by a deadline."""

from __future__ import annotations

from collections.abc import Callable


def full_jitter_backoff(attempt: int, base: float, cap: float, rng: Callable[[], float]) -> float:
    """Delay before retry number `attempt` (1-based): uniform in [0, min(cap, base * 2**(attempt-1))].

    Full jitter spreads a throttled burst out instead of retrying it in lockstep,
    which is what lets a fan-out of thousands get under the account's
    management-call rate instead of hammering it.
    """
    # Throttling retried until a deadline has no attempt limit: the exponent stops growing long after the
    # cap is reached, before 2**n outgrows a float.
    return rng() * min(cap, base * (2 ** min(attempt - 1, 64)))


class RetryPolicy:
    """Whether a failed call goes again, and after how long.

    Throttling (429, LimitExceeded) means "not now", not "not this". Given a
    deadline (the end of the Lambda invocation, less what the caller keeps for
    itself), a throttled call keeps trying until the deadline: a post given up
    early is a whole SQS record redelivered a visibility timeout later, while
    the account's rate frees up within a second. Other retryable failures (5xx,
    timeouts, dropped connections) get `max_attempts` tries, and so does
    throttling when there is no deadline. No wait ever ends at or past the
    deadline: a call that could only go again after it fails now.
    """

    def __init__(self, max_attempts: int, backoff_base: float, backoff_cap: float, rng: Callable[[], float]) -> None:
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.rng = rng

    def delay(self, attempts: int, throttles: int, throttled: bool, now: float, deadline: float | None) -> float | None:
        """Seconds to wait before the next try, or None to give up.

        `attempts` counts the tries so far (this failed one included), `throttles`
        those of them that were throttled; `now` and `deadline` are on one clock.
        """
        if deadline is None:
            if attempts >= self.max_attempts:
                return None
        elif not throttled and attempts - throttles >= self.max_attempts:
            return None
        delay = full_jitter_backoff(attempts, self.backoff_base, self.backoff_cap, self.rng)
        if deadline is not None and now + delay >= deadline:
            return None
        return delay
