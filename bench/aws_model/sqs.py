"""SQS queues with their Lambda event source mappings (FIFO, standard, Kinesis-like lanes), and sends to them."""

from __future__ import annotations

import functools
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.aws_model.lambda_function import LambdaFunction
from bench.aws_model.profiles import Profile
from bench.aws_model.scheduler import Sim
from bench.aws_model.tally import Tally
from bench.aws_model.token_bucket import TokenBucket
from quanttrade_ws import topology
from quanttrade_ws.queues import OutgoingMessage


@dataclass
class Message:
    body: str
    group: str
    message_id: str
    receive_count: int = 0
    visible_at: float = 0.0


class SimQueue:
    """An SQS queue and its Lambda event source mapping.

    FIFO: one batch in flight per message group; a batch takes the oldest available
    group's messages first and fills up from other available groups, in order
    (SQS's receive, as Lambda's poller sees it). Standard: any message, with the
    mapping's pollers growing from `standard_initial_batches` by
    `standard_scale_per_minute`. Kinesis (`shards` x `parallelization` ordered lanes by
    partition key): like FIFO with a fixed number of groups and an idle poll interval.
    Failed records come back after the visibility timeout.
    """

    def __init__(
        self,
        sim: Sim,
        profile: Profile,
        tally: Tally,
        name: str,
        kind: str,
        function: LambdaFunction,
        handler: Callable[[list[dict[str, Any]]], dict[str, Any]],
        batch_size: int,
        visibility_timeout: float,
        max_concurrency: int | None = None,
    ) -> None:
        self.sim = sim
        self.profile = profile
        self.tally = tally
        self.name = name
        self.kind = kind
        self.function = function
        self.handler = handler
        self.batch_size = batch_size
        self.visibility_timeout = visibility_timeout
        self.max_concurrency = max_concurrency or profile.account_concurrency
        self.groups: dict[str, deque[Message]] = defaultdict(deque)
        self.order: deque[str] = deque()  # groups with visible messages, oldest first
        self.in_flight: set[str] = set()
        self.batches_in_flight = 0
        self.backlog = 0
        self._ids = 0
        self._poll_pending = False
        self._first_active: float | None = None
        self.peak_backlog = 0

    def enqueue(self, body: str, group: str) -> None:
        self._ids += 1
        message = Message(body, group, f"{self.name}-{self._ids}")
        self._make_visible(message)

    def _make_visible(self, message: Message) -> None:
        queue = self.groups[message.group]
        if not queue and message.group not in self.in_flight:
            self.order.append(message.group)
        queue.append(message)
        self.backlog += 1
        self.peak_backlog = max(self.peak_backlog, self.backlog)
        self._schedule_poll()

    def _requeue_front(self, group: str, messages: list[Message]) -> None:
        """Failed records come back at the head of their group after the visibility timeout."""
        queue = self.groups[group]
        for message in reversed(messages):
            queue.appendleft(message)
        self.backlog += len(messages)
        self.in_flight.discard(group)
        if group not in self.order:
            self.order.appendleft(group)
        self._schedule_poll()

    def _concurrency_limit(self) -> int:
        if self.kind != "standard":
            return self.max_concurrency
        if self._first_active is None:
            self._first_active = self.sim.now
        minutes = (self.sim.now - self._first_active) / 60
        grown = self.profile.standard_initial_batches + int(self.profile.standard_scale_per_minute * minutes)
        return min(self.max_concurrency, self.profile.standard_max_batches, grown)

    def _schedule_poll(self) -> None:
        if self._poll_pending:
            return
        self._poll_pending = True
        delay = self.profile.sqs_receive.sample(self.sim.rng)
        if self.kind == "kinesis" and self.batches_in_flight == 0:
            delay += self.sim.rng.uniform(0, self.profile.kinesis_poll_interval)
        self.sim.at(self.sim.now + delay, self._poll)

    def _poll(self) -> None:
        self._poll_pending = False
        while self.order and self.batches_in_flight < self._concurrency_limit():
            batch = self._take_batch()
            if not batch:
                break
            self.batches_in_flight += 1
            self.tally.sqs_requests += 1  # the receive
            self.sim.spawn(functools.partial(self._run, batch))

    def _take_batch(self) -> list[Message]:
        batch: list[Message] = []
        skipped: list[str] = []
        while self.order and len(batch) < self.batch_size:
            group = self.order.popleft()
            queue = self.groups[group]
            if self.kind != "standard" and group in self.in_flight:
                skipped.append(group)
                continue
            while queue and len(batch) < self.batch_size:
                batch.append(queue.popleft())
            if self.kind != "standard":
                self.in_flight.add(group)
            if queue and self.kind == "standard":
                self.order.appendleft(group)
        self.order.extendleft(reversed(skipped))
        self.backlog -= len(batch)
        return batch

    def _run(self, batch: list[Message]) -> None:
        sim = self.sim
        began = sim.now
        for message in batch:
            message.receive_count += 1
        records = [
            {
                "messageId": m.message_id,
                "body": m.body,
                "attributes": {"MessageGroupId": m.group, "ApproximateReceiveCount": str(m.receive_count)},
            }
            for m in batch
        ]
        response = self.function.invoke(self.handler, records)
        failed = {item["itemIdentifier"] for item in response.get("batchItemFailures", [])}
        sim.sleep(self.profile.sqs_delete.sample(sim.rng))
        self.tally.sqs_requests += 1  # the delete
        groups = list(dict.fromkeys(m.group for m in batch))  # in batch order: a set's would vary run to run
        for group in groups:
            self.tally.group_busy[f"{self.name}:{group}"] += sim.now - began
        retry: dict[str, list[Message]] = defaultdict(list)
        for message in batch:
            if message.message_id in failed and message.receive_count < topology.EVENTS_QUEUE.max_receive_count:
                retry[message.group].append(message)
        self.tally.redelivered_records += sum(len(v) for v in retry.values())
        self.batches_in_flight -= 1
        for group in groups:
            if group in retry:
                continue
            self.in_flight.discard(group)
            if self.groups[group] and group not in self.order:
                self.order.append(group)
        for group, messages in retry.items():
            sim.at(began + self.visibility_timeout, functools.partial(self._requeue_front, group, messages))
        if self.order:
            self._schedule_poll()


class SimSender:
    """`QueueSender.send` to the delivery queue: SendMessageBatch calls of 10, under the queue's quota."""

    def __init__(self, sim: Sim, profile: Profile, tally: Tally, queues: dict[str, SimQueue]) -> None:
        self.sim = sim
        self.profile = profile
        self.tally = tally
        self.queues = queues
        self.bucket = TokenBucket(profile.fifo_send_tps, profile.fifo_send_tps)

    def send(self, queue_url: str, messages: list[OutgoingMessage]) -> list[OutgoingMessage]:
        queue = self.queues[queue_url]
        for start in range(0, len(messages), 10):
            chunk = messages[start : start + 10]
            wait = self.bucket.wait(self.sim.now)
            self.tally.send_wait += wait
            self.sim.sleep(wait + self.profile.sqs_send.sample(self.sim.rng))
            self.tally.sqs_requests += 1
            for message in chunk:
                queue.enqueue(message.body, message.group_id)
        return []
