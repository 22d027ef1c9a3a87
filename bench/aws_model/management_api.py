"""The Management API: the account's token bucket, and `post_many` as `ManagementApiGateway` does it."""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Sequence

from bench.aws_model.deliveries import Deliveries
from bench.aws_model.profiles import Profile
from bench.aws_model.scheduler import Sim
from bench.aws_model.token_bucket import TokenBucket
from quanttrade_ws.config import Settings
from quanttrade_ws.connection_gateway import DeliveryReport, Post
from quanttrade_ws.management_api.retry import full_jitter_backoff


class ManagementApi:
    """The account-wide side of the Management API: its token bucket."""

    def __init__(self, profile: Profile) -> None:
        self.bucket = TokenBucket(profile.management_rate, profile.management_burst)


class SimGateway:
    """`ConnectionGateway.post_many` as `ManagementApiGateway` does it, against the simulated API.

    Requests go out on `concurrency` connections of one event loop (each attempt costs
    that loop `post_cpu_seconds`); a refused token is a 429 answered quickly, retried
    after the real client's full-jitter backoff, and a post still refused after
    `max_attempts` is reported failed. The function advances in slices of
    `SLICE_SECONDS`, so concurrent invocations take tokens nearly in time order.
    """

    SLICE_SECONDS = 0.02

    def __init__(
        self, sim: Sim, profile: Profile, api: ManagementApi, deliveries: Deliveries, settings: Settings
    ) -> None:
        self.sim = sim
        self.profile = profile
        self.api = api
        self.deliveries = deliveries
        self.concurrency = settings.post_concurrency
        self.max_attempts = settings.max_post_attempts
        # None: a post is given up after max_attempts, throttled or not (ManagementApiGateway today).
        # A number: 429s are retried until this many seconds into the call, failing only other errors
        # at max_attempts (a policy the model measures; see bench/README.md).
        self.throttle_deadline: float | None = None
        self.tally = deliveries.tally

    def post_many(self, posts: Sequence[Post], deadline: float | None = None) -> DeliveryReport:
        report = DeliveryReport()
        if not posts:
            return report
        sim, profile, rng, bucket = self.sim, self.profile, self.sim.rng, self.api.bucket
        start = sim.now
        lanes = [start] * min(self.concurrency, len(posts))
        heapq.heapify(lanes)
        ready: deque[tuple[int, int]] = deque((index, 1) for index in range(len(posts)))
        waiting: list[tuple[float, int, int]] = []  # (ready at, post, attempt) after a backoff
        loop_free = start
        outstanding = len(posts)
        finished_at = start
        post_p50, post_sigma = profile.post.p50, profile.post.sigma
        throttled_p50, throttled_sigma = profile.throttled_post.p50, profile.throttled_post.sigma
        cpu = profile.post_cpu_seconds
        gauss, exp, take = rng.gauss, math.exp, bucket.try_take
        delivered = self.deliveries.delivered
        tally = self.tally
        while outstanding:
            horizon = sim.now + self.SLICE_SECONDS
            while lanes and lanes[0] < horizon:
                lane_at = heapq.heappop(lanes)
                while waiting and waiting[0][0] <= lane_at:
                    _, index, attempt = heapq.heappop(waiting)
                    ready.append((index, attempt))
                if not ready:
                    if not waiting:
                        break  # nothing left for this lane: it stays idle
                    heapq.heappush(lanes, max(lane_at, waiting[0][0]))
                    continue
                index, attempt = ready.popleft()
                sent_at = loop_free = (loop_free if loop_free > lane_at else lane_at) + cpu
                tally.post_attempts += 1
                if sent_at < tally.first_post:
                    tally.first_post = sent_at
                if sent_at > tally.last_post:
                    tally.last_post = sent_at
                if take(sent_at):
                    done = sent_at + post_p50 * exp(post_sigma * gauss(0.0, 1.0))
                    tally.posts += 1
                    delivered(posts[index].data, done)
                    report.delivered.append(posts[index])
                    outstanding -= 1
                    if done > finished_at:
                        finished_at = done
                else:
                    done = sent_at + throttled_p50 * exp(throttled_sigma * gauss(0.0, 1.0))
                    tally.throttled += 1
                    deadline = self.throttle_deadline
                    if (attempt >= self.max_attempts) if deadline is None else (done - start >= deadline):
                        tally.failed_posts += 1
                        report.failed.append(posts[index])
                        outstanding -= 1
                        finished_at = max(finished_at, done)
                    else:
                        report.throttle_retries += 1
                        delay = full_jitter_backoff(attempt, 0.025, 1.0, rng.random)
                        heapq.heappush(waiting, (done + delay, index, attempt + 1))
                heapq.heappush(lanes, done)
            if outstanding:
                sim.sleep(self.SLICE_SECONDS)
        sim.sleep(max(0.0, finished_at - sim.now))
        return report

    def post(self, connection_id: str, data: bytes) -> bool:
        report = self.post_many([Post(connection_id, data)])
        return bool(report.delivered)

    def close(self, connection_id: str) -> None:
        self.sim.sleep(self.profile.post.sample(self.sim.rng))

    def info(self, connection_id: str) -> dict[str, object] | None:
        return {}
