"""EventBridge Pipes' JSON paths and target parameters, as a pipe evaluates them on an SQS record.

A pipe's target parameter (an SQS target's MessageGroupId, MessageDeduplicationId) is
either a fixed string or, when the whole value is a JSON path, the value found at that
path in the event ("Dynamic path parameters",
https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-pipes-event-target.html). The
syntax is the input transformer's: dot notation, names of letters, digits, dashes,
underscores and forward slashes, and array indices
(https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-pipes-input-transformation.html).
Wildcards are part of that syntax, but a parameter takes one value, so a path with one
is refused here when the template is read, as is every input template other than a
single path (`<$.body>`): the local stack runs what it can check, and fails the deploy
on the rest.

For an SQS source the event is the SQS record (messageId, body, attributes, ...) and
its `body` is read as JSON when it is JSON, so `$.body.detail.symbol` reaches into an
EventBridge event the queue carries. A path that finds nothing, or finds an object, a
list or null where a parameter wants a string, fails that record: the pipe leaves it
on the source queue, which redelivers it up to its maxReceiveCount and then moves it to
its dead-letter queue (AWS documents the retry up to the source queue's maximum receive
count for "customer invocation errors",
https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-pipes-error-troubleshooting.html;
that an unresolvable path is one is this module's reading).
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any

_NAME = re.compile(r"\.([A-Za-z0-9_/-]+)")
_INDEX = re.compile(r"\[(\d+|\*)\]")
_TEMPLATE_PATH = re.compile(r"^<(\$[^<>]*)>$")


class PipePathError(ValueError):
    """A path or template the local stack does not evaluate (refused when the template is read)."""


class UnresolvedPath(LookupError):
    """The event holds no usable value at a parameter's path: the record fails."""


@dataclass(frozen=True)
class JsonPath:
    text: str
    steps: tuple[str | int, ...]

    @classmethod
    def parse(cls, text: str) -> JsonPath:
        if not text.startswith("$"):
            raise PipePathError(f"{text!r} is not a JSON path (it must start with $)")
        steps: list[str | int] = []
        at = 1
        while at < len(text):
            name = _NAME.match(text, at)
            if name:
                steps.append(name.group(1))
                at = name.end()
                continue
            index = _INDEX.match(text, at)
            if index:
                if index.group(1) == "*":
                    raise PipePathError(f"{text!r}: a wildcard gives several values; a parameter takes one")
                steps.append(int(index.group(1)))
                at = index.end()
                continue
            raise PipePathError(f"{text!r}: unsupported JSON path syntax at {text[at:]!r}")
        return cls(text, tuple(steps))

    def find(self, document: Any) -> Any:
        """The value at this path; `UnresolvedPath` when a step finds nothing."""
        value = document
        for step in self.steps:
            if isinstance(step, int):
                if not isinstance(value, list) or step >= len(value):
                    raise UnresolvedPath(f"{self.text}: no item {step}")
                value = value[step]
            else:
                if not isinstance(value, dict) or step not in value:
                    raise UnresolvedPath(f"{self.text}: no {step!r}")
                value = value[step]
        return value


@dataclass(frozen=True)
class PipeParameter:
    """A string target parameter: fixed, or the string at a JSON path of the event."""

    literal: str | None = None
    path: JsonPath | None = None

    @classmethod
    def parse(cls, value: Any) -> PipeParameter:
        if not isinstance(value, str):
            raise PipePathError(f"a pipe parameter must be a string here, not {value!r}")
        return cls(path=JsonPath.parse(value)) if value.startswith("$.") or value == "$" else cls(literal=value)

    def render(self, event: dict[str, Any]) -> str:
        if self.path is None:
            return str(self.literal)
        value = self.path.find(event)
        # Numbers become their text; a parameter cannot carry a structure or nothing.
        if isinstance(value, bool) or value is None or isinstance(value, dict | list):
            raise UnresolvedPath(f"{self.path.text} is {json.dumps(value)}, not a string")
        return str(value)


@dataclass(frozen=True)
class InputTemplate:
    """An input template that is exactly one JSON path, `<$.body>`: the value there, as the target's input."""

    path: JsonPath

    @classmethod
    def parse(cls, text: Any) -> InputTemplate:
        match = _TEMPLATE_PATH.match(text) if isinstance(text, str) else None
        if match is None:
            raise PipePathError(
                f"input template {text!r}: the local stack runs templates that are one JSON path, like <$.body>"
            )
        return cls(JsonPath.parse(match.group(1)))

    def render(self, event: dict[str, Any]) -> str:
        value = self.path.find(event)
        # A string goes as it is; an object or a list as its JSON, as the pipe writes it.
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def sqs_source_event(message: dict[str, Any], *, source_arn: str, region: str) -> dict[str, Any]:
    """The event a pipe with an SQS source evaluates for one received message (its body read as JSON if it is)."""
    body: Any = message["Body"]
    # Not JSON: the body stays a string, and paths into it find nothing.
    with contextlib.suppress(ValueError):
        body = json.loads(body)
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": body,
        "attributes": dict(message.get("Attributes", {})),
        "messageAttributes": dict(message.get("MessageAttributes", {})),
        "md5OfBody": message.get("MD5OfBody"),
        "eventSource": "aws:sqs",
        "eventSourceARN": source_arn,
        "awsRegion": region,
    }
