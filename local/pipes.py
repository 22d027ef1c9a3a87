"""EventBridge Pipes for the local stack: each `AWS::Pipes::Pipe` of the template runs as a `PipePump`.

A pipe with an SQS source polls its queue in batches, evaluates its target parameters
on each record (`local.cloud.pipe_paths`: the body read as JSON, `$.body...` paths) and
sends the batch to its SQS target with SendMessageBatch; what was sent is deleted from
the source, what was not (a path that finds nothing, a send the target refused) stays
and comes back after the source's visibility timeout, and the source queue's redrive
policy moves it to its dead-letter queue after maxReceiveCount receives, as on AWS
(https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-pipes-sqs.html,
https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-pipes-error-troubleshooting.html).

It calls SQS as the pipe's role, through the local AWS front door, so the role's
policies in the template are what allow it: a pipe whose role lacks
`sqs:ReceiveMessage`, `sqs:DeleteMessage`, `sqs:GetQueueAttributes` on its source or
`sqs:SendMessage` on its target fails the start (the pipe's first GetQueueAttributes)
or its sends, as it would on AWS. Retryable errors of SQS (throttling, 5xx) are
retried by the client at once, as Pipes retries its internal errors without counting
them against maxReceiveCount.

Several pollers per pipe: Pipes reads an SQS source with concurrent pollers, as
Lambda's event source mappings do; a pipe has no setting for how many, and the Pipes
pages publish no number
(https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-pipes-batching-concurrency.html),
so a pump runs `PIPE_POLLERS`, Lambda's starting five for an SQS source
(https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-scaling.html): enough that
one slow SendMessageBatch no longer holds up the whole source, few enough that the
pipe's long polls hold five of moto's request threads (`local.moto_http.POOL_THREADS`),
not dozens. Each poller receives, sends and deletes on its own. The market-data source
is a standard queue, so its batches reach the target in no particular order, as on AWS
(a FIFO source would keep each group's order: the queue hides a group with messages in
flight from the other pollers);
docs/adr/0002-one-message-group-per-stream.md says what order holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

from local.background import Parallelism, PollingLoop
from local.cloud.deployment import Deployment
from local.cloud.pipe_paths import UnresolvedPath, sqs_source_event
from local.cloud.resources.pipes import Pipe
from local.cloud.template import Template
from local.principals import Principal, Principals

logger = logging.getLogger("quanttrade.local.pipes")

# Pipes retries SQS's retryable errors itself; botocore's standard mode does the same for the pump.
CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 10}, connect_timeout=5, read_timeout=30)
# See the module docstring.
PIPE_POLLERS = 5


@dataclass
class PipeStats:
    parallelism: Parallelism
    receives: int = 0
    moved: int = 0  # sent to the target and deleted from the source
    unresolved: int = 0  # records left on the source: a target parameter's path found nothing usable
    refused: int = 0  # records the target's SendMessageBatch refused
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.parallelism.as_dict(),  # in_flight: batches being moved now
            "receives": self.receives,
            "moved": self.moved,
            "unresolved": self.unresolved,
            "refused": self.refused,
            "last_error": self.last_error,
        }


class PipePump(PollingLoop):
    """One pipe: its source queue polled by several pollers, each moving its batches to the target."""

    def __init__(
        self,
        pipe: Pipe,
        name: str,
        sqs_factory: Callable[[], Any],
        *,
        source_url: str,
        source_arn: str,
        target_url: str,
        region: str,
        pollers: int = PIPE_POLLERS,
        wait_seconds: int = 1,
        error_backoff: float = 0.5,
    ) -> None:
        super().__init__(sqs_factory, pollers=pollers)
        self.pipe = pipe
        self.name = name
        self.source_url = source_url
        self.source_arn = source_arn
        self.target_url = target_url
        self.region = region
        self.wait_seconds = wait_seconds
        self.error_backoff = error_backoff
        self.stats = PipeStats(self.parallelism)

    @property
    def task_name(self) -> str:
        return f"pipe-{self.name}"

    def check_access(self) -> None:
        """The pipe's first call, GetQueueAttributes on its source: a role that may not read it fails here."""
        self.client(0).get_queue_attributes(QueueUrl=self.source_url, AttributeNames=["QueueArn"])

    async def _poll(self, poller: int) -> None:
        while not self._stopping.is_set():
            try:
                # A stop waits for the poll in progress (it ends within wait_seconds) and moves what it brings,
                # rather than leave those messages invisible on the source for its visibility timeout.
                messages = await self._blocking(self._receive, poller)
                self.stats.receives += 1
                if messages:
                    with self.parallelism.batch():
                        await self._blocking(self.move, messages, poller)
            except Exception as error:
                # moto restarting, or the role refused: keep trying without spinning, as the pipe does.
                self.stats.last_error = f"{type(error).__name__}: {error}"
                logger.warning("pipe %s: %s", self.name, error)
                await self._pause(self.error_backoff)

    def _receive(self, poller: int) -> list[dict[str, Any]]:
        response = self.client(poller).receive_message(
            QueueUrl=self.source_url,
            MaxNumberOfMessages=self.pipe.batch_size,
            WaitTimeSeconds=self.wait_seconds,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        return list(response.get("Messages", []))

    def move(self, messages: list[dict[str, Any]], poller: int = 0) -> None:
        """Send what resolves to the target in one SendMessageBatch, in receive order; delete what was sent
        (with `poller`'s client)."""
        entries: list[dict[str, Any]] = []
        by_id: dict[str, dict[str, Any]] = {}
        for index, message in enumerate(messages):
            event = sqs_source_event(message, source_arn=self.source_arn, region=self.region)
            try:
                fields = self.pipe.target_message(event)
            except UnresolvedPath as error:
                self.stats.unresolved += 1
                self.stats.last_error = f"{message['MessageId']}: {error}"
                logger.warning("pipe %s: message %s stays on the source: %s", self.name, message["MessageId"], error)
                continue
            entries.append({"Id": str(index), **fields})
            by_id[str(index)] = message
        if not entries:
            return
        sqs = self.client(poller)
        response = sqs.send_message_batch(QueueUrl=self.target_url, Entries=entries)
        for failure in response.get("Failed", []):
            self.stats.refused += 1
            self.stats.last_error = f"SendMessageBatch: {failure.get('Code')}: {failure.get('Message')}"
            logger.warning("pipe %s: the target refused a message: %s", self.name, failure)
        sent = [by_id[success["Id"]] for success in response.get("Successful", [])]
        if not sent:
            return
        deleted = sqs.delete_message_batch(
            QueueUrl=self.source_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(sent)],
        )
        # An undeleted message comes back and is sent again; the target's deduplication id drops the copy.
        self.stats.moved += len(deleted.get("Successful", []))
        for failure in deleted.get("Failed", []):
            logger.warning("pipe %s: could not delete a moved message: %s", self.name, failure)


