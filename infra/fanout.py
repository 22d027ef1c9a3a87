"""Upstream events into the service: the `quanttrade-<stage>` bus, its archive, one rule per source, the SQS queues.

Built in two steps because the queue URLs go into the functions' environment
while the functions are what consume the queues: the constructor creates the
messaging, `connect_consumers` adds the event source mappings once the
functions exist.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_sqs as sqs
from cdk_nag import NagSuppressions
from constructs import Construct

from quanttrade_ws import topology

DLQ_RETENTION = Duration.days(14)  # the SQS maximum: time to notice, fix and redrive


class FanOut(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, bus_name: str, archive_retention_days: int) -> None:
        super().__init__(scope, construct_id)

        self.queues: dict[str, sqs.Queue] = {}
        self.dead_letter_queues: dict[str, sqs.Queue] = {}
        for declared in topology.QUEUES:
            dlq = sqs.Queue(
                self,
                declared.dlq_logical_id,
                # A FIFO queue's redrive target must itself be FIFO.
                fifo=declared.fifo or None,
                retention_period=DLQ_RETENTION,
                encryption=sqs.QueueEncryption.SQS_MANAGED,
                enforce_ssl=True,
            )
            queue = sqs.Queue(
                self,
                declared.logical_id,
                fifo=declared.fifo or None,
                # EventBridge sends no deduplication id to a FIFO target, so the
                # events queue must derive one from the body. The delivery queue
                # gets the same so a sender that omits MessageDeduplicationId is
                # deduplicated rather than rejected; an explicit id still wins.
                content_based_deduplication=True if declared.fifo else None,
                visibility_timeout=Duration.seconds(declared.visibility_timeout_seconds),
                encryption=sqs.QueueEncryption.SQS_MANAGED,
                enforce_ssl=True,
                dead_letter_queue=sqs.DeadLetterQueue(queue=dlq, max_receive_count=declared.max_receive_count),
            )
            self.queues[declared.logical_id] = queue
            self.dead_letter_queues[declared.logical_id] = dlq

        # Named, because upstream services address it by name in PutEvents; the
        # stage in the name lets several stages share an account and region.
        self.bus = events.EventBus(self, "EventBus", event_bus_name=bus_name)
        # Every upstream event is kept for the retention window so that, after
        # an incident (bad deploy, poisoned DLQ, lost table), the window can be
        # replayed into the rules instead of asking upstream to resend.
        self.archive = self.bus.archive(
            "EventArchive",
            description="Upstream QuantTrade events, replayable after an incident",
            event_pattern=events.EventPattern(source=events.Match.prefix("quanttrade.")),
            retention=Duration.days(archive_retention_days),
        )

        # Where EventBridge puts an event it could not hand to SQS after its
        # retries (a queue policy or quota problem). EventBridge accepts only a
        # standard queue here, even for FIFO targets.
        self.event_delivery_dlq = sqs.Queue(
            self,
            "EventDeliveryDlq",
            retention_period=DLQ_RETENTION,
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
        )
        NagSuppressions.add_resource_suppressions(
            self.event_delivery_dlq,
            [
                {
                    "id": "AwsSolutions-SQS3",
                    "reason": "This queue is itself the dead-letter queue of the EventBridge rule targets; "
                    "cdk-nag only recognises queues named in an SQS redrive policy as DLQs.",
                }
            ],
        )

        events_queue = self.queues[topology.EVENTS_QUEUE.logical_id]
        self.rules: dict[str, events.Rule] = {}
        for source in topology.SOURCES:
            self.rules[source.rule_logical_id] = events.Rule(
                self,
                source.rule_logical_id,
                event_bus=self.bus,
                description=f"{source.detail_type} events from {source.source} to the events queue",
                event_pattern=events.EventPattern(source=[source.source], detail_type=[source.detail_type]),
                targets=[
                    targets.SqsQueue(
                        events_queue,
                        # One group per source: FIFO orders within a group, which is
                        # the order sequence numbers are handed out in.
                        message_group_id=source.message_group,
                        dead_letter_queue=self.event_delivery_dlq,
                    )
                ],
            )

    def queue(self, declared: topology.Queue) -> sqs.Queue:
        return self.queues[declared.logical_id]

    def dead_letter_queue(self, declared: topology.Queue) -> sqs.Queue:
        return self.dead_letter_queues[declared.logical_id]

    def connect_consumers(self, functions: dict[str, lambda_.Function]) -> None:
        """Add an SQS event source mapping for every function that declares `consumes`."""
        for declared in topology.FUNCTIONS:
            if declared.consumes is None:
                continue
            visibility = declared.consumes.visibility_timeout_seconds
            if visibility < declared.timeout_seconds:
                # Lambda refuses the mapping at deploy time; fail at synth instead.
                raise ValueError(
                    f"{declared.consumes.logical_id} visibility timeout ({visibility}s) is shorter than "
                    f"the {declared.name} function timeout ({declared.timeout_seconds}s)"
                )
            functions[declared.name].add_event_source(
                event_sources.SqsEventSource(
                    self.queue(declared.consumes),
                    batch_size=declared.batch_size,
                    max_concurrency=declared.max_concurrency,
                    # A failed message is retried alone instead of redelivering
                    # (and re-posting) the whole batch.
                    report_batch_item_failures=True,
                )
            )
