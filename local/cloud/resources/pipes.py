"""EventBridge Pipes from one SQS queue of the template to another, checked for what the local stack runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from local.cloud.pipe_paths import InputTemplate, PipeParameter, PipePathError
from local.cloud.resources.resource import QUEUE, ROLE, Resource, TemplateError

if TYPE_CHECKING:
    from local.cloud.template import Template

# What a pipe may declare for the local stack to run it; anything else fails the deploy by name.
PIPE_PROPERTIES = frozenset(
    {"Name", "Description", "RoleArn", "Source", "Target", "SourceParameters", "TargetParameters"}
    | {"DesiredState", "Tags"}
)
PIPE_SOURCE_SQS = frozenset({"BatchSize", "MaximumBatchingWindowInSeconds"})
PIPE_TARGET = frozenset({"InputTemplate", "SqsQueueParameters"})
PIPE_TARGET_SQS = frozenset({"MessageGroupId", "MessageDeduplicationId"})
SQS_TARGET_MAX_BATCH = 10  # SendMessageBatch's maximum, so a pipe to SQS batches at most 10


@dataclass(frozen=True)
class Pipe:
    """An EventBridge Pipe from an SQS queue of the template to another, with its target parameters parsed."""

    logical_id: str
    name: Any  # the Name property, or None
    role_logical_id: str
    source_logical_id: str
    target_logical_id: str
    batch_size: int
    maximum_batching_window: int  # seconds
    running: bool  # DesiredState RUNNING (the default)
    input_template: InputTemplate | None
    message_group_id: PipeParameter | None
    message_deduplication_id: PipeParameter | None

    def target_message(self, event: dict[str, Any]) -> dict[str, str]:
        """SendMessageBatch's entry fields for one source event (see `pipe_paths.sqs_source_event`).

        Raises `UnresolvedPath` when a parameter's path finds no usable value: the record fails.
        """
        if self.input_template is not None:
            body = self.input_template.render(event)
        else:
            # No template: the target gets the pipe's event, the record with its body as SQS gave it.
            raw = event["body"] if isinstance(event["body"], str) else json.dumps(event["body"])
            body = json.dumps({**event, "body": raw})
        message = {"MessageBody": body}
        if self.message_group_id is not None:
            message["MessageGroupId"] = self.message_group_id.render(event)
        if self.message_deduplication_id is not None:
            message["MessageDeduplicationId"] = self.message_deduplication_id.render(event)
        return message


def _only_known(raw: dict[str, Any], known: frozenset[str], where: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise TemplateError(f"{where}: {unknown} are not run by the local stack (known: {sorted(known)})")


def read_pipe(template: Template, resource: Resource) -> Pipe:
    """The pipe, checked: SQS to SQS, with only the parameters the local stack evaluates."""
    p, where = resource.properties, f"pipe {resource.logical_id}"
    _only_known(p, PIPE_PROPERTIES, where)
    source = template.one_of_type(p.get("Source"), QUEUE, f"source of {where} (the local stack pipes SQS to SQS)")
    target = template.one_of_type(p.get("Target"), QUEUE, f"target of {where} (the local stack pipes SQS to SQS)")
    source_parameters = p.get("SourceParameters") or {}
    _only_known(source_parameters, frozenset({"SqsQueueParameters"}), f"{where} SourceParameters")
    sqs_source = source_parameters.get("SqsQueueParameters") or {}
    _only_known(sqs_source, PIPE_SOURCE_SQS, f"{where} SourceParameters.SqsQueueParameters")
    target_parameters = p.get("TargetParameters") or {}
    _only_known(target_parameters, PIPE_TARGET, f"{where} TargetParameters")
    sqs_target = target_parameters.get("SqsQueueParameters") or {}
    _only_known(sqs_target, PIPE_TARGET_SQS, f"{where} TargetParameters.SqsQueueParameters")
    batch_size = int(sqs_source.get("BatchSize", 10))
    if not 1 <= batch_size <= SQS_TARGET_MAX_BATCH:
        raise TemplateError(f"{where}: BatchSize {batch_size}; a pipe to an SQS queue takes 1 to 10")
    try:
        input_template = target_parameters.get("InputTemplate")
        pipe = Pipe(
            logical_id=resource.logical_id,
            name=p.get("Name"),
            role_logical_id=template.one_of_type(p.get("RoleArn"), ROLE, f"role of {where}"),
            source_logical_id=source,
            target_logical_id=target,
            batch_size=batch_size,
            maximum_batching_window=int(sqs_source.get("MaximumBatchingWindowInSeconds", 0)),
            running=p.get("DesiredState", "RUNNING") == "RUNNING",
            input_template=InputTemplate.parse(input_template) if input_template else None,
            message_group_id=PipeParameter.parse(sqs_target["MessageGroupId"])
            if "MessageGroupId" in sqs_target
            else None,
            message_deduplication_id=PipeParameter.parse(sqs_target["MessageDeduplicationId"])
            if "MessageDeduplicationId" in sqs_target
            else None,
        )
    except PipePathError as error:
        raise TemplateError(f"{where}: {error}") from None
    queue = template.queues[target]
    # What SQS would refuse on every send, refused at deploy instead.
    if queue.fifo and pipe.message_group_id is None:
        raise TemplateError(f"{where}: the target {target} is FIFO and the pipe sets no MessageGroupId")
    if queue.fifo and pipe.message_deduplication_id is None and not queue.content_based_deduplication:
        raise TemplateError(
            f"{where}: the target {target} is FIFO without content-based deduplication and the pipe sets no "
            "MessageDeduplicationId"
        )
    return pipe