def pipe_pumps(
    template: Template, deployment: Deployment, principals: Principals, *, endpoint_url: str, region: str
) -> list[PipePump]:
    """A pump for every running pipe of the template, each signing as its role (registered in `principals`).

    Raises, naming the pipe, when its role may not read its source (the start fails, as the pipe would).
    """
    pumps = []
    for pipe in template.pipes.values():
        if not pipe.running:
            continue
        name = deployment.ref(pipe.logical_id)
        principal = principals.register_function(
            name, deployment.ref(pipe.role_logical_id), deployment.role_documents(pipe.role_logical_id)
        )
        pump = PipePump(
            pipe,
            name,
            _client_factory(principal, endpoint_url, region),
            source_url=deployment.ref(pipe.source_logical_id),
            source_arn=deployment.get_att(pipe.source_logical_id, "Arn"),
            target_url=deployment.ref(pipe.target_logical_id),
            region=region,
        )
        try:
            pump.check_access()
        except Exception as error:
            raise RuntimeError(f"pipe {pipe.logical_id} cannot read its source as its role: {error}") from error
        pumps.append(pump)
    return pumps


def _client_factory(principal: Principal, endpoint_url: str, region: str) -> Callable[[], Any]:
    keys = principal.credentials

    def make() -> Any:
        return boto3.client(
            "sqs",
            region_name=region,
            endpoint_url=endpoint_url,
            aws_access_key_id=keys.access_key_id,
            aws_secret_access_key=keys.secret_key,
            aws_session_token=keys.session_token,
            config=CLIENT_CONFIG,
        )

    return make
