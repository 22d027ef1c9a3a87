"""Recognising a request: which AWS service and operation it is, and its parameters."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from aiohttp.web_request import BaseRequest

from local.sigv4 import scope_of

_DYNAMODB_TARGET = "DynamoDB_20120810."
_SQS_TARGET = "AmazonSQS."
_EVENTS_TARGET = "AWSEvents."
_SECRETS_TARGET = "secretsmanager."


@dataclass(frozen=True)
class ParsedRequest:
    """What the door understood of one request."""

    service: str  # the SigV4 signing name: dynamodb, sqs, events, secretsmanager
    protocol: str  # "json" (any JSON protocol, incl. SQS JSON) or "query" (SQS query)
    operation: str
    params: Mapping[str, Any]


def parse_request(request: BaseRequest, body: bytes) -> ParsedRequest | None:
    """The service and operation of a request, or None when it is none the door knows."""
    target = request.headers.get("X-Amz-Target", "")
    if target:
        for prefix, service in (
            (_DYNAMODB_TARGET, "dynamodb"),
            (_SQS_TARGET, "sqs"),
            (_EVENTS_TARGET, "events"),
            (_SECRETS_TARGET, "secretsmanager"),
        ):
            if target.startswith(prefix):
                return ParsedRequest(service, "json", target[len(prefix) :], _json_body(body))
        return None
    claimed = scope_of(request.headers.get("Authorization"))
    if claimed is not None and claimed[1] == "sqs":
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        form.update(dict(parse_qsl(request.query_string, keep_blank_values=True)))
        action = form.get("Action")
        if action:
            if "QueueUrl" not in form and request.path.count("/") == 2:
                form["QueueUrl"] = request.path  # the query API may address the queue by the request path
            return ParsedRequest("sqs", "query", action, form)
    return None


def _json_body(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return {"__malformed__": True}
    return document if isinstance(document, dict) else {"__malformed__": True}
