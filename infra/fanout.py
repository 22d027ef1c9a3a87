"""Upstream events into the service: the `quanttrade-<stage>` bus, its archive, one rule per source, the SQS queues
and the pipes that group a source's events by stream.

Built in two steps because the queue URLs go into the functions' environment
while the functions are what consume the queues: the constructor creates the
messaging, `connect_consumers` adds the event source mappings once the
functions exist.
"""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_pipes as pipes
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
                # Per-group quotas and deduplication: the market-data pipe spreads symbols over groups, and
                # one group (one partition) then takes 300 sends/s instead of the whole queue.
                deduplication_scope=sqs.DeduplicationScope.MESSAGE_GROUP if declared.high_throughput else None,
                fifo_throughput_limit=sqs.FifoThroughputLimit.PER_MESSAGE_GROUP_ID
                if declared.high_throughput
                else None,
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
            if source.pipe is None:
                # One group per source: FIFO orders within a group, which is the order
                # sequence numbers are handed out in.
                target = targets.SqsQueue(
                    events_queue, message_group_id=source.message_group, dead_letter_queue=self.event_delivery_dlq
                )
                description = f"{source.detail_type} events from {source.source} to the events queue"
            else:
                # A rule's MessageGroupId is a fixed string; the source's pipe sets one per stream.
                target = targets.SqsQueue(self.queue(source.pipe.source), dead_letter_queue=self.event_delivery_dlq)
                description = f"{source.detail_type} events from {source.source} to {source.pipe.logical_id}"
            self.rules[source.rule_logical_id] = events.Rule(
                self,
                source.rule_logical_id,
                event_bus=self.bus,
                description=description,
                event_pattern=events.EventPattern(source=[source.source], detail_type=[source.detail_type]),
                targets=[target],
            )
        self.pipes: dict[str, pipes.CfnPipe] = {
            declared.logical_id: self._pipe(declared) for declared in topology.PIPES
        }

    def _pipe(self, declared: topology.Pipe) -> pipes.CfnPipe:
        """An EventBridge Pipe from the ingest queue to the FIFO queue, each event in its stream's message group.

        Facts it rests on (docs/adr/0002-one-message-group-per-stream.md): a target parameter may be a JSON
        path into the event, `$.body.<key>` for an SQS source whose body is JSON ("Dynamic path
        parameters", https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-pipes-event-target.html);
        an SQS target takes batches of up to 10 and the input template applies to each record
        (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-pipes-batching-concurrency.html); a
        record the target refuses is retried up to the source queue's maxReceiveCount, then goes to the
        queue's own DLQ (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-pipes-error-troubleshooting.html).
        """
        source, target = self.queue(declared.source), self.queue(declared.target)
        role = iam.Role(
            self,
            f"{declared.logical_id}Role",
            description=f"{declared.logical_id}: from {declared.source.logical_id} to {declared.target.logical_id}",
            # Only pipes of this account may assume it (the confused-deputy guard for service roles).
            assumed_by=iam.ServicePrincipal(
                "pipes.amazonaws.com", conditions={"StringEquals": {"aws:SourceAccount": Stack.of(self).account}}
            ),
            # Inline, so the permissions exist when CloudFormation creates the pipe (which checks them).
            inline_policies={
                "Pipe": iam.PolicyDocument(
                    statements=[
                        iam.PolicyStatement(
                            actions=["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"],
                            resources=[source.queue_arn],
                        ),
                        iam.PolicyStatement(actions=["sqs:SendMessage"], resources=[target.queue_arn]),
                    ]
                )
            },
        )
        return pipes.CfnPipe(
            self,
            declared.logical_id,
            role_arn=role.role_arn,
            source=source.queue_arn,
            target=target.queue_arn,
            description=f"Groups {declared.source.logical_id}'s events by {declared.group_id_path} into "
            f"{declared.target.logical_id}",
            source_parameters=pipes.CfnPipe.PipeSourceParametersProperty(
                sqs_queue_parameters=pipes.CfnPipe.PipeSourceSqsQueueParametersProperty(
                    batch_size=declared.batch_size,
                    # No batching window: a tick waits for nothing but the poll.
                    maximum_batching_window_in_seconds=0,
                )
            ),
            target_parameters=pipes.CfnPipe.PipeTargetParametersProperty(
                input_template=declared.input_template,
                sqs_queue_parameters=pipes.CfnPipe.PipeTargetSqsQueueParametersProperty(
                    message_group_id=declared.group_id_path,
                    message_deduplication_id=declared.deduplication_id_path,
                ),
            ),
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
